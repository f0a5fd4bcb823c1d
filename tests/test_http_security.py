"""HTTPSuspect against hostile or misconfigured endpoints, on real servers on 127.0.0.x.

Redirects, trickling servers, oversized or deeply nested answers, credentials in URLs, server
text that echoes the (secret) points, non-finite answers, and resume files of other runs.
Every test is bounded by small timeouts and takes at most a few seconds.
"""

import base64
import json
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

import ipguard_jax as ipg
from ipguard_jax.suspects import (MAX_JSON_DEPTH, HTTPSuspect, ResumeFileError,
                                  SuspectQueryError, json_decode, json_encode)

DIM, NUM_CLASSES = 4, 3
W = np.random.default_rng(0).normal(size=(DIM, NUM_CLASSES))
FAST = {"backoff": 0.001, "timeout": 2.0, "max_retries": 0}


def make_set(seed, n=12):
    x = np.random.default_rng(seed).uniform(0.1, 0.9, (n, DIM)).astype(np.float32)
    zeros = np.zeros(n, np.int32)
    return ipg.Fingerprints(x=x, labels=(x @ W).argmax(axis=1), i=zeros, j=zeros,
                            loss=zeros.astype(np.float32), converged=np.ones(n, bool),
                            steps=zeros, source=np.arange(n),
                            metadata={"classifier": {"num_classes": NUM_CLASSES}})


@pytest.fixture(scope="module")
def fp():
    return make_set(1)


@pytest.fixture(scope="module")
def natural():
    return np.random.default_rng(2).uniform(0, 1, (40, DIM)).astype(np.float32)


def reply(handler, code, data, headers=()):
    handler.send_response(code)
    handler.send_header("Content-Length", str(len(data)))
    for name, value in headers:
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)


def model(handler, body):
    """An honest endpoint: labels of the linear model W."""
    inputs = np.asarray(json.loads(body)["inputs"], np.float64)
    reply(handler, 200, json.dumps({"labels": (inputs @ W).argmax(axis=1).tolist()}).encode())


