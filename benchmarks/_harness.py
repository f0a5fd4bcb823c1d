"""What every benchmark script shares: timing, the machine it ran on, and its result files.

A script builds a result dict that starts with the command that produced it, times its
workloads with :func:`measure` (one function) or :func:`alternate` (several, in alternating
rounds), records :func:`environment` (and, on a shared machine, :func:`other_load`), and
writes ``<name>.json`` (and ``<name>.md``) with :func:`write_results`; :func:`table` formats
Markdown tables.

Timing conventions, the same in every script: every timed call is followed by
``jax.block_until_ready`` on its result; the first call of a function (tracing, compiling, the
first run) is timed apart from the repeated ones; the repeated ones are summarised by their
median and spread. Nothing here reaches into the library: it imports only public names, and
imports JAX and ``ipguard_jax`` lazily, so a script may set JAX up (or tune ``malloc``) before
JAX starts.

Scripts import it with their own folder on ``sys.path`` (running ``python benchmarks/x.py``
puts it there; a script loaded by path, as the tests do, adds it)::

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _harness as harness

Example:
    >>> import tempfile
    >>> timing = measure(lambda: sum(range(1000)), reps=3)
    >>> len(timing.times_s), timing.first_s > 0, timing.result
    (3, True, 499500)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     result = {"command": command("benchmarks/toy.py", ["--reps", "3"]),
    ...               "median_s": timing.median_s}
    ...     paths = write_results(Path(tmp) / "toy", result, "\\n".join(
    ...         ["# Toy", "", *table(["reps", "median s"], [[3, f"{timing.median_s:.4f}"]])]))
    ...     sorted(p.name for p in Path(tmp).iterdir()), result["command"]
    (['toy.json', 'toy.md'], 'python benchmarks/toy.py --reps 3')
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: Where result files live (``benchmarks/results``); scripts write elsewhere with ``--out``.
RESULTS = ROOT / "benchmarks" / "results"


# --- the command line ---------------------------------------------------------------------------


def command(script: str | os.PathLike, argv: Sequence[str] | None = None) -> str:
    """The command that reruns this benchmark, as it is recorded in its results.

    Args:
        script: the script's path (``__file__``); only its name is kept.
        argv: its arguments; default ``sys.argv[1:]``.

    Returns:
        ``"python benchmarks/<name>.py <arguments>"``, arguments quoted for a POSIX shell.

    Example:
        >>> command("/anywhere/benchmarks/scale.py", ["--points", "100", "--out", "/tmp/a b"])
        "python benchmarks/scale.py --points 100 --out '/tmp/a b'"
        >>> command("benchmarks/scale.py", [])
        'python benchmarks/scale.py'
    """
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["python", f"benchmarks/{Path(script).name}", *args])


# --- the machine --------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def load_average() -> float:
    """The 1-minute load average, rounded to 2 digits (other jobs on a shared machine).

    Example:
        >>> load_average() >= 0
        True
    """
    return round(os.getloadavg()[0], 2)


def _system_busy_s() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux ``/proc/stat``), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    """CPU seconds this process has used (user and system)."""
    times = os.times()
    return times.user + times.system


def other_load(min_wall_s: float = 1.0) -> Callable[[], float | None]:
    """Starts measuring how many cores other processes keep busy (a shared machine).

    Reads the machine's busy time (Linux ``/proc/stat``) less this process's own CPU time,
    now and when the returned function is called.

    Args:
        min_wall_s: shorter measurements read as ``None`` (too coarse to tell).

    Returns:
        A function giving the cores other processes kept busy on average since the start,
        rounded to 2 digits, or ``None`` off Linux or before ``min_wall_s``.

    Example:
        >>> read = other_load()
        >>> read() is None  # less than a second: too short to tell
        True
    """
    wall0, busy0, own0 = time.perf_counter(), _system_busy_s(), _own_cpu_s()

    def read() -> float | None:
        wall, busy1 = time.perf_counter() - wall0, _system_busy_s()
        if busy0 is None or busy1 is None or wall < min_wall_s:
            return None
        return round(max(0.0, (busy1 - busy0) - (_own_cpu_s() - own0)) / wall, 2)

    return read


def environment(*, rename: Mapping[str, str] | None = None, omit: Iterable[str] = (),
                **extra: Any) -> dict[str, Any]:
    """The software and machine a benchmark ran on.

    Imports JAX and starts its backend (to list the devices): call it after any JAX set-up.

    Args:
        rename: ``{key: name}`` to record a key under another name (the result files of some
            scripts used ``cpu_count`` for ``cpus``).
        omit: keys to leave out (e.g. ``devices`` in a parent process whose children set up
            their own).
        **extra: more entries (other libraries' versions, settings), added last.

    Returns:
        ``python``, ``jax``, ``jaxlib``, ``ipguard_jax`` (versions), ``backend``, ``devices``,
        ``cpus`` (``os.cpu_count()``), ``cpu`` (model name), ``machine``
        (``platform.machine()``), ``platform`` (``platform.platform()``), ``malloc`` (the
        allocator this process runs on: ``glibc``, ``tcmalloc`` or ``jemalloc``), then
        ``extra``.

    Example:
        >>> env = environment(rename={"cpus": "cpu_count"}, omit=["platform"], torch=None)
        >>> list(env)  # doctest: +NORMALIZE_WHITESPACE
        ['python', 'jax', 'jaxlib', 'ipguard_jax', 'backend', 'devices', 'cpu_count', 'cpu',
         'machine', 'malloc', 'torch']
    """
    import jax

    import ipguard_jax
    from ipguard_jax.train import malloc_in_use

    env = {"python": platform.python_version(), "jax": jax.__version__,
           "jaxlib": _version("jaxlib"), "ipguard_jax": ipguard_jax.__version__,
           "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
           "cpus": os.cpu_count(), "cpu": _cpu_model(), "machine": platform.machine(),
           "platform": platform.platform(), "malloc": malloc_in_use()}
    rename, omit = rename or {}, set(omit)
    unknown = (set(rename) | omit) - set(env)
    if unknown:
        raise KeyError(f"no environment entries {sorted(unknown)}; there are {list(env)}")
    env = {rename.get(k, k): v for k, v in env.items() if k not in omit}
    return {**env, **extra}


def describe(env: Mapping[str, Any]) -> str:
    """One line for a report: CPU, cores, backend and versions, from :func:`environment`.

    Entries that are missing (older result files recorded fewer) are left out.

    Example:
        >>> describe({"cpu": "Xeon", "cpus": 2, "machine": "x86_64", "backend": "cpu",
        ...           "jax": "0.10.2", "python": "3.11.7", "malloc": "glibc"})
        'Xeon x2 (x86_64), cpu backend, jax 0.10.2, python 3.11.7, malloc glibc'
        >>> describe({"cpus": 2, "jax": "0.10.2"})
        '2 CPUs, jax 0.10.2'
    """
    cores = env.get("cpus", env.get("cpu_count"))
    cpu = f"{env['cpu']} x{cores}" if env.get("cpu") else f"{cores} CPUs"
    parts = [cpu + (f" ({env['machine']})" if env.get("machine") else "")]
    if env.get("backend"):
        parts.append(f"{env['backend']} backend")
    parts += [f"{name} {env[name]}" for name in ("jax", "torch", "python", "malloc")
              if env.get(name) is not None]
    return ", ".join(parts)


# --- timing -------------------------------------------------------------------------------------


def clock(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds of one call of ``fn``, waiting for its result with ``jax.block_until_ready``.

    Results that hold no JAX arrays (numpy, torch, Python objects) are returned as they are.

    Returns:
        ``(seconds, result)``.

    Example:
        >>> import jax.numpy as jnp
        >>> seconds, y = clock(lambda: jnp.ones(3) * 2)
        >>> seconds > 0, y.tolist()
        (True, [2.0, 2.0, 2.0])
    """
    import jax

    start = time.perf_counter()
    result = jax.block_until_ready(fn())
    return time.perf_counter() - start, result


@dataclasses.dataclass
class Timing:
    """The timed calls of one function.

    Attributes:
        times_s: seconds of each repeated call (divided by ``per_call``, see :func:`measure`).
        first_s: seconds of the first call (tracing, compilation and one run), ``None`` if it
            was not timed here.
        result: what the last call returned.

    Example:
        >>> t = Timing([0.5, 0.25, 0.75], first_s=2.0)
        >>> t.median_s, t.spread_s, t.compile_s
        (0.5, 0.5, 1.5)
        >>> t.to_dict(digits=2)  # doctest: +NORMALIZE_WHITESPACE
        {'first_call_s': 2.0, 'compile_s': 1.5, 'median_s': 0.5, 'min_s': 0.25, 'max_s': 0.75,
         'spread_s': 0.5, 'times_s': [0.5, 0.25, 0.75]}
    """

    times_s: list[float]
    first_s: float | None = None
    result: Any = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def median_s(self) -> float:
        return float(statistics.median(self.times_s))

    @property
    def min_s(self) -> float:
        return float(min(self.times_s))

    @property
    def max_s(self) -> float:
        return float(max(self.times_s))

    @property
    def spread_s(self) -> float:
        """Largest minus smallest repeated time."""
        return self.max_s - self.min_s

    @property
    def compile_s(self) -> float | None:
        """First call less the median one: about the time to trace and compile (noisy when it
        is small, and then may be slightly negative)."""
        return None if self.first_s is None else self.first_s - self.median_s

    def to_dict(self, digits: int = 4) -> dict[str, Any]:
        """The numbers, rounded to ``digits``, for a JSON result."""
        def r(value):
            return None if value is None else round(value, digits)

        return {"first_call_s": r(self.first_s), "compile_s": r(self.compile_s),
                "median_s": r(self.median_s), "min_s": r(self.min_s), "max_s": r(self.max_s),
                "spread_s": r(self.spread_s), "times_s": [r(t) for t in self.times_s]}


def measure(fn: Callable[[], Any], reps: int = 3, *, first_call: bool = True, warmup: int = 0,
            per_call: float = 1) -> Timing:
    """Times ``reps`` calls of ``fn``, its first call apart.

    Args:
        fn: the work, called without arguments; its result is waited for
            (``jax.block_until_ready``).
        reps: timed calls.
        first_call: time the first call apart (``Timing.first_s``). ``False`` when the caller
            already ran it (compiled with other arguments, or inside a context it needs).
        warmup: untimed calls after the first one (e.g. while the heap grows).
        per_call: divide each time by this (steps per call, images per call...).

    Returns:
        A :class:`Timing`.

    Example:
        >>> t = measure(lambda: time.sleep(0.01), reps=2, warmup=1, per_call=10)
        >>> len(t.times_s), 0.001 <= t.median_s < 0.01 <= t.first_s
        (2, True)
    """
    if reps < 1 or warmup < 0:
        raise ValueError(f"need reps >= 1 and warmup >= 0, got {reps} and {warmup}")
    first_s = result = None
    if first_call:
        first_s, result = clock(fn)
    for _ in range(warmup):
        result = clock(fn)[1]
    times = []
    for _ in range(reps):
        seconds, result = clock(fn)
        times.append(seconds / per_call)
    return Timing(times, first_s, result)


def alternate(fns: Mapping[str, Callable[[], Any]], reps: int, *, rotate: bool = True,
              first_call: bool = True, per_call: float = 1) -> dict[str, Timing]:
    """Times several functions in alternating rounds, so that they all see the same machine.

    First each function's first call, in order (unless ``first_call`` is False); then ``reps``
    rounds, each calling every function once. With ``rotate`` the order turns by one per
    round (round ``r`` starts at the ``r``-th function), so none always runs first.

    Args:
        fns: ``name -> function``, called without arguments.
        reps: rounds.
        rotate: rotate the order every round.
        first_call: time each first call apart (``Timing.first_s``).
        per_call: divide each time by this.

    Returns:
        ``name -> Timing``, in the order of ``fns``.

    Example:
        >>> order = []
        >>> timings = alternate({"a": lambda: order.append("a"), "b": lambda: order.append("b"),
        ...                      "c": lambda: order.append("c")}, reps=2)
        >>> "".join(order), [len(t.times_s) for t in timings.values()]
        ('abcabcbca', [2, 2, 2])
    """
    if reps < 1:
        raise ValueError(f"need reps >= 1, got {reps}")
    names = list(fns)
    first = {name: clock(fns[name]) if first_call else (None, None) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    results = {name: first[name][1] for name in names}
    for r in range(reps):
        shift = r % len(names) if rotate else 0
        for name in names[shift:] + names[:shift]:
            seconds, results[name] = clock(fns[name])
            times[name].append(seconds / per_call)
    return {name: Timing(times[name], first[name][0], results[name]) for name in names}


# --- result files -------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays, and paths, for :func:`json.dumps`."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable: {value!r}")


def write_results(path: str | os.PathLike, result: Mapping[str, Any],
                  markdown: str | None = None) -> list[Path]:
    """Writes ``result`` to ``<path>.json`` and ``markdown`` to ``<path>.md``, atomically.

    Both files are written to temporary siblings first and renamed over the targets only once
    both are complete: an error (a value JSON cannot hold, a full disk) leaves the old files as
    they were. Parent folders are created.

    Args:
        path: the files' path without suffix (a suffix is replaced, as
            :meth:`pathlib.Path.with_suffix` does: ``out/generate.json`` writes
            ``out/generate.json``).
        result: the result; must hold the ``"command"`` that produced it (:func:`command`).
            numpy scalars and arrays and paths are converted.
        markdown: the readable report; ``None`` writes the JSON file only.

    Returns:
        The paths written.

    Raises:
        ValueError: ``result`` has no ``"command"``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     written = write_results(Path(tmp, "sub", "run.json"), {"command": "python x"})
        ...     [p.relative_to(tmp).as_posix() for p in written], written[0].read_text()
        (['sub/run.json'], '{\\n  "command": "python x"\\n}\\n')
    """
    from ipguard_jax.storage.files import atomic_path

    if "command" not in result:
        raise ValueError("a result must record the command that produced it: "
                         "{'command': harness.command(__file__, argv), ...}")
    base = Path(path).with_suffix("")
    contents = {base.with_name(base.name + ".json"):
                json.dumps(result, indent=2, default=_jsonable) + "\n"}
    if markdown is not None:
        contents[base.with_name(base.name + ".md")] = (
            markdown if markdown.endswith("\n") else markdown + "\n")
    base.parent.mkdir(parents=True, exist_ok=True)
    # Nested: every temporary file is written before the first rename.
    with contextlib.ExitStack() as stack:
        for target, text in contents.items():
            stack.enter_context(atomic_path(target)).write_text(text)
    return list(contents)


def table(header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A Markdown table as lines: the header, its rule, one line per row (cells as ``str``).

    Example:
        >>> print("\\n".join(table(["batch", "ms"], [[2, "1.50"], [4, "**0.90**"]])))
        | batch | ms |
        |---|---|
        | 2 | 1.50 |
        | 4 | **0.90** |
    """
    header = list(header)
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        row = list(row)
        if len(row) != len(header):
            raise ValueError(f"a row of {len(row)} cells under {len(header)} columns: {row}")
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return lines
