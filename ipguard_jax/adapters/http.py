"""Suspects behind an HTTP prediction API, queried with retries, a budget, a log and resume.

A suspect model is often reachable only as a prediction endpoint that answers labels.
:class:`HTTPSuspect` is a callable suspect for :func:`~ipguard_jax.matching_rate` and
:func:`~ipguard_jax.verify` that makes such an endpoint safe to query: it retries transient
failures, never sends more points than a query budget allows, logs what it sent without the
(secret) points, and records answered batches so an interrupted verification resumes without
querying them again. It treats the endpoint as untrusted: no redirects are followed, every
request ends within its timeout, answers are size- and depth-limited, and text from the server
or the URL's credentials never reach messages, logs or the resume file. Standard library only.

Example:
    >>> from ipguard_jax import HTTPSuspect
    >>> HTTPSuspect("http://127.0.0.1:8000/predict", query_budget=1000)  # nothing sent yet
    HTTPSuspect('http://127.0.0.1:8000/predict', batch_size=64, points_sent=0, query_budget=1000)
    >>> HTTPSuspect("https://me:secret@api.example/v1?key=abc")  # credentials never shown
    HTTPSuspect('https://***@api.example/v1?***', batch_size=64, points_sent=0, query_budget=None)
"""

from __future__ import annotations

import base64
import email.utils
import functools
import hashlib
import http.client
import io
import ipaddress
import json
import math
import os
import random
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from ipguard_jax.storage.canonical import canonical_json
from ipguard_jax.storage.digest import sha256_hex, update_digest
from ipguard_jax.storage.files import atomic_open

#: The ``format`` field of a resume file.
RESUME_FORMAT = "ipguard_jax.HTTPSuspect.resume"
#: The ``version`` field of the resume files this module writes and reads.
RESUME_VERSION = 2
#: Deepest nesting of JSON arrays and objects :func:`json_decode` accepts.
MAX_JSON_DEPTH = 64
#: Default ``max_response_bytes``: the largest answer body :class:`HTTPSuspect` reads.
DEFAULT_MAX_RESPONSE_BYTES = 64 * 2 ** 20

_ERROR_BODY_BYTES = 4096  # read of a refusal's body: only its start reaches a message
_CHUNK = 2 ** 16

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


class ResumeFileError(ValueError):
    """A resume file that cannot be read, is damaged, or belongs to another run."""


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
        ValueError: not JSON, nested more than :data:`MAX_JSON_DEPTH` levels deep, no
            ``"labels"``/``"logits"`` entry, or entries of the wrong shape or type (logits
            must be JSON numbers, not strings).

    Example:
        >>> json_decode(b'{"labels": [3, 1]}').tolist()
        [3, 1]
        >>> json_decode(b'{"logits": [[0.5, 2.0]]}').argmax(axis=1).tolist()
        [1]
    """
    if isinstance(body, str):
        body = body.encode()
    if _json_depth(body) > MAX_JSON_DEPTH:
        raise ValueError(f"the answer nests JSON arrays or objects more than {MAX_JSON_DEPTH} "
                         f"levels deep")
    answer = json.loads(body)
    if not isinstance(answer, dict) or not ({"labels", "logits"} & answer.keys()):
        raise ValueError('expected a JSON object with "labels" or "logits"')
    if "labels" in answer:
        labels = np.asarray(answer["labels"])
        if labels.ndim != 1 or not (labels.size == 0 or np.issubdtype(labels.dtype, np.integer)):
            raise ValueError('"labels" must be a flat list of integers')
        return labels.astype(np.int64)
    logits = np.asarray(answer["logits"])
    if logits.ndim != 2:
        raise ValueError('"logits" must be a list of rows (N, C)')
    if not _is_real_dtype(logits.dtype):
        raise ValueError('"logits" must hold numbers')
    return logits.astype(np.float64)


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


def redact_url(url: str) -> str:
    """``url`` as it may appear in messages: user info shown as ``***@``, a query as ``?***``.

    The fragment (never sent to a server) is dropped. Paths are kept.

    Args:
        url: any URL.

    Returns:
        The URL without its credentials or query, or ``"<unparsable URL>"``.

    Example:
        >>> redact_url("https://alice:s3cret@api.example:8443/v1/predict?key=abc#top")
        'https://***@api.example:8443/v1/predict?***'
    """
    try:
        parts = urllib.parse.urlsplit(str(url))
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path,
                                    "***" if parts.query else "", ""))


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


class _Endpoint(NamedTuple):
    """An ``http(s)://`` URL split into what is sent, shown and stored."""

    request_url: str  #: the URL requested: without user info or fragment
    display: str  #: for messages and repr: :func:`redact_url`
    sha256: str  #: sha256 of the normalised URL without user info: a resume file's binding
    authorization: str | None  #: ``Basic`` credentials from the URL's user info, if any

    @classmethod
    def parse(cls, url: Any) -> _Endpoint:
        display = redact_url(url)
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except (TypeError, ValueError, AttributeError):
            raise ValueError(f"url must be an http:// or https:// URL, got {display!r}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be an http:// or https:// URL with a host, got "
                             f"{display!r}")
        if not url.isascii() or re.search(r"[\x00-\x20\x7f]", url):
            # http.client would refuse it with a message quoting the path and query
            raise ValueError(f"url must be ASCII without spaces or control characters "
                             f"(percent-encode them), got {display!r}")
        netloc = parts.netloc.rpartition("@")[2]
        path = parts.path or "/"
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        normal = urllib.parse.urlunsplit((
            scheme, f"{host}:{port or (443 if scheme == 'https' else 80)}", path, parts.query, ""))
        authorization = None
        if "@" in parts.netloc:
            user = urllib.parse.unquote(parts.username or "")
            password = urllib.parse.unquote(parts.password or "")
            authorization = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        return cls(request_url=urllib.parse.urlunsplit((scheme, netloc, path, parts.query, "")),
                   display=display, sha256=sha256_hex(normal.encode()),
                   authorization=authorization)