class Server:
    """``respond(handler, body)`` behind POST on ``host``, in a thread; keeps every request
    (GETs too, answered 404)."""

    def __init__(self, respond, host="127.0.0.1"):
        self.respond, self.host = respond, host
        self.requests = []  # (path, headers, body)
        self.stop = threading.Event()

    def __enter__(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.requests.append((self.path, dict(self.headers), body))
                server.respond(self, body)

            def do_GET(self):  # a client following a redirect may switch to GET
                server.requests.append((self.path, dict(self.headers), b""))
                reply(self, 404, b"")

        class Quiet(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # clients that gave up closed their sockets: expected here

        try:
            self.httpd = Quiet((self.host, 0), Handler)
        except OSError as e:
            pytest.skip(f"cannot listen on {self.host}: {e}")
        self.port = self.httpd.server_address[1]
        self.url = f"http://{self.host}:{self.port}/predict"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def point_strings(x):
    """How the posted values could be written: their JSON text and its first digits."""
    values = json.loads(json_encode(np.asarray(x)))["inputs"]
    out = set()
    for v in np.ravel(values):
        out |= {repr(float(v)), repr(float(v))[:6], f"{v:.4f}"}
    return out


def assert_no_points(text, x):
    leaked = [s for s in point_strings(x) if s in text]
    assert not leaked, (leaked[:3], text[:300])


def full_text(error):
    """The message and the traceback someone would print (causes included)."""
    return str(error) + "".join(traceback.format_exception(error))


# -- 1. redirects ------------------------------------------------------------------------------

@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirects_are_refused_and_nothing_reaches_the_target(fp, code, tmp_path):
    with Server(model, host="127.0.0.2") as target:
        location = f"http://127.0.0.2:{target.port}/steal?token=t0ken"

        def redirect(handler, body):
            reply(handler, code, b"moved", [("Location", location)])

        with Server(redirect) as server:
            suspect = HTTPSuspect(server.url, headers={"Authorization": "Bearer s3cret"},
                                  resume_path=tmp_path / "resume.json", **FAST)
            with pytest.raises(SuspectQueryError, match=f"HTTP {code}, a redirect to "
                                                        f"127.0.0.2") as info:
                suspect(fp.x[:4])
            assert len(server.requests) == 1
    assert target.requests == []  # neither the points nor the Authorization header moved
    assert info.value.status == code
    assert "t0ken" not in str(info.value) and "/steal" not in str(info.value)
    assert "s3cret" not in str(info.value) and "s3cret" not in repr(suspect)
    assert json.loads((tmp_path / "resume.json").read_text())["answers"] == {}


def test_a_redirect_host_that_echoes_the_points_is_masked(fp):
    def redirect(handler, body):
        value = json.loads(body)["inputs"][0][0]
        reply(handler, 302, b"", [("Location", f"http://{value}.evil.example/")])

    with Server(redirect) as server:
        with pytest.raises(SuspectQueryError, match=r"redirect to <num>\.evil\.example") as info:
            HTTPSuspect(server.url, **FAST)(fp.x[:2])
    assert_no_points(full_text(info.value), fp.x[:2])


# -- 2. one deadline per request ---------------------------------------------------------------

@pytest.mark.parametrize("part", ["status line", "body"])
def test_a_trickling_server_times_out_at_the_deadline(fp, part):
    def trickle(handler, body):
        if part == "status line":
            data = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
        else:
            handler.send_response(200)
            handler.send_header("Content-Length", "60")
            handler.end_headers()
            data = b'{"labels": [' + b" " * 40 + b"0, 0]}"
        for byte in data:  # one byte every 0.3 s: each read alone is quick
            if server.stop.wait(0.3):
                return
            try:
                handler.wfile.write(bytes([byte]))
            except OSError:
                return

    with Server(trickle) as server:
        suspect = HTTPSuspect(server.url, timeout=1.0, max_retries=0, backoff=0.001)
        start = time.monotonic()
        with pytest.raises(SuspectQueryError, match="failed batch 0 1 times.*Timeout") as info:
            suspect(fp.x[:2])
        elapsed = time.monotonic() - start
    assert 0.9 < elapsed < 3.0, elapsed
    assert info.value.status is None


# -- 3. answer size ----------------------------------------------------------------------------

@pytest.mark.parametrize("declared", [True, False])
def test_answers_over_max_response_bytes_are_refused(fp, declared):
    big = json.dumps({"labels": [0, 0], "padding": "x" * 5000}).encode()

    def oversized(handler, body):
        handler.send_response(200)
        if declared:
            handler.send_header("Content-Length", str(len(big)))
        handler.end_headers()  # undeclared: the body ends when the connection closes
        handler.wfile.write(big)

    with Server(oversized) as server:
        suspect = HTTPSuspect(server.url, max_response_bytes=1000, **FAST)
        with pytest.raises(SuspectQueryError,
                           match="longer than max_response_bytes=1000; pass a larger"):
            suspect(fp.x[:2])
        # a cap that fits reads the same answer
        ok = HTTPSuspect(server.url, max_response_bytes=len(big), **FAST)
        assert ok(fp.x[:2]).tolist() == [0, 0]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None])
def test_max_response_bytes_is_checked(bad):
    with pytest.raises(ValueError, match="max_response_bytes must be an int > 0"):
        HTTPSuspect("http://127.0.0.1:1/", max_response_bytes=bad)


# -- 4. JSON depth -----------------------------------------------------------------------------

def test_deeply_nested_json_is_a_clear_error(fp):
    with Server(lambda handler, body: reply(handler, 200, b"[" * 100000)) as server:
        with pytest.raises(SuspectQueryError, match=f"more than {MAX_JSON_DEPTH} levels"):
            HTTPSuspect(server.url, **FAST)(fp.x[:2])
        # a custom decoder that recurses too deep gives a clear error too
        with pytest.raises(SuspectQueryError, match="nested too deeply"):
            HTTPSuspect(server.url, decode=json.loads, **FAST)(fp.x[:2])


