"""Training and fingerprinting speed on the CPU under each malloc: glibc's, tcmalloc, jemalloc.

XLA:CPU allocates and frees large temporary buffers on every step. glibc's malloc, as set up
by default, maps them fresh and hands them back each time, so their pages are faulted in (and
zeroed by the kernel) again and again: on a 2-core machine a ResNet-20 training step took
~240,000 minor page faults and a third or more of its CPU time was system time. A malloc that
keeps freed memory, preloaded with ``LD_PRELOAD`` or glibc's own set up to keep it, avoids
that. This script measures it: every (allocator, workload) pair runs in a fresh child
process, pairs in alternating rounds (order rotated per round), and the report gives the median
time per step with compile time apart, the child's system-time share, and the speed-up over
glibc. ``glibc-tuned`` is glibc's malloc set up with ``mallopt`` (one arena, no ``mmap``, no
trimming) before JAX starts; ``jemalloc-retain`` is jemalloc told
never to return freed pages (``MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1``).
Allocators that are not installed are skipped (Debian/Ubuntu: ``apt install
libtcmalloc-minimal4 libjemalloc2``).

Workloads (weights freshly initialised: a step's cost does not depend on their values):

* ``train-<model>``: one step of :func:`ipguard_jax.train.fit` (augmentation, forward and
  backward in train mode, SGD), batch 128;
* ``fingerprint-<model>``: one compiled block of 4 IPGuard optimisation steps
  (``engine.run_steps``, as ``generate`` runs on the CPU), batch 24.

    python benchmarks/allocator.py --models resnet20 cnn --rounds 3 --steps 5
"""

from __future__ import annotations

import argparse
import ctypes.util
import itertools
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as harness  # noqa: E402  (imports no JAX: glibc is tuned before JAX starts)

# name -> (library for ctypes.util.find_library, extra environment, set glibc's malloc up with
# _tune_glibc() first); glibc's variants preload nothing.
ALLOCATORS = {
    "glibc": (None, {}, False),
    # One arena, no mmap, no trimming, set by the process itself before JAX starts.
    "glibc-tuned": (None, {}, True),
    "tcmalloc": ("tcmalloc_minimal", {}, False),
    "jemalloc": ("jemalloc", {}, False),
    # jemalloc returns freed pages to the kernel after 10 s by default; never returning them
    # is what makes tcmalloc fast here.
    "jemalloc-retain": ("jemalloc", {"MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1"},
                        False),
}
TRAIN_BATCH = 128
FINGERPRINT_BATCH = 24
STEPS_PER_BLOCK = 4


def _tune_glibc() -> None:
    """glibc's malloc with one arena, no ``mmap`` and no trimming: freed memory stays for reuse.

    ``mallopt(M_ARENA_MAX=-8, 1)``, ``mallopt(M_MMAP_MAX=-4, 0)``,
    ``mallopt(M_TRIM_THRESHOLD=-1, 2**31 - 1)``, before JAX starts its threads (the arena
    limit reaches only threads started later).
    """
    mallopt = ctypes.CDLL("libc.so.6").mallopt
    if not all([mallopt(-8, 1), mallopt(-4, 0), mallopt(-1, 2**31 - 1)]):
        raise RuntimeError("mallopt refused a setting")