class HTTPSuspect:
    """A suspect model behind an HTTP endpoint, as a callable for ``matching_rate``/``verify``.

    Protocol (the default ``encode``/``decode``): each batch of at most ``batch_size`` points is
    one ``POST`` to ``url`` with ``Content-Type: application/json`` and the body
    ``{"inputs": <the batch as a nested list>}``; the answer must be ``200`` with
    ``{"labels": [int, ...]}`` (one per point) or ``{"logits": [[float, ...], ...]}``. Other APIs
    plug in through ``encode(batch) -> bytes`` and ``decode(body) -> labels (n,) or logits
    (n, C)`` (and ``headers``, e.g. for a content type or an authorisation token). Labels must
    be ints >= 0 and logits finite numbers.

    Failures: connection errors, timeouts, ``5xx`` and ``429`` are retried up to
    ``max_retries`` times, waiting ``backoff * 2**attempt`` seconds scaled by a jitter factor in
    ``[0.5, 1.5)`` (drawn from ``random.Random(seed)``, so runs are reproducible), or as long as a
    ``Retry-After`` header asks (up to ``max_wait``). Any other status raises
    :class:`SuspectQueryError` at once, naming the status and the start of the body.

    Untrusted endpoint: redirects (``3xx``) are never followed (they would carry the points
    and the headers elsewhere): they raise :class:`SuspectQueryError` naming the target host.
    ``timeout`` bounds each whole request (connecting, sending and reading the answer), so a
    server that trickles bytes cannot stall a run; an answer longer than
    ``max_response_bytes`` or JSON nested deeper than :data:`MAX_JSON_DEPTH` is refused. Text
    the server sends reaches messages only with its decimal numbers replaced by ``<num>`` (an
    API may echo the secret points), and the URL's user info and query appear nowhere (repr,
    messages, log, resume file: see :func:`redact_url`). User info in ``url`` is sent as HTTP
    Basic authorisation.

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
    and in ``matching_rate``/``verify``. The file is bound to the URL (a sha256 of it, without
    credentials) and, through :meth:`bind`, to the fingerprint set and decoy settings of the
    verification; a file written for another URL, set or decoys, or one whose fields are not
    what this class writes, raises :class:`ResumeFileError` naming the file.

    One ``HTTPSuspect`` is meant for one thread at a time.

    Args:
        url: the ``http://`` or ``https://`` endpoint.
        batch_size: points per request.
        timeout: seconds for a whole request: connecting, sending, and reading the answer
            (a TLS handshake waits at most this long per read).
        max_retries: retries per batch after the first attempt.
        backoff: base wait in seconds before the first retry; doubles every retry.
        query_budget: most points ever sent (``None``: no cap).
        log_path: JSON-lines log file, appended to.
        resume_path: JSON resume file, created if missing.
        headers: extra request headers.
        encode: ``encode(batch) -> bytes``, the request body (default :func:`json_encode`).
        decode: ``decode(body) -> array``, labels ``(n,)`` or logits ``(n, C)`` (default
            :func:`json_decode`); it signals an unusable body with ``ValueError``,
            ``TypeError`` or ``LookupError``.
        seed: seed of the jitter.
        max_wait: longest single wait in seconds; a ``Retry-After`` asking for more raises.
        max_response_bytes: the longest answer body read, in bytes (default 64 MiB).

    Attributes:
        points_sent: points sent over every attempt (and earlier runs on the resume file).
        requests_sent: HTTP requests made by this object.

    Raises:
        ValueError: a URL that is not ``http(s)://`` with a host; credentials both in the URL
            and in an ``Authorization`` header; a header with a bad name or value; a
            ``batch_size``, ``timeout`` or ``max_response_bytes`` that is not > 0; a
            ``max_retries``, ``backoff``, ``max_wait`` or ``query_budget`` that is not a finite
            number >= 0 (ints for the counts).
        ResumeFileError: a resume file that cannot be read, is not one, has invalid fields,
            or was written for another URL.

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
                 decode: Decode = json_decode, seed: int = 0, max_wait: float = 60.0,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES):
        self._endpoint = _Endpoint.parse(url)
        for name, value, least in (("batch_size", batch_size, 1), ("max_retries", max_retries, 0),
                                   ("max_response_bytes", max_response_bytes, 1)):
            if not (_is_int(value) and value >= least):
                raise ValueError(f"{name} must be an int {'> 0' if least else '>= 0'}, got "
                                 f"{value!r}")
        for name, value in (("timeout", timeout), ("backoff", backoff), ("max_wait", max_wait)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        if query_budget is not None and not (_is_int(query_budget) and query_budget >= 0):
            raise ValueError(f"query_budget must be an int >= 0 or None, got {query_budget!r}")
        self.url = url
        self.batch_size = batch_size
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.max_wait = float(max_wait)
        self.max_response_bytes = max_response_bytes
        self.query_budget = query_budget
        self.log_path = None if log_path is None else os.fspath(log_path)
        self.resume_path = None if resume_path is None else os.fspath(resume_path)
        self.headers = _request_headers(headers, self._endpoint.authorization)
        self.encode = encode
        self.decode = decode
        self._rng = random.Random(seed)
        self._opener = _opener()
        self._batch_index = 0
        #: points sent, over every attempt (and earlier runs on the resume file)
        self.points_sent = 0
        #: HTTP requests made by this object
        self.requests_sent = 0
        self._answers: dict[str, dict[str, Any]] = {}
        self._context: dict[str, str] | None = None  # sha256 of each entry given to bind()
        if self.resume_path is not None and os.path.exists(self.resume_path):
            self._load_resume()

    # -- binding to a run --------------------------------------------------------------------

    def bind(self, context: Mapping[str, Any], *, num_classes: int | None = None) -> None:
        """Ties this suspect, and its resume file, to one run: what it is about to query.

        :func:`~ipguard_jax.verify`, :func:`~ipguard_jax.matching_rate` and
        :func:`~ipguard_jax.query_labels` call it before querying, with ``{"fingerprints":
        <sha256 of the points and labels>, "decoys": <the decoy settings, or None>}``. The
        resume file keeps a sha256 of each entry (never the entries); a file bound to another
        context is refused, so answers and budgets of different runs never mix. A file not
        bound yet (written by direct calls) is bound now. Without ``resume_path`` the context
        is only remembered.

        Args:
            context: JSON-able values that name the run.
            num_classes: the classes of the fingerprints' owner (``None``: unknown); the
                answers in the resume file must fit them.

        Raises:
            TypeError: a context that is not a mapping of JSON-able values.
            ResumeFileError: the resume file was written for another context, or holds
                answers that do not fit ``num_classes``.

        Example:
            >>> from ipguard_jax import HTTPSuspect
            >>> suspect = HTTPSuspect("http://127.0.0.1:8000/predict")
            >>> suspect.bind({"fingerprints": "0" * 64, "decoys": None}, num_classes=10)
        """
        if not isinstance(context, Mapping):
            raise TypeError(f"context must be a mapping, got {type(context).__name__}")
        hashed = {str(name): _json_sha256(value) for name, value in context.items()}
        if self.resume_path is None:
            self._context = hashed
            return
        if self._context is not None and self._context != hashed:
            differ = sorted(name for name in self._context.keys() | hashed.keys()
                            if self._context.get(name) != hashed.get(name))
            raise self._resume_error(
                f"belongs to another run: it was written for other {' and '.join(differ)}",
                advice=True)
        if num_classes is not None:
            self._check_classes(num_classes)
        if self._context is None:
            self._context = hashed
            self._save_resume()

    def _check_classes(self, num_classes: int) -> None:
        for key, answer in self._answers.items():
            values = _answer_array(answer)
            if values.ndim == 2 and values.shape[1] != num_classes:
                problem = f"{values.shape[1]} logits per point"
            elif values.ndim == 1 and values.max() >= num_classes:
                problem = f"labels >= {num_classes}"
            else:
                continue
            raise self._resume_error(
                f"answers batch {key} with {problem}, for fingerprints of {num_classes} classes: "
                f"it belongs to another run", advice=True)

    # -- resume file -------------------------------------------------------------------------

    def _resume_error(self, problem: str, advice: bool = False) -> ResumeFileError:
        hint = "; delete it or pass another resume_path" if advice else ""
        return ResumeFileError(f"the resume file {self.resume_path} {problem}{hint}")

    def _load_resume(self) -> None:
        try:
            with open(self.resume_path, encoding="utf-8") as f:
                state = json.load(f)
        except RecursionError:
            raise self._resume_error("is nested too deeply to read") from None
        except (OSError, ValueError) as e:
            raise ResumeFileError(f"cannot read the resume file {self.resume_path}: {e}") from e
        if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
            raise ResumeFileError(f"{self.resume_path} is not an HTTPSuspect resume file")
        if state.get("version") != RESUME_VERSION:
            raise self._resume_error(
                f"has format version {_describe(state.get('version'))}, this version of "
                f"ipguard_jax reads version {RESUME_VERSION}", advice=True)
        if state.get("url_sha256") != self._endpoint.sha256:
            raise self._resume_error(
                f"belongs to another run: it was written for another URL than "
                f"{self._endpoint.display}", advice=True)
        context = state.get("context")
        if context is not None and not (isinstance(context, dict) and all(
                isinstance(name, str) and _is_sha256(value) for name, value in context.items())):
            raise self._resume_error("has an invalid field 'context': expected null or an "
                                     "object of sha256 hex digests")
        points_sent = state.get("points_sent")
        if not (_is_int(points_sent) and points_sent >= 0):
            raise self._resume_error(f"has an invalid field 'points_sent': expected an int "
                                     f">= 0, got {_describe(points_sent)}")
        answers = state.get("answers")
        if not isinstance(answers, dict):
            raise self._resume_error(f"has an invalid field 'answers': expected an object, got "
                                     f"{_describe(answers)}")
        for key, answer in answers.items():
            if not _is_sha256(key):
                raise self._resume_error("has an invalid field 'answers': a key that is not a "
                                         "batch sha256 (64 lowercase hex digits)")
            problem = _stored_answer_problem(answer)
            if problem is not None:
                raise self._resume_error(f"has an invalid field 'answers[\"{key}\"]': {problem}")
        answered = sum(len(next(iter(answer.values()))) for answer in answers.values())
        if points_sent < answered:
            raise self._resume_error(
                f"has an invalid field 'points_sent': {points_sent} points sent but "
                f"{answered} answered; it is damaged or edited", advice=True)
        self._answers = answers
        self._context = context
        self.points_sent = points_sent

    def _save_resume(self) -> None:
        if self.resume_path is None:
            return
        state = {"format": RESUME_FORMAT, "version": RESUME_VERSION,
                 "endpoint": self._endpoint.display, "url_sha256": self._endpoint.sha256,
                 "context": self._context, "points_sent": self.points_sent,
                 "answers": self._answers}
        folder = os.path.dirname(os.path.abspath(self.resume_path))
        tmp = os.path.join(folder, f".resume-{uuid.uuid4().hex}.tmp")
        # atomic: a crash leaves the old file or the new; private (mode 0600), as it always was
        with atomic_open(self.resume_path, "w", tmp=tmp, private=True, encoding="utf-8") as f:
            json.dump(state, f, separators=(",", ":"), allow_nan=False)

    def _resumed(self, key: str, n: int) -> np.ndarray:
        """The stored answer to batch ``key`` of ``n`` points."""
        answer = _answer_array(self._answers[key])
        if answer.shape[0] != n:
            raise self._resume_error(
                f"answers batch {key} with {answer.shape[0]} values for {n} points; it is "
                f"damaged or edited", advice=True)
        return answer

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
                    f"{self._endpoint.display} asks to retry after {retry_after:.0f} s, more "
                    f"than max_wait={self.max_wait:.0f} s", status=429)
            delay = max(delay, retry_after)
        return min(delay, self.max_wait)

    def _post(self, body: bytes) -> tuple[int, bytes, Any]:
        """One request within ``timeout`` seconds: ``(status, body, headers)``.

        A refusal's body is cut to its first few KiB. Raises ``OSError``/``HTTPException``
        when no complete response came (retried) and :class:`_TooLarge` for a 200 answer
        over ``max_response_bytes``.
        """
        request = urllib.request.Request(self._endpoint.request_url, data=body,
                                         headers=self.headers, method="POST")
        self.requests_sent += 1
        try:
            response = self._opener.open(request, timeout=self.timeout)
        except urllib.error.HTTPError as e:  # any status but 2xx, 3xx included
            with e:  # closes the error's connection
                try:
                    error_body = e.read(_ERROR_BODY_BYTES)
                except (OSError, http.client.HTTPException):
                    error_body = b""
                return e.code, error_body, e.headers
        with response:
            return response.status, _read_body(response, self.max_response_bytes), \
                response.headers

    def _spend(self, n: int, log: Callable[..., None], index: int) -> None:
        """Counts ``n`` points against the budget, and saves the count, before they are sent."""
        if self.query_budget is not None and self.points_sent + n > self.query_budget:
            log(status="budget_exceeded", points_sent=self.points_sent)
            raise QueryBudgetExceeded(
                f"sending batch {index} ({n} points) would exceed the query budget: "
                f"{self.points_sent} of {self.query_budget} points already sent"
            )
        # Counted, and saved, before sending: a request that fails may still have reached the
        # model, and a crash mid-request must not let a rerun overspend.
        self.points_sent += n
        self._save_resume()

    def _decode(self, body: bytes, n: int) -> dict[str, Any]:
        """The checked answer in ``body``; a ValueError whose message holds no server text."""
        try:
            return self._check_answer(self.decode(body), n)
        except RecursionError:
            raise ValueError("the answer is nested too deeply to decode") from None
        except (ValueError, TypeError, LookupError) as e:
            raise ValueError(_mask(f"{type(e).__name__}: {e}")) from None

    def _query_batch(self, batch: np.ndarray) -> np.ndarray:
        index = self._batch_index
        self._batch_index += 1
        key = batch_sha256(batch)
        n = int(batch.shape[0])
        where = f"{self._endpoint.display} answered batch {index}"
        if key in self._answers:
            answer = self._resumed(key, n)
            self._log(batch=index, sha256=key, points=n, status="resumed",
                      labels=_labels_for_log(answer))
            return answer
        body = self.encode(batch)
        last_status: int | None = None
        last_error = ""
        for attempt in range(self.max_retries + 1):
            log = functools.partial(self._log, batch=index, sha256=key, points=n, attempt=attempt)
            self._spend(n, log, index)
            start = time.monotonic()
            retry_after = None
            try:
                status, answer_body, headers = self._post(body)
            except _TooLarge as e:
                log(status=200, elapsed_s=_since(start), error="answer too large")
                raise SuspectQueryError(f"{where} {e}", status=200) from None
            except (OSError, http.client.HTTPException) as e:  # no response: retry
                status, answer_body = None, b""
                last_error = _mask(f"{type(e).__name__}: {e}")
                log_status: Any = "timeout" if _is_timeout(e) else f"error: {type(e).__name__}"
            else:
                log_status = status
                retry_after = (_retry_after_seconds(headers.get("Retry-After"))
                               if status == 429 and headers is not None else None)
            elapsed = _since(start)
            last_status = status
            if status == 200:
                try:
                    answer = self._decode(answer_body, n)
                except ValueError as e:
                    log(status=200, elapsed_s=elapsed, error="undecodable answer")
                    raise SuspectQueryError(
                        f"{where} with 200 but an unusable body ({e}): "
                        f"{_snippet(answer_body)!r}", status=200, body=_snippet(answer_body)
                    ) from None
                self._answers[key] = answer
                self._save_resume()
                values = _answer_array(answer)
                log(status=200, elapsed_s=elapsed, labels=_labels_for_log(values))
                return values
            if status is not None and 300 <= status < 400:
                log(status=status, elapsed_s=elapsed)
                raise SuspectQueryError(
                    f"{where} with HTTP {status}, a redirect to "
                    f"{_redirect_target(self._endpoint.request_url, headers)}: HTTPSuspect "
                    f"follows no redirects (they would carry the points and headers elsewhere); "
                    f"give the final URL", status=status, body=_snippet(answer_body))
            if status is not None and not (status == 429 or 500 <= status < 600):
                log(status=status, elapsed_s=elapsed)
                raise SuspectQueryError(
                    f"{self._endpoint.display} refused batch {index} with HTTP {status}: "
                    f"{_snippet(answer_body)!r}", status=status, body=_snippet(answer_body)
                )
            if status is not None:
                last_error = f"HTTP {status}: {_snippet(answer_body)!r}"
            if attempt == self.max_retries:
                log(status=log_status, elapsed_s=elapsed)
                break
            wait = self._wait(attempt, retry_after)
            log(status=log_status, elapsed_s=elapsed, retry_in_s=round(wait, 4))
            time.sleep(wait)
        raise SuspectQueryError(
            f"{self._endpoint.display} failed batch {index} {self.max_retries + 1} times; "
            f"last: {last_error}", status=last_status, body=last_error[:200],
        )

    @staticmethod
    def _check_answer(output: Any, n: int) -> dict[str, Any]:
        output = np.asarray(output)
        if output.shape[:1] != (n,) or output.ndim not in (1, 2):
            raise ValueError(f"expected {n} labels or {n} rows of logits, got shape {output.shape}")
        if output.ndim == 1:
            if not np.issubdtype(output.dtype, np.integer):
                raise ValueError(f"labels must be integers, got dtype {output.dtype}")
            if (output < 0).any():
                raise ValueError("labels must be >= 0")
            return {"labels": output.astype(np.int64).tolist()}
        if output.shape[1] == 0 or not _is_real_dtype(output.dtype):
            raise ValueError(f"logits must be numbers, one or more per point, got dtype "
                             f"{output.dtype} and shape {output.shape}")
        logits = output.astype(np.float64)
        if not np.isfinite(logits).all():
            raise ValueError("logits must be finite, the answer holds NaN or infinity")
        return {"logits": logits.tolist()}

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
            SuspectQueryError: a refused request (a status other than 200, 429 or 5xx; a
                redirect), an unusable answer (undecodable, too large, too deep, non-finite),
                or a batch that failed ``max_retries + 1`` times.
            ResumeFileError: the resume file's answer to a batch has the wrong length.
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
        return (f"HTTPSuspect({self._endpoint.display!r}, batch_size={self.batch_size}, "
                f"points_sent={self.points_sent}, query_budget={self.query_budget})")


# -- transport: no redirects, one deadline per request, bounded bodies ---------------------------

class _TooLarge(Exception):
    """A 200 answer longer than ``max_response_bytes``; its message reads after "answered"."""

    def __init__(self, limit: int):
        super().__init__(f"with a body longer than max_response_bytes={limit}; pass a larger "
                         f"max_response_bytes to HTTPSuspect if the API's answers really are "
                         f"this long")


class _DeadlineSocket:
    """A connected socket (plain or TLS) whose every send and receive ends by ``deadline``.

    Before each call the socket's timeout is set to the time left, so a peer that trickles
    bytes cannot stretch a request past its deadline. ``makefile`` gives a reader that goes
    through the same checks; the socket closes once it and its readers are closed (like
    ``socket.socket``).
    """

    def __init__(self, sock: Any, deadline: float):
        self._sock = sock
        self._deadline = deadline
        self._readers = 0
        self._closed = False

    def _arm(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out: the request took longer than its timeout")
        self._sock.settimeout(left)

    def sendall(self, data: Any, *args: Any) -> None:
        self._arm()
        self._sock.sendall(data, *args)

    def recv_into(self, buffer: Any, *args: Any) -> int:
        self._arm()
        return self._sock.recv_into(buffer, *args)

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        if mode != "rb":
            raise ValueError(f"_DeadlineSocket.makefile supports mode 'rb' only, got {mode!r}")
        self._readers += 1
        return io.BufferedReader(_DeadlineReader(self))

    def close(self) -> None:
        self._closed = True
        self._release()

    def _reader_closed(self) -> None:
        self._readers -= 1
        self._release()

    def _release(self) -> None:
        if self._closed and self._readers <= 0:
            self._sock.close()

    def __getattr__(self, name: str) -> Any:  # fileno, setsockopt, getpeername, ...
        return getattr(self._sock, name)


class _DeadlineReader(io.RawIOBase):
    """The raw stream of :meth:`_DeadlineSocket.makefile`."""

    def __init__(self, sock: _DeadlineSocket):
        super().__init__()
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._sock.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._sock._reader_closed()


class _DeadlineConnection:
    """Mixin for ``http.client`` connections: everything ends ``timeout`` s after creation.

    ``urllib`` creates the connection at the start of each request, so the deadline covers
    connecting (and a proxy tunnel), sending, and reading the status, headers and body. A TLS
    handshake waits at most the time left per read.
    """

    def __init__(self, *args: Any, timeout: float, **kwargs: Any):
        super().__init__(*args, timeout=timeout, **kwargs)
        self._deadline = time.monotonic() + timeout

    def connect(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out: the request took longer than its timeout")
        self.timeout = left
        super().connect()
        self.sock = _DeadlineSocket(self.sock, self._deadline)


class _DeadlineHTTPConnection(_DeadlineConnection, http.client.HTTPConnection):
    pass


class _DeadlineHTTPSConnection(_DeadlineConnection, http.client.HTTPSConnection):
    pass


class _DeadlineHandler(urllib.request.AbstractHTTPHandler):
    """``http://`` and ``https://`` through the deadline connections."""

    @functools.cached_property
    def _tls(self) -> ssl.SSLContext:
        return ssl.create_default_context()

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_DeadlineHTTPConnection, req)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_DeadlineHTTPSConnection, req, context=self._tls)

    http_request = https_request = urllib.request.AbstractHTTPHandler.do_request_