def test_json_depth_ignores_brackets_in_strings_and_stays_linear():
    assert json_decode(b'{"labels": [1, 2], "note": "' + b"[" * 500 + b'\\"]"}').tolist() == [1, 2]
    deep = b'{"labels": ' + b"[" * (MAX_JSON_DEPTH) + b"1" + b"]" * MAX_JSON_DEPTH + b"}"
    with pytest.raises(ValueError, match="levels deep"):
        json_decode(deep)
    start = time.monotonic()
    for hostile in (b'"' + b'\\"' * 300000, b'"\\' * 300000, b"[]" * 1000000):
        with pytest.raises(ValueError):
            json_decode(hostile)
    assert time.monotonic() - start < 3


# -- 5. credentials in URLs and headers --------------------------------------------------------

def test_credentials_and_query_tokens_never_show(fp, tmp_path):
    with Server(lambda handler, body: reply(handler, 503, b"down")) as server:
        url = server.url.replace("http://", "http://alice:s3cret@") + "?token=t0ken"
        log, resume = tmp_path / "log.jsonl", tmp_path / "resume.json"
        suspect = HTTPSuspect(url, log_path=log, resume_path=resume, **FAST)
        assert repr(suspect).startswith(
            f"HTTPSuspect('http://***@127.0.0.1:{server.port}/predict?***'")
        with pytest.raises(SuspectQueryError, match=r"http://\*\*\*@127\.0\.0\.1") as info:
            suspect(fp.x[:2])
        path, headers, _ = server.requests[0]
    # the credentials went as HTTP Basic authorisation, the query as sent
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"alice:s3cret").decode()
    assert path == "/predict?token=t0ken"
    for text in (repr(suspect), full_text(info.value), log.read_text(), resume.read_text()):
        assert "s3cret" not in text and "t0ken" not in text and "alice" not in text


def test_bad_urls_and_headers_are_refused_without_echoing_secrets():
    for url in ("ftp://bob:pa55word@host/x", "http://bob:pa55word@/x",
                "http://bob:pa55word@host:notaport/x"):
        with pytest.raises(ValueError, match="http:// or https://") as info:
            HTTPSuspect(url)
        assert "pa55word" not in str(info.value)
    for url in ("http://host/a b?token=pa55word", "http://host/x?token=pa55word\x7f",
                "http://host/caf\u00e9?token=pa55word"):
        with pytest.raises(ValueError, match="ASCII without spaces") as info:
            HTTPSuspect(url)
        assert "pa55word" not in str(info.value)
    with pytest.raises(ValueError, match="either in the url or in an Authorization header"):
        HTTPSuspect("http://bob:pw@127.0.0.1:1/", headers={"authorization": "Bearer x"})
    with pytest.raises(ValueError, match="header Authorization must be") as info:
        HTTPSuspect("http://127.0.0.1:1/", headers={"Authorization": "Bearer pa55word\n"})
    assert "pa55word" not in str(info.value)
    suspect = HTTPSuspect("http://127.0.0.1:1/", headers={"X-Api-Key": "pa55word"})
    assert "pa55word" not in repr(suspect)


# -- 6. server text that echoes the points -----------------------------------------------------

def _echo_string_logits(handler, body):
    text = body.decode()
    reply(handler, 200, json.dumps({"logits": [[text, text]] * 4}).encode())


def _echo_garbage_json(handler, body):
    reply(handler, 200, b"{oops " + body)


def _echo_status_line(handler, body):
    handler.wfile.write(b"HTTP/1.1 2x0 " + body + b"\r\n\r\n")


def _echo_as_labels(handler, body):
    reply(handler, 200, json.dumps({"labels": json.loads(body)["inputs"]}).encode())


def _float_decode(body):
    return np.asarray(json.loads(body)["logits"], np.float64)  # str(error) holds the text


def _key_decode(body):
    return json.loads(body)[body.decode()]  # KeyError holding the whole body


@pytest.mark.parametrize("respond, decode", [
    (_echo_string_logits, None), (_echo_string_logits, _float_decode),
    (_echo_garbage_json, None), (_echo_status_line, None), (_echo_as_labels, None),
    (_echo_as_labels, _key_decode)])
