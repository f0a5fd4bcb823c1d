"""HTTPSuspect against real HTTP servers on 127.0.0.1: retries, budget, log, resume."""

import contextlib
import hashlib
import json
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

import ipguard_jax as ipg
from ipguard_jax.suspects import HTTPSuspect, QueryBudgetExceeded, SuspectQueryError

INPUT_SHAPE = (4, 4, 1)
NUM_CLASSES = 5
FAST = {"backoff": 0.001, "timeout": 2.0}  # tiny waits keep the tests quick


def _weights(seed):
    return np.random.default_rng(seed).normal(size=(16, NUM_CLASSES)).astype(np.float32)


OWNER_W = _weights(0)
SUSPECT_W = OWNER_W + 0.7 * _weights(1)  # a perturbed copy: matches some fingerprints, not all


def suspect_logits(x):
    return np.asarray(x, np.float32).reshape(len(x), -1) @ SUSPECT_W


@pytest.fixture(scope="module")
def fingerprints():
    """60 points with the owner's labels (generation itself is tested elsewhere)."""
    x = np.random.default_rng(2).uniform(0, 1, (60, *INPUT_SHAPE)).astype(np.float32)
    labels = (x.reshape(60, -1) @ OWNER_W).argmax(axis=1)
    zeros = np.zeros(60, np.int32)
    return ipg.Fingerprints(x=x, labels=labels, i=zeros, j=zeros, loss=zeros.astype(np.float32),
                            converged=np.ones(60, bool), steps=zeros, source=np.arange(60))


