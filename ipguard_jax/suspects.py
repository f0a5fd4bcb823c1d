"""Re-exports of :mod:`ipguard_jax.adapters.http` (a suspect model behind an HTTP endpoint),
kept for code that imports them from here."""

from ipguard_jax.adapters.http import DEFAULT_MAX_RESPONSE_BYTES as DEFAULT_MAX_RESPONSE_BYTES
from ipguard_jax.adapters.http import MAX_JSON_DEPTH as MAX_JSON_DEPTH
from ipguard_jax.adapters.http import RESUME_FORMAT as RESUME_FORMAT
from ipguard_jax.adapters.http import RESUME_VERSION as RESUME_VERSION
from ipguard_jax.adapters.http import HTTPSuspect as HTTPSuspect
from ipguard_jax.adapters.http import QueryBudgetExceeded as QueryBudgetExceeded
from ipguard_jax.adapters.http import ResumeFileError as ResumeFileError
from ipguard_jax.adapters.http import SuspectQueryError as SuspectQueryError
from ipguard_jax.adapters.http import batch_sha256 as batch_sha256
from ipguard_jax.adapters.http import json_decode as json_decode
from ipguard_jax.adapters.http import json_encode as json_encode
from ipguard_jax.adapters.http import redact_url as redact_url

__all__ = ["DEFAULT_MAX_RESPONSE_BYTES", "MAX_JSON_DEPTH", "RESUME_FORMAT", "RESUME_VERSION",
           "HTTPSuspect", "QueryBudgetExceeded", "ResumeFileError", "SuspectQueryError",
           "batch_sha256", "json_decode", "json_encode", "redact_url"]