def test_server_text_that_echoes_the_points_is_masked(fp, tmp_path, respond, decode):
    points = fp.x[:4]
    log = tmp_path / "log.jsonl"
    with Server(respond) as server:
        kwargs = {} if decode is None else {"decode": decode}
        suspect = HTTPSuspect(server.url, log_path=log, **FAST, **kwargs)
        with pytest.raises(SuspectQueryError) as info:
            suspect(points)
    assert "<num>" in str(info.value)  # the echo was there, masked
    for text in (full_text(info.value), info.value.body, log.read_text()):
        assert_no_points(text, points)


# -- 8. non-finite answers ---------------------------------------------------------------------

@pytest.mark.parametrize("logits", [b"[[NaN, 1.0], [0.0, 1.0]]",
                                    b"[[Infinity, Infinity], [Infinity, Infinity]]",
                                    b"[[1.0, -Infinity], [0.0, 1.0]]"])
def test_non_finite_logits_are_refused(fp, tmp_path, logits):
    resume = tmp_path / "resume.json"
    with Server(lambda handler, body: reply(handler, 200, b'{"logits": ' + logits + b"}")) \
            as server:
        suspect = HTTPSuspect(server.url, resume_path=resume, **FAST)
        with pytest.raises(SuspectQueryError, match="logits must be finite"):
            suspect(fp.x[:2])
    assert json.loads(resume.read_text())["answers"] == {}


# -- 7. resume files: bound to the run, every field checked ------------------------------------

def test_a_resume_file_of_another_url_is_refused_before_any_request(fp, tmp_path):
    resume = tmp_path / "resume.json"
    with Server(model) as first:
        ipg.query_labels(fp, HTTPSuspect(first.url, batch_size=4, resume_path=resume, **FAST),
                         batch_size=4)
        url_a = first.url
    # the same endpoint with other credentials is the same endpoint
    HTTPSuspect(url_a.replace("http://", "http://carol:pw@"), resume_path=resume)
    with Server(model) as other:
        with pytest.raises(ResumeFileError, match="belongs to another run: it was written for "
                                                  "another URL") as info:
            suspect = HTTPSuspect(other.url, batch_size=4, resume_path=resume, **FAST)
            ipg.query_labels(fp, suspect, batch_size=4)
    assert str(resume) in str(info.value) and "delete it or pass another resume_path" in str(
        info.value)
    assert other.requests == []


def test_a_resume_file_of_another_set_or_other_decoys_is_refused(fp, natural, tmp_path):
    resume = tmp_path / "resume.json"
    with Server(model) as server:
        first = HTTPSuspect(server.url, batch_size=4, resume_path=resume, **FAST)
        assert ipg.verify(fp, first, decoys=natural, key=1).matching_rate == 1.0
        sent = len(server.requests)
        runs = [(make_set(7), dict(decoys=natural, key=1), "fingerprints"),
                (fp, dict(decoys=natural, key=2), "decoys"),
                (fp, dict(decoys=natural, key=1, decoy_ratio=2.0), "decoys"),
                (fp, dict(decoys=natural[::-1], key=1), "decoys"),
                (fp, dict(), "decoys")]
        for fingerprints, kwargs, field in runs:
            again = HTTPSuspect(server.url, batch_size=4, resume_path=resume, **FAST)
            with pytest.raises(ResumeFileError, match=f"another run: it was written for other "
                                                      f"{field}; delete it"):
                ipg.verify(fingerprints, again, **kwargs)
        with pytest.raises(ResumeFileError, match="written for other fingerprints"):
            ipg.verify(make_set(7), first, decoys=natural, key=1)  # the same object, too
        assert len(server.requests) == sent  # nothing was sent for another run
        # the same run resumes from the file without a request
        again = HTTPSuspect(server.url, batch_size=4, resume_path=resume, **FAST)
        assert ipg.verify(fp, again, decoys=natural, key=1).matching_rate == 1.0
        assert len(server.requests) == sent