class ModelServer:
    """A linear classifier behind POST /, on 127.0.0.1, with a scripted misbehaviour.

    ``policy(request_index, body) -> action`` picks what each request gets: ``"ok"``,
    ``"drop"`` (close without answering), ``("sleep", s)`` (then answer), or
    ``("status", code, headers, text)``.
    """

    def __init__(self, policy=None, answer="labels"):
        self.policy = policy or (lambda index, body: "ok")
        self.answer = answer
        self.lock = threading.Lock()
        self.requests = 0
        self.points_received = 0
        self.answered = []  # sha256 of each request body answered with 200

    def __enter__(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                inputs = json.loads(body).get("inputs")
                with server.lock:
                    index = server.requests
                    server.requests += 1
                    server.points_received += len(inputs) if inputs else 0
                    action = server.policy(index, body)
                if action == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if isinstance(action, tuple) and action[0] == "status":
                    _, code, headers, text = action
                    self._reply(code, text.encode(), headers)
                    return
                if isinstance(action, tuple) and action[0] == "sleep":
                    time.sleep(action[1])
                if inputs is None:
                    self._reply(400, b'{"error": "expected \\"inputs\\""}', {})
                    return
                logits = suspect_logits(np.asarray(inputs, np.float32))
                if server.answer == "labels":
                    payload = {"labels": logits.argmax(axis=1).tolist()}
                else:
                    payload = {"logits": logits.tolist()}
                with server.lock:
                    server.answered.append(hashlib.sha256(body).hexdigest())
                self._reply(200, json.dumps(payload).encode(), {})

            def _reply(self, code, data, headers):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # a client that timed out closed its socket: expected here

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/predict"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def direct_rate(fingerprints):
    return ipg.matching_rate(fingerprints, suspect_logits)


def test_healthy_server_labels_and_logits(fingerprints):
    expected = direct_rate(fingerprints)
    assert 0.2 < expected < 1.0, expected  # the test means something
    for answer in ("labels", "logits"):
        with ModelServer(answer=answer) as server:
            suspect = HTTPSuspect(server.url, batch_size=8, **FAST)
            assert ipg.matching_rate(fingerprints, suspect, batch_size=32) == expected
            assert server.requests == 8 and server.points_received == 60
            assert suspect.points_sent == 60
        verdict = ipg.verify(fingerprints, suspect_logits)
        assert verdict.matching_rate == expected


def test_flaky_server_loses_nothing_and_keeps_the_budget(fingerprints, tmp_path):
    rng = random.Random(1234)

    def flaky(index, body):
        draw = rng.random()
        if draw < 0.15:
            return ("status", 500, {}, "internal error")
        if draw < 0.30:
            return "drop"
        return "ok"

    budget = 120
    with ModelServer(flaky) as server:
        suspect = HTTPSuspect(server.url, batch_size=8, max_retries=8, query_budget=budget,
                              log_path=tmp_path / "log.jsonl", **FAST)
        labels = ipg.query_labels(fingerprints, suspect, batch_size=32)
    np.testing.assert_array_equal(labels, suspect_logits(fingerprints.x).argmax(axis=1))
    assert server.requests > 8  # some requests did fail and were retried
    assert len(server.answered) == 8
    assert server.points_received <= suspect.points_sent <= budget
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    statuses = [json.loads(line)["status"] for line in lines]
    assert statuses.count(200) == 8 and 500 in statuses
    assert any(isinstance(s, str) and s.startswith("error") for s in statuses)


def test_slow_server_times_out_then_retries(fingerprints):
    def slow_first_attempts(index, body):
        return ("sleep", 0.6) if index % 2 == 0 else "ok"

    with ModelServer(slow_first_attempts) as server:
        suspect = HTTPSuspect(server.url, batch_size=20, timeout=0.2, backoff=0.001)
        start = time.monotonic()
        rate = ipg.matching_rate(fingerprints, suspect)
        elapsed = time.monotonic() - start
    assert rate == direct_rate(fingerprints)
    assert server.requests == 6 and suspect.requests_sent == 6  # each batch timed out once
    assert elapsed < 5


def test_429_honours_retry_after(fingerprints):
    def limited(index, body):
        return ("status", 429, {"Retry-After": "1"}, "slow down") if index == 0 else "ok"

    with ModelServer(limited) as server:
        suspect = HTTPSuspect(server.url, batch_size=64, **FAST)
        start = time.monotonic()
        rate = ipg.matching_rate(fingerprints, suspect)
        elapsed = time.monotonic() - start
    assert rate == direct_rate(fingerprints)
    assert server.requests == 2
    assert elapsed >= 0.95  # waited as asked, not the tiny backoff


def test_retry_after_longer_than_max_wait_raises(fingerprints):
    def limited(index, body):
        return ("status", 429, {"Retry-After": "3600"}, "come back later")

    with ModelServer(limited) as server:
        suspect = HTTPSuspect(server.url, max_wait=5.0, **FAST)
        with pytest.raises(SuspectQueryError, match="retry after 3600 s"):
            ipg.matching_rate(fingerprints, suspect)
    assert server.requests == 1


def test_400_fails_at_once_with_status_and_body(fingerprints):
    message = "bad request: " + "x" * 500

    def refuse(index, body):
        return ("status", 400, {}, message)

    with ModelServer(refuse) as server:
        suspect = HTTPSuspect(server.url, max_retries=5, **FAST)
        with pytest.raises(SuspectQueryError, match="HTTP 400: 'bad request: xxx") as info:
            ipg.matching_rate(fingerprints, suspect)
    assert server.requests == 1  # no retries
    assert info.value.status == 400 and info.value.body == message[:200]


def test_query_budget_is_never_exceeded(fingerprints, tmp_path):
    with ModelServer() as server:
        suspect = HTTPSuspect(server.url, batch_size=8, query_budget=20, **FAST)
        with pytest.raises(QueryBudgetExceeded, match="16 of 20 points already sent"):
            ipg.matching_rate(fingerprints, suspect)
    assert server.points_received == 16

    # retries count too: each failed attempt spent its points
    def every_other_fails(index, body):
        return ("status", 503, {}, "busy") if index % 2 == 0 else "ok"

    with ModelServer(every_other_fails) as server:
        suspect = HTTPSuspect(server.url, batch_size=8, query_budget=20, **FAST)
        with pytest.raises(QueryBudgetExceeded):
            ipg.matching_rate(fingerprints, suspect)
    assert server.requests == 2 and server.points_received == 16 <= 20


def test_resume_after_interruption_sends_no_batch_twice(fingerprints, tmp_path):
    resume = tmp_path / "resume.json"
    # One endpoint (the resume file is bound to its URL) that fails, then recovers.
    outage = {"from": 3}

    def dies_after_three(index, body):
        return "ok" if index < outage["from"] else ("status", 502, {}, "bad gateway")

    with ModelServer(dies_after_three) as server:
        suspect = HTTPSuspect(server.url, batch_size=8, max_retries=2, query_budget=200,
                              resume_path=resume, **FAST)
        with pytest.raises(SuspectQueryError, match="failed batch 3 3 times"):
            ipg.query_labels(fingerprints, suspect, batch_size=32)
        first = list(server.answered)
        assert len(first) == 3 and server.requests == 6
        state = json.loads(resume.read_text())
        assert len(state["answers"]) == 3 and state["points_sent"] == 3 * 8 + 3 * 8

        outage["from"] = 10 ** 9  # the API is back
        resumed = HTTPSuspect(server.url, batch_size=8, query_budget=200, resume_path=resume,
                              **FAST)
        labels = ipg.query_labels(fingerprints, resumed, batch_size=32)
        np.testing.assert_array_equal(labels, suspect_logits(fingerprints.x).argmax(axis=1))
        second = server.answered[3:]
        assert len(second) == 5 and server.requests == 6 + 5  # only the 5 unanswered batches
        assert not set(first) & set(second) and len(set(first) | set(second)) == 8
        assert resumed.points_sent == 48 + 36  # the budget counts both runs

        # a third run answers everything from the file, sending nothing
        again = HTTPSuspect(server.url, batch_size=8, resume_path=resume, **FAST)
        np.testing.assert_array_equal(ipg.query_labels(fingerprints, again, batch_size=32),
                                      labels)
        assert server.requests == 11


def test_log_has_no_raw_points(fingerprints, tmp_path):
    log = tmp_path / "log.jsonl"
    with ModelServer(lambda index, body: "drop" if index == 1 else "ok") as server:
        suspect = HTTPSuspect(server.url, batch_size=16, log_path=log, **FAST)
        ipg.matching_rate(fingerprints, suspect)
    text = log.read_text()
    entries = [json.loads(line) for line in text.splitlines()]
    assert len(entries) == 5 and {e["batch"] for e in entries} == {0, 1, 2, 3}
    allowed = {"time", "batch", "sha256", "points", "attempt", "status", "elapsed_s", "labels",
               "retry_in_s"}
    assert all(set(e) <= allowed for e in entries)
    long_values = {repr(float(v)) for v in fingerprints.x.ravel()} | {
        repr(v) for v in fingerprints.x.ravel().tolist()}
    long_values = {v for v in long_values if len(v) >= 8}
    assert len(long_values) > 100
    assert not any(v in text for v in long_values)
    # each value's leading digits do not appear either (no rounded copies)
    assert not any(v[:8] in text for v in long_values if v.startswith("0."))


def test_custom_encode_decode_for_another_api(fingerprints):
    def encode(batch):
        return json.dumps({"instances": batch.reshape(len(batch), -1).tolist()}).encode()

    def decode(body):
        return np.asarray(json.loads(body)["predictions"])

    class Api(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            logits = np.asarray(body["instances"], np.float32) @ SUSPECT_W
            data = json.dumps({"predictions": logits.tolist()}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/v1/models/m:predict"
        suspect = HTTPSuspect(url, encode=encode, decode=decode, **FAST)
        assert suspect(fingerprints.x[:5]).shape == (5, NUM_CLASSES)
        assert ipg.matching_rate(fingerprints, suspect) == direct_rate(fingerprints)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="http"):
        HTTPSuspect("file:///etc/passwd")
    with pytest.raises(ValueError, match="batch_size"):
        HTTPSuspect("http://127.0.0.1:1/", batch_size=0)
    with pytest.raises(ValueError, match="query_budget"):
        HTTPSuspect("http://127.0.0.1:1/", query_budget=-1)


def test_unreachable_server_gives_up_after_retries(fingerprints):
    with contextlib.closing(socket.socket()) as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    suspect = HTTPSuspect(f"http://127.0.0.1:{port}/", max_retries=2, **FAST)
    with pytest.raises(SuspectQueryError, match="3 times") as info:
        suspect(fingerprints.x[:4])
    assert info.value.status is None and suspect.requests_sent == 3