def _child(workload: str, steps: int, warmup: int) -> dict:
    """Times ``steps`` steps of ``workload`` after ``warmup`` untimed ones, in this process.

    The training step is the library's own, built and compiled as ``fit`` does it
    (:func:`ipguard_jax.train.make_optimizer`, :class:`~ipguard_jax.train.TrainState`,
    :class:`~ipguard_jax.train.TrainStep`, whose lowering is compiled here to time it apart).
    """
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from ipguard_jax import Classifier, engine, models, train

    kind, model_name = workload.split("-", 1)
    model = models.create(model_name, num_classes=10,
                          rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    rng = np.random.default_rng(0)
    if kind == "train":
        config = train.TrainConfig(epochs=1, batch_size=TRAIN_BATCH)
        n = TRAIN_BATCH * 4
        x_all = jax.device_put(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
        y_all = jax.device_put(rng.integers(0, 10, n).astype(np.int32))
        tx, _ = train.make_optimizer(config, 1000, 4)
        # fit's state: the model in train mode (BatchNorm on batch statistics); copied, since
        # steps donate it
        train_state = train.TrainState.create(model, tx).copy()
        perm, key = train.epoch_permutation(config.seed, 0, n)
        metrics = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
        step = train.TrainStep(train_state, tx, config)
        compile_s, compiled = harness.clock(
            lambda: step.lower(train_state, x_all, y_all).compile())
        state = [train_state.leaves, metrics]
        index = itertools.count()

        def run():
            state[:] = compiled(*state, x_all, y_all, perm, np.int32(next(index) % 4), key)
            return state
        images_per_step, steps_per_call = TRAIN_BATCH, 1
    else:
        clf = Classifier.from_nnx(model, input_shape=(32, 32, 3))
        optimizer = optax.adam(0.01)
        x = jnp.asarray(rng.uniform(0, 1, (FINGERPRINT_BATCH, 32, 32, 3)).astype(np.float32))
        i = jnp.asarray(rng.integers(0, 10, FINGERPRINT_BATCH))
        j = (i + 1 + jnp.asarray(rng.integers(0, 9, FINGERPRINT_BATCH))) % 10
        points = engine.init_points(optimizer, x)

        def block(params, points):
            return engine.run_steps(clf.apply_fn, params, points, i, j, k=3.0,
                                    optimizer=optimizer, num_steps=STEPS_PER_BLOCK,
                                    max_steps=10 ** 6)
        compile_s, compiled = harness.clock(
            lambda: jax.jit(block).lower(clf.params, points).compile())

        def run():
            return compiled(clf.params, points)
        images_per_step, steps_per_call = FINGERPRINT_BATCH, STEPS_PER_BLOCK
    for _ in range(warmup):  # the first steps grow the heap: first touch of its pages
        harness.clock(run)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    times = harness.measure(run, steps, first_call=False, per_call=steps_per_call).times_s
    after = resource.getrusage(resource.RUSAGE_SELF)
    user, system = after.ru_utime - usage.ru_utime, after.ru_stime - usage.ru_stime
    return {"allocator": train.malloc_in_use(), "compile_s": round(compile_s, 2),
            "step_s": [round(t, 4) for t in times], "median_step_s": float(np.median(times)),
            "images_per_step": images_per_step,
            "system_share": round(system / max(user + system, 1e-9), 3),
            "minor_faults_per_step": round((after.ru_minflt - usage.ru_minflt) / steps)}


def available_allocators(names: list[str]) -> dict[str, dict[str, str]]:
    """``name -> environment to run under`` for the named allocators installed here."""
    found = {}
    for name in names:
        library, extra, tune = ALLOCATORS[name]
        env = {**extra, "ALLOCATOR_BENCH_TUNE_GLIBC": "1" if tune else "0"}
        if library is None:
            found[name] = env
        elif (path := ctypes.util.find_library(library)) is not None:
            found[name] = {"LD_PRELOAD": path, **env}
    return found


def measure(workloads: list[str], allocators: dict[str, dict[str, str]], rounds: int,
            steps: int, warmup: int) -> dict:
    """Runs every (allocator, workload) pair ``rounds`` times in rotated order, one process each."""
    pairs = [(a, w) for w in workloads for a in allocators]
    runs: dict[str, dict[str, list[dict]]] = {w: {a: [] for a in allocators} for w in workloads}
    for r in range(rounds):
        for allocator, workload in pairs[r % len(pairs):] + pairs[:r % len(pairs)]:
            env = {k: v for k, v in os.environ.items()
                   if k not in ("LD_PRELOAD", "MALLOC_CONF", "GLIBC_TUNABLES")}
            env.update(allocators[allocator])
            proc = subprocess.run(
                [sys.executable, __file__, "--child", workload, "--steps", str(steps),
                 "--warmup", str(warmup)],
                env=env, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"{workload} under {allocator} failed:\n{proc.stderr[-2000:]}")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            if result["allocator"] != allocator.split("-")[0]:
                raise RuntimeError(f"asked for {allocator} but the child ran on "
                                   f"{result['allocator']}")
            runs[workload][allocator].append(result)
            print(f"round {r + 1}: {workload:22s} {allocator:9s} "
                  f"{1e3 * result['median_step_s']:8.1f} ms/step  "
                  f"system {100 * result['system_share']:4.1f}%", flush=True)
    return runs


def summarise(runs: dict) -> dict:
    """Medians over rounds of each pair's median step time; speed-up over glibc."""
    summary = {}
    for workload, by_allocator in runs.items():
        rows = {}
        for allocator, results in by_allocator.items():
            step = float(np.median([r["median_step_s"] for r in results]))
            rows[allocator] = {
                "median_step_s": round(step, 4),
                "per_s": round(results[0]["images_per_step"] / step, 1),
                "system_share": float(np.median([r["system_share"] for r in results])),
                "minor_faults_per_step": int(np.median([r["minor_faults_per_step"]
                                                        for r in results])),
                "compile_s": float(np.median([r["compile_s"] for r in results])),
            }
        if "glibc" in rows:
            for row in rows.values():
                row["speedup_over_glibc"] = round(
                    rows["glibc"]["median_step_s"] / row["median_step_s"], 2)
        summary[workload] = rows
    return summary


def render(result: dict) -> str:
    """The summary as Markdown, one table per workload."""
    setting = (
        f"Machine: {harness.describe(result['environment'])}. Load average at the start "
        f"{result['load_average'][0]}, at the end {result['load_average'][1]}. Each "
        f"(allocator, workload) pair ran {result['rounds']} times, each time in a fresh "
        f"process, in alternating rounds; a process times {result['steps']} steps after "
        f"{result['warmup']} untimed ones. Medians over rounds of each process's median step; "
        "compile time apart. A fingerprinting step is one of the block's 4 steps (block time / "
        "4). System share: the process's system CPU time over its user + system time while "
        "timing.")
    lines = ["# CPU speed by malloc (preloaded with LD_PRELOAD)", "",
             f"Command: `{result['command']}`", "", setting, ""]
    for workload, rows in result["summary"].items():
        unit = "images/s" if workload.startswith("train") else "point-steps/s"
        cells = [[allocator, f"{1e3 * row['median_step_s']:.0f}", f"{row['per_s']:.0f}",
                  f"{row.get('speedup_over_glibc', float('nan')):.2f}x",
                  f"{100 * row['system_share']:.0f}%", f"{row['minor_faults_per_step']:,}",
                  row["compile_s"]] for allocator, row in rows.items()]
        lines += [f"## {workload}", "", *harness.table(
            ["malloc", "ms per step", unit, "speed-up over glibc", "system share",
             "minor page faults per step", "compile s"], cells), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "cnn"])
    parser.add_argument("--workloads", nargs="+", default=["train", "fingerprint"],
                        choices=["train", "fingerprint"])
    parser.add_argument("--allocators", nargs="+", default=list(ALLOCATORS),
                        choices=list(ALLOCATORS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    parser.add_argument("--out", type=Path, default=harness.RESULTS / "allocator")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--rounds and --steps must be >= 1, --warmup >= 0")
    if args.child:
        if os.environ.get("ALLOCATOR_BENCH_TUNE_GLIBC") == "1":
            _tune_glibc()
        print(json.dumps(_child(args.child, args.steps, args.warmup)))
        return None

    from ipguard_jax import models
    for name in args.models:
        if name not in models.available():
            parser.error(f"unknown model {name!r}; one of {models.available()}")
    allocators = available_allocators(args.allocators)
    missing = sorted(set(args.allocators) - set(allocators))
    if missing:
        print(f"not installed, skipped: {', '.join(missing)}", flush=True)
    workloads = [f"{w}-{m}" for w in args.workloads for m in args.models]
    load_start = harness.load_average()
    runs = measure(workloads, allocators, args.rounds, args.steps, args.warmup)
    result = {
        "command": harness.command(__file__, argv),
        "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup,
        "allocators": allocators,
        # This (parent) process's; each child's malloc is in its runs.
        "environment": harness.environment(),
        "load_average": [load_start, harness.load_average()],
        "summary": summarise(runs),
        "runs": runs,
    }
    harness.write_results(args.out, result, render(result))
    print(render(result))
    return result


if __name__ == "__main__":
    main()