def test_a_file_from_direct_calls_is_bound_by_the_first_verification(fp, tmp_path):
    resume = tmp_path / "resume.json"
    with Server(model) as server:
        HTTPSuspect(server.url, batch_size=4, resume_path=resume, **FAST)(fp.x[:4])
        assert json.loads(resume.read_text())["context"] is None
        ipg.verify(fp, HTTPSuspect(server.url, batch_size=4, resume_path=resume, **FAST),
                   batch_size=4)
        assert len(server.requests) == 3  # the first batch came from the file
        with pytest.raises(ResumeFileError, match="other fingerprints"):
            ipg.verify(make_set(7), HTTPSuspect(server.url, resume_path=resume, **FAST))


@pytest.fixture
def written(fp, tmp_path):
    """A resume file of 3 answered batches of 4 points, and the URL it belongs to."""
    resume = tmp_path / "resume.json"
    with Server(model) as server:
        ipg.verify(fp, HTTPSuspect(server.url, batch_size=4, resume_path=resume, **FAST),
                   batch_size=4)
        yield resume, server


def _edit(resume, change):
    state = json.loads(resume.read_text())
    change(state, next(iter(state["answers"])))
    resume.write_text(json.dumps(state))


def _set(field, value):
    return lambda state, key: state.__setitem__(field, value)


def _set_answer(value):
    return lambda state, key: state["answers"].__setitem__(key, value)


@pytest.mark.parametrize("change, message", [
    (_set("points_sent", -1000), "'points_sent': expected an int >= 0, got -1000"),
    (_set("points_sent", "12"), "'points_sent': expected an int >= 0, got a string"),
    (_set("points_sent", 12.0), "'points_sent': expected an int >= 0, got a float"),
    (_set("points_sent", True), "'points_sent': expected an int >= 0, got true"),
    (_set("points_sent", 4), "4 points sent but 12 answered"),
    (_set("answers", []), "'answers': expected an object, got a list"),
    (_set("context", "x"), "'context': expected null or an object of sha256"),
    (_set("version", 1), "format version 1"),
    (_set("url_sha256", "0" * 64), "another URL"),
    (lambda state, key: state["answers"].__setitem__("../etc", {"labels": [0]}),
     "a key that is not a batch sha256"),
    (_set_answer({"labels": ["x", 0, 0, 0]}), "labels must be ints >= 0, got a string"),
    (_set_answer({"labels": [-1, 0, 0, 0]}), "labels must be ints >= 0, got -1"),
    (_set_answer({"labels": [True, 0, 0, 0]}), "labels must be ints >= 0, got true"),
    (_set_answer({"labels": []}), "labels must be a non-empty list"),
    (_set_answer({"logits": [[0.5, "1"]] * 4}), "logits must be finite numbers, got a string"),
    (_set_answer({"logits": [[0.5, float("nan")]] * 4}), "got a non-finite float"),
    (_set_answer({"logits": [[0.5], [0.5, 1.0]]}), "rows of the same, non-zero length"),
    (_set_answer({"labels": [0] * 4, "logits": [[0.0]] * 4}), 'expected {"labels"'),
])
def test_every_resume_field_is_checked(written, change, message):
    resume, server = written
    _edit(resume, change)
    with pytest.raises(ResumeFileError, match=message.replace("[", r"\[").replace("{", r"\{")) \
            as info:
        HTTPSuspect(server.url, batch_size=4, resume_path=resume, query_budget=100, **FAST)
    assert str(resume) in str(info.value)
    assert len(server.requests) == 3


@pytest.mark.parametrize("answer, message", [
    ({"labels": [7, 0, 0, 0]}, "labels >= 3, for fingerprints of 3 classes"),
    ({"logits": [[0.0] * 5] * 4}, "5 logits per point, for fingerprints of 3 classes"),
    ({"labels": [0] * 3}, "with 3 values for 4 points; it is damaged or edited"),
])
def test_edited_answers_are_refused(fp, written, answer, message):
    resume, server = written
    _edit(resume, lambda state, key: [state["answers"].__setitem__(k, answer)
                                      for k in state["answers"]])
    suspect = HTTPSuspect(server.url, batch_size=4, resume_path=resume, **FAST)
    with pytest.raises(ResumeFileError, match=message) as info:
        ipg.verify(fp, suspect, batch_size=4)
    assert str(resume) in str(info.value)
    assert len(server.requests) == 3
