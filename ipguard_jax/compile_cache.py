"""JAX's persistent compilation cache, on by default: a second process compiles (almost) nothing.

Most users generate one fingerprint set per model, so compilation is part of their wait. On
the first :func:`ipguard_jax.generate` of a process this module points JAX's persistent
compilation cache at ``$XDG_CACHE_HOME/ipguard_jax/xla`` (``~/.cache/ipguard_jax/xla``), unless

* the process already configured one (``jax_compilation_cache_dir``: yours wins), or
* the environment variable ``IPGUARD_COMPILE_CACHE`` says otherwise: ``0`` (or ``off``) turns
  this off, a path puts the cache there.

JAX then stores every compiled program that took at least
``jax_persistent_cache_min_compile_time_secs`` (JAX's default, 1 s) to compile, keyed by a hash
of the program, the compiler version and its options, and a later process with the same
programs loads them instead of compiling. Tracing still happens; XLA's compile is what is
saved. The directory is created with mode 0700 (compiled programs are code).

Example:
    >>> import os, tempfile
    >>> from ipguard_jax import compile_cache
    >>> compile_cache.resolve_directory({"IPGUARD_COMPILE_CACHE": "off"}) is None
    True
    >>> compile_cache.resolve_directory({"IPGUARD_COMPILE_CACHE": "/tmp/xla"})
    '/tmp/xla'
    >>> compile_cache.resolve_directory({"XDG_CACHE_HOME": "/c"})
    '/c/ipguard_jax/xla'
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

import jax

__all__ = ["ENV_VAR", "resolve_directory", "enable", "ensure_enabled"]

ENV_VAR = "IPGUARD_COMPILE_CACHE"
_OFF = ("0", "off", "false", "no")
_lock = threading.Lock()
_checked = False


def resolve_directory(environ: Mapping[str, str] | None = None) -> str | None:
    """Where the cache goes by default, from the environment; ``None`` when turned off.

    Args:
        environ: the environment (default ``os.environ``).

    Returns:
        ``IPGUARD_COMPILE_CACHE`` when it is a path, ``None`` when it is ``0``/``off``,
        else ``$XDG_CACHE_HOME/ipguard_jax/xla`` (``~/.cache/ipguard_jax/xla``).
    """
    environ = os.environ if environ is None else environ
    value = environ.get(ENV_VAR, "").strip()
    if value.lower() in _OFF:
        return None
    if value and value.lower() not in ("1", "on", "true", "yes", "auto"):
        return value
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ipguard_jax", "xla")


def enable(directory: str | os.PathLike) -> str:
    """Turns JAX's persistent compilation cache on, in ``directory`` (created, mode 0700).

    Args:
        directory: the cache directory.

    Returns:
        The directory, as a string.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    return directory


def ensure_enabled() -> str | None:
    """What :func:`ipguard_jax.generate` calls: turns the cache on once per process, unless the
    process configured one or ``IPGUARD_COMPILE_CACHE`` turns it off.

    Returns:
        The cache directory in use (the process's own, if it set one), or ``None``.
    """
    global _checked
    with _lock:
        current = jax.config.jax_compilation_cache_dir
        if _checked or current:
            _checked = True
            return current or None
        _checked = True
        directory = resolve_directory()
        if directory is None:
            return None
        try:
            return enable(directory)
        except OSError:  # an unwritable home: compile as before
            return None
