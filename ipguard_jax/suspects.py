"""Suspects behind an HTTP prediction API, queried with retries, a budget, a log and resume.

A suspect model is often reachable only as a prediction endpoint that answers labels.
:class:`HTTPSuspect` is a callable suspect for :func:`~ipguard_jax.matching_rate` and
:func:`~ipguard_jax.verify` that makes such an endpoint safe to query: it retries transient
failures, never sends more points than a query budget allows, logs what it sent without the
(secret) points, and records answered batches so an interrupted verification resumes without
querying them again. Standard library only.

Example:
    >>> from ipguard_jax import HTTPSuspect
    >>> HTTPSuspect("http://127.0.0.1:8000/predict", query_budget=1000)  # nothing sent yet
    HTTPSuspect('http://127.0.0.1:8000/predict', batch_size=64, points_sent=0, query_budget=1000)
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import json
import math
import os
import random
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Mapping

import numpy as np

from ipguard_jax.fingerprints import update_digest

#: The ``format`` field of a resume file.
RESUME_FORMAT = "ipguard_jax.HTTPSuspect.resume"

Encode = Callable[[np.ndarray], bytes]
Decode = Callable[[bytes], Any]


class QueryBudgetExceeded(RuntimeError):
    """Sending the next batch would exceed the query budget; nothing was sent for it."""


class SuspectQueryError(RuntimeError):
    """The suspect's API refused a request, gave up after retries, or answered nonsense.

    Attributes:
        status: the last HTTP status, or ``None`` when no response came (connection error,
            timeout) or the answer could not be decoded.
        body: the first 200 characters of the last response body (``""`` if none), with
            decimal numbers replaced by ``<num>`` (an API may echo the secret points).
    """

    def __init__(self, message: str, status: int | None = None, body: str = ""):
        super().__init__(message)
        self.status = status
        self.body = body


def json_encode(batch: np.ndarray) -> bytes:
    """The default request body: ``{"inputs": batch.tolist()}`` as UTF-8 JSON.

    Args:
        batch: the points of one request, ``(n, *input_shape)``.

    Returns:
        The compact JSON body.

    Example:
        >>> import numpy as np
        >>> json_encode(np.array([[0.5, 1.0]], np.float32))
        b'{"inputs":[[0.5,1.0]]}'
    """
    return json.dumps({"inputs": batch.tolist()}, separators=(",", ":")).encode()


def json_decode(body: bytes) -> np.ndarray:
    """Reads the default answer: ``{"labels": [...]}`` (ints) or ``{"logits": [[...]]}``.

    Args:
        body: the response body (JSON).

    Returns:
        int64 labels ``(n,)``, or float64 logits ``(n, C)``.

    Raises:
        ValueError: not JSON, no ``"labels"``/``"logits"`` entry, or entries of the wrong
            shape or type.

    Example:
        >>> json_decode(b'{"labels": [3, 1]}').tolist()
        [3, 1]
        >>> json_decode(b'{"logits": [[0.5, 2.0]]}').argmax(axis=1).tolist()
        [1]
    """
    answer = json.loads(body)
    if not isinstance(answer, dict) or not ({"labels", "logits"} & answer.keys()):
        raise ValueError('expected a JSON object with "labels" or "logits"')
    if "labels" in answer:
        labels = np.asarray(answer["labels"])
        if labels.ndim != 1 or not (labels.size == 0 or np.issubdtype(labels.dtype, np.integer)):
            raise ValueError('"labels" must be a flat list of integers')
        return labels.astype(np.int64)
    logits = np.asarray(answer["logits"], dtype=np.float64)
    if logits.ndim != 2:
        raise ValueError('"logits" must be a list of rows (N, C)')
    return logits


def batch_sha256(batch: np.ndarray) -> str:
    """sha256 of a batch's dtype, shape and little-endian bytes: its key in logs and resumes.

    Args:
        batch: the points of one request.

    Returns:
        64 lowercase hex digits; the points cannot be read back from it.

    Example:
        >>> import numpy as np
        >>> batch_sha256(np.zeros((2, 3), np.float32)) == batch_sha256(np.zeros((2, 3)))
        False
    """
    digest = hashlib.sha256()
    update_digest(digest, "batch", batch)
    return digest.hexdigest()


def _retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or ``None``."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class HTTPSuspect:
    """A suspect model behind an HTTP endpoint, as a callable for ``matching_rate``/``verify``.

    Protocol (the default ``encode``/``decode``): each batch of at most ``batch_size`` points is
    one ``POST`` to ``url`` with ``Content-Type: application/json`` and the body
    ``{"inputs": <the batch as a nested list>}``; the answer must be ``200`` with
    ``{"labels": [int, ...]}`` (one per point) or ``{"logits": [[float, ...], ...]}``. Other APIs
    plug in through ``encode(batch) -> bytes`` and ``decode(body) -> labels (n,) or logits
    (n, C)`` (and ``headers``, e.g. for a content type or an authorisation token).

    Failures: connection errors, timeouts, ``5xx`` and ``429`` are retried up to
    ``max_retries`` times, waiting ``backoff * 2**attempt`` seconds scaled by a jitter factor in
    ``[0.5, 1.5)`` (drawn from ``random.Random(seed)``, so runs are reproducible), or as long as a
    ``Retry-After`` header asks (up to ``max_wait``). Any other status raises
    :class:`SuspectQueryError` at once, naming the status and the start of the body.

    Budget: ``query_budget`` caps the points sent, counting every attempt (a failed request may
    still have reached the model) and, with ``resume_path``, every earlier run on the same file.
    A batch that would pass the cap raises :class:`QueryBudgetExceeded` before it is sent.

    Log: with ``log_path``, one JSON line per attempt (and per batch taken from the resume file)
    with the batch index, the batch's sha256, the number of points, the attempt, the status,
    the elapsed time, the labels answered and the wait before a retry. The points themselves
    are never written: fingerprints are secret until a dispute.

    Resume: with ``resume_path``, the answers are kept in a JSON file keyed by each batch's
    sha256 (:func:`batch_sha256`), rewritten atomically (temporary file, then rename) after every
    attempt. A new ``HTTPSuspect`` on the same file answers known batches from it without
    sending them. Batches are cut the same way in a rerun only with the same ``batch_size`` here
    and in ``matching_rate``/``verify``.

    One ``HTTPSuspect`` is meant for one thread at a time.

    Args:
        url: the ``http://`` or ``https://`` endpoint.
        batch_size: points per request.
        timeout: seconds to wait for a connection and for each read.
        max_retries: retries per batch after the first attempt.
        backoff: base wait in seconds before the first retry; doubles every retry.
        query_budget: most points ever sent (``None``: no cap).
        log_path: JSON-lines log file, appended to.
        resume_path: JSON resume file, created if missing.
        headers: extra request headers.
        encode: ``encode(batch) -> bytes``, the request body (default :func:`json_encode`).
        decode: ``decode(body) -> array``, labels ``(n,)`` or logits ``(n, C)`` (default
            :func:`json_decode`).
        seed: seed of the jitter.
        max_wait: longest single wait in seconds; a ``Retry-After`` asking for more raises.

    Attributes:
        points_sent: points sent over every attempt (and earlier runs on the resume file).
        requests_sent: HTTP requests made by this object.

    Raises:
        ValueError: a URL that is not ``http(s)://``; a ``batch_size`` or ``timeout`` that is
            not > 0; a ``max_retries``, ``backoff``, ``max_wait`` or ``query_budget`` that is
            not a finite number >= 0 (ints for the counts); or a resume file that cannot be
            read or is not one.

    Example:
        Constructing the suspect sends nothing; querying it does (here left as a comment):

        >>> from ipguard_jax import HTTPSuspect
        >>> suspect = HTTPSuspect("http://127.0.0.1:8000/predict", query_budget=1000,
        ...                       log_path="queries.jsonl", resume_path="resume.json")
        >>> suspect.points_sent, suspect.batch_size
        (0, 64)
        >>> # verdict = ipg.verify(ipg.load("owner_fingerprints"), suspect, batch_size=64)
    """

    def __init__(self, url: str, *, batch_size: int = 64, timeout: float = 10.0,
                 max_retries: int = 5, backoff: float = 0.5, query_budget: int | None = None,
                 log_path: str | os.PathLike | None = None,
                 resume_path: str | os.PathLike | None = None,
                 headers: Mapping[str, str] | None = None, encode: Encode = json_encode,
                 decode: Decode = json_decode, seed: int = 0, max_wait: float = 60.0):
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in ("http", "https"):
            raise ValueError(f"url must be an http:// or https:// URL, got {url!r}")
        if not (isinstance(batch_size, int) and not isinstance(batch_size, bool)
                and batch_size > 0):
            raise ValueError(f"batch_size must be an int > 0, got {batch_size!r}")
        if not (isinstance(max_retries, int) and not isinstance(max_retries, bool)
                and max_retries >= 0):
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        for name, value in (("timeout", timeout), ("backoff", backoff), ("max_wait", max_wait)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        if query_budget is not None and not (isinstance(query_budget, int)
                                             and not isinstance(query_budget, bool)
                                             and query_budget >= 0):
            raise ValueError(f"query_budget must be an int >= 0 or None, got {query_budget!r}")
        self.url = url
        self.batch_size = batch_size
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.max_wait = float(max_wait)
        self.query_budget = query_budget
        self.log_path = None if log_path is None else os.fspath(log_path)
        self.resume_path = None if resume_path is None else os.fspath(resume_path)
        self.headers = {"Content-Type": "application/json", **dict(headers or {})}
        self.encode = encode
        self.decode = decode
        self._rng = random.Random(seed)
        self._batch_index = 0
        #: points sent, over every attempt (and earlier runs on the resume file)
        self.points_sent = 0
        #: HTTP requests made by this object
        self.requests_sent = 0
        self._answers: dict[str, dict[str, Any]] = {}
        if self.resume_path is not None and os.path.exists(self.resume_path):
            self._load_resume()

    # -- resume file -------------------------------------------------------------------------

    def _load_resume(self) -> None:
        try:
            with open(self.resume_path, encoding="utf-8") as f:
                state = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read the resume file {self.resume_path}: {e}") from e
        if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
            raise ValueError(f"{self.resume_path} is not an HTTPSuspect resume file")
        self._answers = dict(state.get("answers", {}))
        self.points_sent = int(state.get("points_sent", 0))

    def _save_resume(self) -> None:
        if self.resume_path is None:
            return
        state = {"format": RESUME_FORMAT, "version": 1, "url": self.url,
                 "points_sent": self.points_sent, "answers": self._answers}
        folder = os.path.dirname(os.path.abspath(self.resume_path))
        fd, tmp = tempfile.mkstemp(prefix=".resume-", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(state, f, separators=(",", ":"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.resume_path)  # atomic: a crash leaves the old file or the new
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    # -- log ---------------------------------------------------------------------------------

    def _log(self, **entry: Any) -> None:
        if self.log_path is None:
            return
        entry = {"time": round(time.time(), 3), **entry}
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, separators=(",", ":")) + "\n")

    # -- querying ----------------------------------------------------------------------------

    def _wait(self, attempt: int, retry_after: float | None) -> float:
        delay = self.backoff * 2 ** attempt * self._rng.uniform(0.5, 1.5)
        if retry_after is not None:
            if retry_after > self.max_wait:
                raise SuspectQueryError(
                    f"{self.url} asks to retry after {retry_after:.0f} s, more than max_wait="
                    f"{self.max_wait:.0f} s", status=429)
            delay = max(delay, retry_after)
        return min(delay, self.max_wait)

    def _post(self, body: bytes) -> tuple[int, bytes, str | None]:
        """One request: ``(status, body, Retry-After)``; raises OSError/HTTPException if none."""
        request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        self.requests_sent += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.read(), response.headers.get("Retry-After")
        except urllib.error.HTTPError as e:
            with e:  # closes the error's connection
                try:
                    error_body = e.read()
                except (OSError, http.client.HTTPException):
                    error_body = b""
                return e.code, error_body, e.headers.get("Retry-After") if e.headers else None

    def _query_batch(self, batch: np.ndarray) -> np.ndarray:
        index = self._batch_index
        self._batch_index += 1
        key = batch_sha256(batch)
        n = int(batch.shape[0])
        if key in self._answers:
            answer = self._answers[key]
            self._log(batch=index, sha256=key, points=n, status="resumed",
                      labels=_labels_for_log(answer))
            return _answer_array(answer)
        body = self.encode(batch)
        last_status: int | None = None
        last_error = ""
        for attempt in range(self.max_retries + 1):
            if self.query_budget is not None and self.points_sent + n > self.query_budget:
                self._log(batch=index, sha256=key, points=n, attempt=attempt,
                          status="budget_exceeded", points_sent=self.points_sent)
                raise QueryBudgetExceeded(
                    f"sending batch {index} ({n} points) would exceed the query budget: "
                    f"{self.points_sent} of {self.query_budget} points already sent"
                )
            # Counted, and saved, before sending: a request that fails may still have reached
            # the model, and a crash mid-request must not let a rerun overspend.
            self.points_sent += n
            self._save_resume()
            start = time.monotonic()
            retry_after = None
            try:
                status, answer_body, retry_after_header = self._post(body)
            except (OSError, http.client.HTTPException) as e:  # no response: retry
                status, answer_body = None, b""
                last_error = f"{type(e).__name__}: {e}"
                log_status: Any = "timeout" if _is_timeout(e) else f"error: {type(e).__name__}"
            else:
                log_status = status
                retry_after = _retry_after_seconds(retry_after_header) if status == 429 else None
            elapsed = round(time.monotonic() - start, 4)
            last_status = status
            if status == 200:
                try:
                    answer = self._check_answer(self.decode(answer_body), n)
                except (ValueError, TypeError) as e:
                    self._log(batch=index, sha256=key, points=n, attempt=attempt, status=200,
                              elapsed_s=elapsed, error="undecodable answer")
                    raise SuspectQueryError(
                        f"{self.url} answered batch {index} with 200 but an unusable body ({e}): "
                        f"{_snippet(answer_body)!r}", status=200, body=_snippet(answer_body)
                    ) from e
                self._answers[key] = answer
                self._save_resume()
                self._log(batch=index, sha256=key, points=n, attempt=attempt, status=200,
                          elapsed_s=elapsed, labels=_labels_for_log(answer))
                return _answer_array(answer)
            if status is not None and not (status == 429 or 500 <= status < 600):
                self._log(batch=index, sha256=key, points=n, attempt=attempt, status=status,
                          elapsed_s=elapsed)
                raise SuspectQueryError(
                    f"{self.url} refused batch {index} with HTTP {status}: "
                    f"{_snippet(answer_body)!r}", status=status, body=_snippet(answer_body)
                )
            if status is not None:
                last_error = f"HTTP {status}: {_snippet(answer_body)!r}"
            if attempt == self.max_retries:
                self._log(batch=index, sha256=key, points=n, attempt=attempt, status=log_status,
                          elapsed_s=elapsed)
                break
            wait = self._wait(attempt, retry_after)
            self._log(batch=index, sha256=key, points=n, attempt=attempt, status=log_status,
                      elapsed_s=elapsed, retry_in_s=round(wait, 4))
            time.sleep(wait)
        raise SuspectQueryError(
            f"{self.url} failed batch {index} {self.max_retries + 1} times; last: {last_error}",
            status=last_status, body=last_error[:200],
        )

    @staticmethod
    def _check_answer(output: Any, n: int) -> dict[str, Any]:
        output = np.asarray(output)
        if output.shape[:1] != (n,) or output.ndim not in (1, 2):
            raise ValueError(f"expected {n} labels or {n} rows of logits, got shape {output.shape}")
        if output.ndim == 1:
            if not np.issubdtype(output.dtype, np.integer):
                raise ValueError(f"labels must be integers, got dtype {output.dtype}")
            return {"labels": output.astype(np.int64).tolist()}
        return {"logits": output.astype(np.float64).tolist()}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The suspect's labels ``(n,)`` (or logits ``(n, C)`` if the API answers logits).

        Args:
            x: a batch ``(n, *input_shape)``, sent in requests of ``batch_size`` points.

        Returns:
            int64 labels ``(n,)``, or float64 logits ``(n, C)`` if every request answered
            logits.

        Raises:
            ValueError: an empty batch.
            QueryBudgetExceeded: the next request would pass ``query_budget`` (nothing is sent
                for it; the answers so far are kept in the resume file).
            SuspectQueryError: a refused request (a status other than 200, 429 or 5xx), an
                unusable answer, or a batch that failed ``max_retries + 1`` times.
        """
        x = np.asarray(x)
        if x.ndim < 1 or x.shape[0] == 0:
            raise ValueError(f"x must be a non-empty batch, got shape {x.shape}")
        parts = [self._query_batch(x[s:s + self.batch_size])
                 for s in range(0, x.shape[0], self.batch_size)]
        if all(p.ndim == 2 for p in parts) and len({p.shape[1] for p in parts}) == 1:
            return np.concatenate(parts)
        return np.concatenate([p.argmax(axis=1) if p.ndim == 2 else p for p in parts])

    def __repr__(self) -> str:
        return (f"HTTPSuspect({self.url!r}, batch_size={self.batch_size}, "
                f"points_sent={self.points_sent}, query_budget={self.query_budget})")


def _is_timeout(error: BaseException) -> bool:
    return isinstance(error, TimeoutError) or isinstance(getattr(error, "reason", None),
                                                          TimeoutError)


# Decimal numbers in an answer body: an API's error message may echo the query, and the points
# must not reach exception messages or logs.
_DECIMAL = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+(?=[eE]))(?:[eE][-+]?\d+)?")


def _snippet(body: bytes) -> str:
    """The start of an answer body for messages, decimal numbers replaced by ``<num>``."""
    return _DECIMAL.sub("<num>", body[:4000].decode("utf-8", errors="replace"))[:200]


def _answer_array(answer: Mapping[str, Any]) -> np.ndarray:
    if "labels" in answer:
        return np.asarray(answer["labels"], dtype=np.int64)
    return np.asarray(answer["logits"], dtype=np.float64)


def _labels_for_log(answer: Mapping[str, Any]) -> list[int]:
    return _answer_array(answer).argmax(axis=1).tolist() if "logits" in answer else list(
        answer["labels"])