def _opener() -> urllib.request.OpenerDirector:
    """An opener with proxies from the environment and no redirect handler: any status but
    2xx, 3xx included, comes back as an ``HTTPError`` and nothing is sent to another host."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), _DeadlineHandler(),
                    urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def _request_headers(headers: Mapping[str, str] | None,
                     authorization: str | None) -> dict[str, str]:
    """The request headers, checked here so that ``http.client`` never echoes a bad value."""
    out = {"Content-Type": "application/json", **dict(headers or {})}
    for name, value in out.items():
        if not (isinstance(name, str) and _HEADER_NAME.fullmatch(name)):
            raise ValueError(f"header names must be HTTP tokens, got {_describe(name)}")
        if not isinstance(value, str) or re.search(r"[\r\n\0]", value) or not value.isascii():
            raise ValueError(f"header {name} must be a str of printable ASCII on one line")
    if authorization is not None:
        if any(name.lower() == "authorization" for name in out):
            raise ValueError("give credentials either in the url or in an Authorization "
                             "header, not both")
        out["Authorization"] = authorization
    return out


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _read_body(response: Any, limit: int) -> bytes:
    """A response body of at most ``limit`` bytes; :class:`_TooLarge` past it (at once when
    ``Content-Length`` says so)."""
    try:
        declared = int(response.headers.get("Content-Length"))
    except (TypeError, ValueError):
        declared = None
    if declared is not None and declared > limit:
        raise _TooLarge(limit)
    chunks, size = [], 0
    while size <= limit:
        chunk = response.read(min(_CHUNK, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise _TooLarge(limit)
    return b"".join(chunks)


def _redirect_target(base: str, headers: Any) -> str:
    """The host a redirect points to, for messages: never its path, query or credentials."""
    location = headers.get("Location") if headers is not None else None
    if not location:
        return "nowhere (no Location header)"
    try:
        host = urllib.parse.urlsplit(urllib.parse.urljoin(base, location)).hostname
    except ValueError:
        host = None
    if not host:
        return "an unreadable location"
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return _mask(host)  # a name may carry an echo of the points, like any server text


def _is_timeout(error: BaseException) -> bool:
    return isinstance(error, TimeoutError) or isinstance(getattr(error, "reason", None),
                                                          TimeoutError)


def _since(start: float) -> float:
    return round(time.monotonic() - start, 4)


# -- server text -------------------------------------------------------------------------------

# Decimal numbers in an answer body: an API's error message may echo the query, and the points
# must not reach exception messages or logs.
_DECIMAL = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+(?=[eE]))(?:[eE][-+]?\d+)?")


def _mask(text: str) -> str:
    """Text that came from the server, for messages: decimal numbers replaced by ``<num>``,
    cut to 200 characters."""
    return _DECIMAL.sub("<num>", text[:4000])[:200]


def _snippet(body: bytes) -> str:
    """The start of an answer body for messages, masked (see :func:`_mask`)."""
    return _mask(body[:4000].decode("utf-8", errors="replace"))


# A JSON string literal, or an unterminated one running to the end: possessive, so the scan
# is linear whatever the text.
_JSON_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))


def _json_depth(text: bytes) -> int:
    """The deepest nesting of arrays and objects in JSON text (brackets in strings skipped),
    in linear time without parsing."""
    brackets = np.frombuffer(_JSON_STRING.sub(b"", text).translate(None, _NOT_BRACKETS),
                             np.uint8)
    depth = deepest = 0
    for start in range(0, len(brackets), _CHUNK):
        chunk = brackets[start:start + _CHUNK]
        running = depth + np.cumsum(np.where((chunk == ord("[")) | (chunk == ord("{")), 1, -1))
        deepest = max(deepest, int(running.max()))
        depth = int(running[-1])
    return deepest


# -- values ------------------------------------------------------------------------------------

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real_dtype(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.number) and not np.issubdtype(dtype, np.complexfloating)


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None


def _describe(value: Any) -> str:
    """A JSON value for messages: ints and null as they are, anything else by its type."""
    if value is None or isinstance(value, bool) or _is_int(value):
        return json.dumps(value)
    names = {str: "a string", float: "a float", list: "a list", dict: "an object"}
    return names.get(type(value), f"a {type(value).__name__}")


def _json_sha256(value: Any) -> str:
    """sha256 of ``value`` as canonical JSON (sorted keys, compact)."""
    try:
        data = canonical_json(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"a context value must be JSON-able: {e}") from None
    return sha256_hex(data)


def _stored_answer_problem(answer: Any) -> str | None:
    """What is wrong with one answer read from a resume file (``None``: nothing)."""
    if not (isinstance(answer, dict) and len(answer) == 1
            and answer.keys() <= {"labels", "logits"}):
        return 'expected {"labels": [...]} or {"logits": [[...], ...]}'
    (kind, values), = answer.items()
    if not (isinstance(values, list) and values):
        return f"{kind} must be a non-empty list, got {_describe(values)}"
    if kind == "labels":
        bad = next((v for v in values if not (_is_int(v) and v >= 0)), None)
        return None if bad is None else f"labels must be ints >= 0, got {_describe(bad)}"
    if not (all(isinstance(row, list) for row in values) and values[0]
            and len({len(row) for row in values}) == 1):
        return "logits must be a list of rows of the same, non-zero length"
    for row in values:
        for v in row:
            if not (_is_int(v) or isinstance(v, float) and math.isfinite(v)):
                found = "a non-finite float" if isinstance(v, float) else _describe(v)
                return f"logits must be finite numbers, got {found}"
    return None


def _answer_array(answer: Mapping[str, Any]) -> np.ndarray:
    if "labels" in answer:
        return np.asarray(answer["labels"], dtype=np.int64)
    return np.asarray(answer["logits"], dtype=np.float64)


def _labels_for_log(values: np.ndarray) -> list[int]:
    return (values.argmax(axis=1) if values.ndim == 2 else values).tolist()
