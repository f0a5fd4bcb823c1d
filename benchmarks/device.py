"""Fingerprints per second on the accelerator at hand: ipguard_jax against PyTorch loops.

One script, prepared for a short run on a borrowed GPU (or TPU), with its own time limit: it
finds the device (``jax.devices()[0]``), and for each owner model

* ``resnet18`` at 32x32 (10 classes) and ``resnet50`` at 224x224 (10 classes), torchvision's
  layouts with random weights (seed 0) converted to the zoo's ResNet (``from_torch``), so both
  frameworks run the same function; the last layer is scaled so that the logits' standard
  deviation on the start images is ``--logit-std`` (default 4), since random heads give logits
  on scales far apart from model to model (the std before scaling is recorded);
* start points: uniform random images (seed 0; nothing is downloaded);

it times, at every margin of ``--ks`` (every model at the first margin, then at the next),

* ``ipguard_jax``: ``generate`` with the library's defaults for the device (``loop="auto"``,
  ``compact="auto"``: on GPU/TPU the device loop with compaction in the loop; both recorded),
  ``keep="all"``: the first call of the process (tracing and compiling included: the *cold*
  time) and a second call with the same arguments (*warm*), apart;
* ``torch_per_point``: the per-point loop of public implementations (batch 1,
  ``torch.optim.Adam``, stop at ``loss <= tol``, clamp to [0, 1]) on the same device, on the
  first points until its time share is spent, extrapolated to all points;
* ``torch_batched``: the best batched PyTorch loop of ``benchmarks/vs_pytorch.py`` (b2:
  channels_last, per-point Adam written out, a working set whose finished points are swapped
  for fresh ones), on the same device, a first (warm-up) and a second call;

with the same start points, owner labels ``i`` and targets ``j`` (``generate``'s draw), Adam
0.01, tol 0 and step cap everywhere. Every timed call waits for its results
(``jax.block_until_ready``, ``torch.cuda.synchronize``). PyTorch runs only where it sees the
device (CUDA for a GPU; on a TPU it is skipped and that is recorded). Last, if time is left, a
second process runs the ResNet-18 generation again, with JAX's persistent compilation cache
filled by this one (``--cache-dir``, a fresh directory by default): the cold time a user sees
the second time.

Time limit: ``--time-limit`` seconds in all (default 480), counted from the start of the
script. Results are written after every phase; a phase that would not fit is skipped, and if a
phase overruns, a watchdog writes what is there (flagged ``"partial": true``, with the phase
it was in) shortly before the limit and ends the process. Nothing is read from the network and
nothing is asked for.

    python benchmarks/device.py                          # on the GPU/TPU machine, <= 8 min
    python benchmarks/device.py --sizes tiny --out /tmp/device   # a quick check on a CPU

Results: ``benchmarks/results/device_<kind>.{json,md}`` (``<kind>``: the device kind, e.g.
``nvidia_h100_80gb_hbm3``), or ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

START = time.monotonic()

# JAX must not take most of the GPU's memory before PyTorch runs on it (set before JAX starts).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as harness  # noqa: E402
# The PyTorch baselines are vs_pytorch.py's: its IPGuard loss and its compacting working set
# (b2), both run on whatever device their tensors are on.
from vs_pytorch import run_best_batched as torch_batched  # noqa: E402
from vs_pytorch import torch_ipguard_loss as ipguard_loss  # noqa: E402

MODELS = ("resnet18", "resnet50")
#: Per size preset and model: image side, points, ipguard_jax batch, PyTorch working set,
#: step cap, the per-point loop's share of time (s).
SIZES = {
    "full": {"resnet18": dict(image=32, points=1024, batch=256, torch_batch=256, steps=300,
                              per_point_s=40.0),
             "resnet50": dict(image=224, points=64, batch=32, torch_batch=32, steps=200,
                              per_point_s=30.0)},
    "small": {"resnet18": dict(image=32, points=128, batch=64, torch_batch=64, steps=100,
                               per_point_s=20.0),
              "resnet50": dict(image=64, points=16, batch=16, torch_batch=16, steps=50,
                               per_point_s=20.0)},
    "tiny": {"resnet18": dict(image=32, points=8, batch=8, torch_batch=8, steps=6,
                              per_point_s=2.0),
             "resnet50": dict(image=32, points=4, batch=4, torch_batch=4, steps=3,
                              per_point_s=2.0)},
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def elapsed() -> float:
    return time.monotonic() - START


def log(message: str) -> None:
    print(f"[{elapsed():6.1f}s] {message}", flush=True)


# --- the report, written after every phase and by the watchdog ----------------------------------


class Report:
    """The result dict and its files; thread-safe, so the watchdog can write it too."""

    def __init__(self, out: Path, result: dict[str, Any]):
        self.out, self.result, self.lock = out, result, threading.Lock()
        self.phase = "start"

    def save(self, *, partial: bool, reason: str | None = None) -> None:
        with self.lock:
            self.result["partial"] = partial
            self.result["partial_reason"] = reason
            self.result["elapsed_s"] = round(elapsed(), 1)
            try:
                harness.write_results(self.out, self.result, render_markdown(self.result))
            except Exception as e:  # a report must not kill the run
                print(f"could not write {self.out}: {e!r}", flush=True)


def start_watchdog(report: Report, limit_s: float, margin_s: float) -> threading.Timer:
    """At ``limit_s - margin_s`` after the start: write what is there, flagged, and exit."""
    def fire():
        reason = f"time limit {limit_s:g} s: stopped during {report.phase}"
        print(f"[{elapsed():6.1f}s] PARTIAL: {reason}; writing {report.out}", flush=True)
        report.save(partial=True, reason=reason)
        sys.stdout.flush()
        os._exit(0)

    timer = threading.Timer(max(0.0, limit_s - margin_s - elapsed()), fire)
    timer.daemon = True
    timer.start()
    return timer


# --- PyTorch ------------------------------------------------------------------------------------


def torch_device(platform: str):
    """The torch device for the JAX platform, or ``(None, why)`` when torch does not see it."""
    try:
        import torch
    except ImportError as e:
        return None, f"torch is not installed ({e})"
    if platform == "cpu":
        return torch.device("cpu"), None
    if platform == "gpu":
        if torch.cuda.is_available():
            return torch.device("cuda"), None
        return None, "torch sees no CUDA device"
    return None, f"torch does not see the {platform} device"


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def torch_per_point(model, x0, i, j, *, k, lr, steps, tol, budget_s, device):
    """The per-point loop on the first points until ``budget_s`` is spent (at least one)."""
    import torch

    steps_taken, converged, times = [], [], []
    for p in range(len(x0)):
        t0 = time.perf_counter()
        x = x0[p:p + 1].clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr)
        ip, jp = i[p:p + 1], j[p:p + 1]
        taken = 0
        while True:
            loss = ipguard_loss(model(x), ip, jp, k)[0]
            value = float(loss.detach())  # the loop's check: a device sync per step
            if value <= tol or taken == steps:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(0.0, 1.0)
            taken += 1
        sync(device)
        times.append(time.perf_counter() - t0)
        steps_taken.append(taken)
        converged.append(value <= tol)
        if sum(times) >= budget_s:
            break
    return {"points_run": len(times), "seconds": sum(times), "steps": steps_taken,
            "converged": converged}


def build_owner(arch: str, image: int, x0: np.ndarray, logit_std: float):
    """The torch network (random weights, head scaled to ``logit_std``) and its JAX twin in the
    zoo; without torchvision, the zoo's model alone (``net`` is then ``None``)."""
    try:
        import torch
        import torchvision
    except ImportError:
        return (None, *_zoo_owner(arch, image, x0, logit_std))

    from ipguard_jax.convert import from_torch

    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(num_classes=10).eval()
    mean = torch.tensor(IMAGENET_MEAN).view(1, -1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, -1, 1, 1)
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(x0[:64].transpose(0, 3, 1, 2)))
        before = float(net((x - mean) / std).std())
        scale = logit_std / max(before, 1e-12)
        net.fc.weight.mul_(scale)
        net.fc.bias.mul_(scale)
    owner = from_torch(net, input_shape=(image, image, 3), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return net, owner, {"weights": "torchvision init, seed 0", "logit_std_before_scaling": before,
                        "head_scale": scale,
                        "num_params": int(sum(p.numel() for p in net.parameters()))}


def _zoo_owner(arch: str, image: int, x0: np.ndarray, logit_std: float):
    import jax
    from flax import nnx

    import ipguard_jax as ipg
    from ipguard_jax import models

    model = models.create(arch, num_classes=10, rngs=nnx.Rngs(0))
    model.eval()
    before = float(np.asarray(model(x0[:64])).std())
    scale = logit_std / max(before, 1e-12)
    for leaf in (model.fc.kernel, model.fc.bias):
        leaf[...] = leaf[...] * scale
    owner = ipg.Classifier.from_nnx(model, input_shape=(image, image, 3))
    count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return owner, {"weights": "zoo init, seed 0 (no torchvision)",
                   "logit_std_before_scaling": before, "head_scale": scale,
                   "num_params": count}


def normalized(net, device, channels_last: bool):
    """``net`` taking raw [0, 1] images (as the converted JAX model does), on ``device``, in
    evaluation mode, without parameter gradients."""
    import torch
    from torch import nn

    class Normalized(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, -1, 1, 1))

        def forward(self, x):
            return self.net((x - self.mean) / self.std)

    module = Normalized().to(device).eval()
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    for p in module.parameters():
        p.requires_grad_(False)
    return module


# --- one model ----------------------------------------------------------------------------------


def run_generate(owner, x0, config, key: int):
    import ipguard_jax as ipg

    seconds, fp = harness.clock(lambda: ipg.generate(owner, config, key=key, data=x0,
                                                     progress=False))
    runner = fp.metadata["runner"]
    return seconds, fp, {
        "seconds": round(seconds, 3), "converged": int(fp.converged.sum()),
        "points": len(fp), "fingerprints_per_s": round(int(fp.converged.sum()) / seconds, 3),
        "points_per_s": round(len(fp) / seconds, 3), "mean_steps": float(fp.steps.mean()),
        "loop": fp.metadata["loop"], "compact": fp.metadata["compact"],
        "backend": fp.metadata.get("backend"), "runner": dict(runner),
        "useful_share": (round(int(fp.steps.sum()) / runner["point_steps"], 3)
                         if runner.get("point_steps") else None)}


class Owner:
    """One owner model and its start points, built once for every ``k``."""

    def __init__(self, arch: str, spec: dict[str, Any], args, report: Report):
        import ipguard_jax as ipg

        self.arch, self.spec, self.runs = arch, spec, 0
        self.entry: dict[str, Any] = {
            "arch": arch, "image": spec["image"], "points": spec["points"],
            "batch": spec["batch"], "torch_batch": spec["torch_batch"], "steps": spec["steps"],
            "lr": args.lr, "tol": 0.0, "by_k": {}, "skipped": []}
        report.result["models"][arch] = self.entry
        image, n = spec["image"], spec["points"]
        self.x0 = np.random.default_rng(0).uniform(size=(n, image, image, 3)).astype(np.float32)
        report.phase = f"{arch}: building the owner"
        self.net, self.owner, scaling = build_owner(arch, image, self.x0, args.logit_std)
        self.entry["owner"] = {"logit_std": args.logit_std, **scaling}
        log(f"{arch}@{image}: owner ready ({scaling['num_params']:,} parameters, head scaled "
            f"x{scaling['head_scale']:.3g})")
        fields = {} if args.loop == "auto" else {"loop": args.loop}
        if args.compact != "auto":
            fields["compact"] = args.compact == "on"
        if args.block_steps is not None:
            fields["block_steps"] = args.block_steps
        self.config = ipg.FingerprintConfig(num=n, lr=args.lr, steps=spec["steps"],
                                            batch_size=spec["batch"], keep="all", **fields)
        self.entry["config"] = {name: value for name, value in self.config.to_dict().items()
                                if name != "k"}


def bench_k(owner: Owner, k: float, args, report: Report, platform: str, limit: float) -> None:
    """ipguard_jax (first and second call on the owner's first k, one call after that), then
    the PyTorch loops, at margin ``k``."""
    import dataclasses

    arch, n = owner.arch, owner.spec["points"]
    run: dict[str, Any] = {"k": k, "phases": {}, "skipped": []}
    owner.entry["by_k"][f"{k:g}"] = run
    phases = run["phases"]
    config = dataclasses.replace(owner.config, k=k)
    first = owner.runs == 0
    owner.runs += 1
    label = f"{arch} k={k:g}"

    if first:
        report.phase = f"{label}: ipguard_jax first call (compiling)"
        log(f"{label}: ipguard_jax first call (compiles) ...")
        _, fp, cold = run_generate(owner.owner, owner.x0, config, key=0)
        phases["ipguard_jax_cold"] = cold
        log(f"{label}: ipguard_jax cold {cold['seconds']:.1f} s, {cold['converged']}/{n} "
            f"converged, loop={cold['loop']} compact={cold['compact']}")
        report.save(partial=True, reason="running")

    report.phase = f"{label}: ipguard_jax {'second call' if first else 'call'}"
    _, fp, warm = run_generate(owner.owner, owner.x0, config, key=0)
    phases["ipguard_jax_warm"] = warm
    log(f"{label}: ipguard_jax warm {warm['seconds']:.2f} s ({warm['fingerprints_per_s']:.1f} "
        f"fingerprints/s, {warm['converged']}/{n} converged, useful share "
        f"{warm['useful_share']})")
    report.save(partial=True, reason="running")

    device, why = torch_device(platform)
    if owner.net is None:
        device, why = None, "torchvision is not installed"
    if device is None or args.no_torch:
        run["skipped"].append(f"PyTorch: {why or '--no-torch'}")
        log(f"{label}: PyTorch skipped ({why or '--no-torch'})")
        return
    try:
        _bench_torch(owner, run, fp, device, k, first, args, report, limit)
    except Exception as e:  # PyTorch failing must not cost the other measurements
        run["skipped"].append(f"PyTorch failed: {e!r}"[:300])
        log(f"{label}: PyTorch failed: {e!r}")


def _bench_torch(owner: Owner, run: dict[str, Any], fp, device, k: float, first: bool, args,
                 report: Report, limit: float) -> None:
    import torch

    arch, spec, n, phases = owner.arch, owner.spec, owner.spec["points"], run["phases"]
    label = f"{arch} k={k:g}"
    run["torch_settings"] = {
        "device": str(device), "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark}
    order = np.argsort(fp.source)  # fp is in candidate order; the torch loops use data order
    if not np.array_equal(np.asarray(fp.source)[order], np.arange(n)):
        raise RuntimeError("generate did not return every start point once")
    i = torch.from_numpy(np.asarray(fp.i, np.int64)[order]).to(device)
    j = torch.from_numpy(np.asarray(fp.j, np.int64)[order]).to(device)
    x_t = torch.from_numpy(np.ascontiguousarray(owner.x0.transpose(0, 3, 1, 2))).to(device)
    common = dict(k=k, lr=args.lr, steps=spec["steps"], tol=0.0)

    left = limit - elapsed()
    share_s = spec["per_point_s"] if first else spec["per_point_s"] / 2
    budget = min(share_s, max(0.0, left - args.reserve_s) / 3)
    if budget < 1.0:
        run["skipped"].append("torch_per_point: no time left")
    else:
        report.phase = f"{label}: torch per-point loop"
        model = normalized(owner.net, device, channels_last=False)
        torch_per_point(model, x_t[:1], i[:1], j[:1], budget_s=0.0, device=device,
                        **{**common, "steps": 2})  # warm-up (cuDNN, allocator)
        result = torch_per_point(model, x_t, i, j, budget_s=budget, device=device, **common)
        per_point = result["seconds"] / result["points_run"]
        share = float(np.mean(result["converged"]))
        phases["torch_per_point"] = {
            "points_run": result["points_run"], "seconds": round(result["seconds"], 3),
            "seconds_per_point": round(per_point, 4),
            "mean_steps": float(np.mean(result["steps"])), "converged_share": share,
            "extrapolated_seconds": round(per_point * n, 2),
            "fingerprints_per_s": round(share / per_point, 3),
            "points_per_s": round(1 / per_point, 3),
            "steps_equal_ipguard_jax": float(np.mean(
                np.asarray(result["steps"]) == np.asarray(fp.steps)[order][
                    :result["points_run"]]))}
        log(f"{label}: torch per-point {result['points_run']} points in "
            f"{result['seconds']:.1f} s ({1 / per_point:.2f} points/s)")
        report.save(partial=True, reason="running")

    left = limit - elapsed()
    if left < args.reserve_s:
        run["skipped"].append("torch_batched: no time left")
    else:
        report.phase = f"{label}: torch batched loop"
        model = normalized(owner.net, device, channels_last=True)
        runs = []
        for call in ("first", "second"):
            t0 = time.perf_counter()
            out = torch_batched(model, x_t, i, j, capacity=spec["torch_batch"], **common)
            sync(device)
            runs.append((time.perf_counter() - t0, out))
            log(f"{label}: torch batched {call} call {runs[-1][0]:.2f} s")
            if limit - elapsed() < args.reserve_s + 2 * runs[-1][0]:
                break
        seconds, out = runs[-1]
        converged = int(out["converged"].sum())
        phases["torch_batched"] = {
            "first_call_s": round(runs[0][0], 3), "seconds": round(seconds, 3),
            "calls": len(runs), "converged": converged,
            "fingerprints_per_s": round(converged / seconds, 3),
            "points_per_s": round(n / seconds, 3),
            "mean_steps": float(out["steps"].mean()),
            "steps_equal_ipguard_jax": float(np.mean(
                out["steps"] == np.asarray(fp.steps)[order]))}
        report.save(partial=True, reason="running")
    if device.type == "cuda":
        torch.cuda.empty_cache()


def second_process(args, report: Report, limit: float) -> None:
    """The ResNet-18 generation again in a fresh process that finds the compilation cache."""
    left = limit - elapsed() - args.reserve_s
    if left < 60:
        report.result["skipped"].append("second process: no time left")
        return
    report.phase = "second process (compilation cache)"
    log("second process: resnet18 generation with the compilation cache filled ...")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "child"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--sizes", args.sizes,
               "--models", "resnet18", "--no-torch", "--no-second-process",
               "--ks", f"{args.ks[0]:g}", "--lr", str(args.lr), "--logit-std",
               str(args.logit_std), "--loop", args.loop, "--compact", args.compact,
               "--time-limit", str(int(left)), "--out", str(out)]
        if args.block_steps is not None:
            cmd += ["--block-steps", str(args.block_steps)]
        if args.points is not None:
            cmd += ["--points", str(args.points)]
        if args.steps is not None:
            cmd += ["--steps", str(args.steps)]
        try:
            proc = subprocess.run(cmd, env=os.environ.copy(), capture_output=True, text=True,
                                  timeout=left + 5)
            child = json.loads(out.with_suffix(".json").read_text())
            phases = child["models"]["resnet18"]["by_k"][f"{args.ks[0]:g}"]["phases"]
            report.result["second_process"] = {
                "first_call_s": phases["ipguard_jax_cold"]["seconds"],
                "second_call_s": phases.get("ipguard_jax_warm", {}).get("seconds"),
                "partial": child["partial"], "returncode": proc.returncode}
            log(f"second process: first call {phases['ipguard_jax_cold']['seconds']:.1f} s")
        except Exception as e:
            report.result["second_process"] = {"error": repr(e)[:500]}
            log(f"second process failed: {e!r}")


# --- main ---------------------------------------------------------------------------------------


def _version(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def device_kind_slug(kind: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia_h100_80gb_hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "_", kind.lower()).strip("_") or "unknown"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--time-limit", type=float, default=480.0,
                   help="seconds for the whole script (default %(default)s)")
    p.add_argument("--sizes", choices=sorted(SIZES), default="full",
                   help="size preset: full (GPU/TPU), small, tiny (a CPU check)")
    p.add_argument("--models", default=",".join(MODELS),
                   help="comma-separated, from %(default)s")
    p.add_argument("--points", type=int, default=None, help="override the preset's points")
    p.add_argument("--steps", type=int, default=None, help="override the preset's step cap")
    p.add_argument("--ks", default="3,10",
                   help="margins, comma-separated; every model runs at the first, then at "
                        "the next while time is left (default %(default)s)")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--logit-std", type=float, default=4.0,
                   help="the random head is scaled to this logit std on the start images")
    p.add_argument("--loop", choices=("auto", "device", "host"), default="auto")
    p.add_argument("--compact", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--block-steps", type=int, default=None,
                   help="FingerprintConfig.block_steps (default: the library's)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch loops")
    p.add_argument("--no-second-process", action="store_true",
                   help="skip the second-process (compilation cache) run")
    p.add_argument("--cache-dir", default=None,
                   help="JAX's persistent compilation cache (default: a fresh directory, so "
                        "the first call is cold)")
    p.add_argument("--reserve-s", type=float, default=20.0,
                   help="seconds kept free at the end for writing (default %(default)s)")
    p.add_argument("--out", default=None, help="files' path without suffix")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        args.ks = [float(k) for k in args.ks.split(",") if k.strip()]
    except ValueError:
        p.error(f"--ks must be comma-separated numbers, got {args.ks!r}")
    if not args.ks or any(k < 0 for k in args.ks):
        p.error("--ks needs at least one margin >= 0")
    unknown = set(args.models) - set(MODELS)
    if unknown:
        p.error(f"unknown models {sorted(unknown)}; choose from {MODELS}")
    if args.time_limit <= 0:
        p.error("--time-limit must be > 0")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    limit = args.time_limit
    own_cache = None
    if args.cache_dir is None and "IPGUARD_COMPILE_CACHE" not in os.environ:
        own_cache = tempfile.mkdtemp(prefix="ipguard_xla_")
        os.environ["IPGUARD_COMPILE_CACHE"] = own_cache
    elif args.cache_dir is not None:
        os.environ["IPGUARD_COMPILE_CACHE"] = args.cache_dir

    import jax

    first = jax.devices()[0]
    platform, kind = first.platform, getattr(first, "device_kind", first.platform)
    out = Path(args.out) if args.out else harness.RESULTS / f"device_{device_kind_slug(kind)}"
    torch_version = _version("torch")
    result: dict[str, Any] = {
        "command": harness.command(__file__, sys.argv[1:] if argv is None else argv),
        "device": {"platform": platform, "device_kind": kind, "count": jax.device_count(),
                   "devices": [str(d) for d in jax.devices()]},
        "sizes": args.sizes, "time_limit_s": limit,
        "compile_cache": os.environ.get("IPGUARD_COMPILE_CACHE"),
        "environment": harness.environment(torch=torch_version),
        "ks": args.ks, "load_average_start": harness.load_average(),
        "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
        "models": {}, "skipped": [], "errors": {}}
    report = Report(out, result)
    log(f"device: {kind} ({platform}), {jax.device_count()} device(s); time limit {limit:g} s; "
        f"writing {out}.json/.md")
    report.save(partial=True, reason="running")
    margin = min(15.0, 0.1 * limit)
    watchdog = start_watchdog(report, limit, margin)
    try:
        owners: dict[str, Owner] = {}
        for k in args.ks:  # every model at the first k, then at the next...
            for arch in args.models:
                if arch in result["errors"]:
                    continue
                label = f"{arch} k={k:g}"
                if limit - elapsed() < args.reserve_s + 10:
                    result["skipped"].append(f"{label}: no time left")
                    log(f"{label}: skipped, no time left")
                    continue
                try:
                    if arch not in owners:
                        spec = dict(SIZES[args.sizes][arch])
                        if args.points is not None:
                            spec["points"] = args.points
                            spec["batch"] = min(spec["batch"], args.points)
                            spec["torch_batch"] = min(spec["torch_batch"], args.points)
                        if args.steps is not None:
                            spec["steps"] = args.steps
                        owners[arch] = Owner(arch, spec, args, report)
                    bench_k(owners[arch], k, args, report, platform, limit)
                except Exception as e:
                    result["errors"][arch] = traceback.format_exc()[-2000:]
                    log(f"{label}: failed: {e!r}")
                report.save(partial=True, reason="running")
        if not args.no_second_process and "resnet18" in owners:
            second_process(args, report, limit)
    finally:
        watchdog.cancel()
    partial = bool(result["skipped"] or result["errors"] or any(
        run["skipped"] for m in result["models"].values() for run in m["by_k"].values()))
    result["load_average_end"] = harness.load_average()
    report.save(partial=partial, reason="phases skipped or failed" if partial else None)
    if own_cache is not None:
        import shutil

        shutil.rmtree(own_cache, ignore_errors=True)
    log(f"done in {elapsed():.0f} s{' (partial)' if partial else ''}: wrote {out}.json/.md")
    return result


# --- the report ---------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_markdown(result: dict[str, Any]) -> str:
    device = result["device"]
    lines = [f"# ipguard_jax against PyTorch on {device['device_kind']} ({device['platform']})",
             "", f"Command: `{result['command']}`", "",
             f"Machine: {harness.describe(result['environment'])}; {device['count']} "
             f"device(s): {', '.join(device['devices'][:4])}; load average "
             f"{result.get('load_average_start', '?')} at the start, "
             f"{result.get('load_average_end', '?')} at the end. Time limit "
             f"{result['time_limit_s']:g} s, used {result.get('elapsed_s', '?')} s. Size preset "
             f"`{result['sizes']}`."]
    if result.get("partial"):
        lines += ["", f"**Partial results** ({result.get('partial_reason')}); skipped: "
                      f"{'; '.join(result['skipped']) or 'nothing'}."]
    lines += ["", "Owners: torchvision layouts, random weights (seed 0), head scaled to the "
              "given logit std on the start images, converted to the zoo (same function in "
              "both frameworks). Start points: uniform random images. keep=\"all\", Adam lr "
              "0.01, tol 0, the step cap below, targets j from generate's draw given to every "
              "implementation. fp/s = converged fingerprints per second; pts/s = points "
              "finished per second. ipguard_jax first call = the first call of the process "
              "(tracing and compilation included); the next call compiles nothing (later "
              "margins reuse the programs: k is a traced value). The per-point loop ran on the "
              "first points and is extrapolated to all."]
    for arch, m in result["models"].items():
        owner = m.get("owner", {})
        lines += ["", f"## {arch} at {m['image']}x{m['image']}", "",
                  f"{m['points']} points, at most {m['steps']} steps; ipguard_jax batch "
                  f"{m['batch']}, PyTorch working set {m['torch_batch']}."
                  + (f" Owner: {owner['num_params']:,} parameters ({owner['weights']}), head "
                     f"scaled x{owner['head_scale']:.3g}." if "num_params" in owner else "")]
        for k, run in m["by_k"].items():
            lines += ["", f"### k = {k}"]
            lines += _render_run(run, m["points"])
    if result.get("second_process"):
        sp = result["second_process"]
        lines += ["", "## Second process (compilation cache filled by the first)", "",
                  f"resnet18 at the first k: first call {_fmt(sp.get('first_call_s'))} s, "
                  f"second call {_fmt(sp.get('second_call_s'))} s"
                  + (f" ({sp['error']})" if "error" in sp else "") + "."]
    if result.get("errors"):
        lines += ["", "## Errors", ""] + [f"- {arch}: `{text.strip().splitlines()[-1]}`"
                                          for arch, text in result["errors"].items()]
    return "\n".join(lines) + "\n"


def _render_run(run: dict[str, Any], points: int) -> list[str]:
    ph, lines = run["phases"], []
    warm = ph.get("ipguard_jax_warm", {})
    first = ph.get("ipguard_jax_cold", warm)
    if first:
        lines += ["", f"ipguard_jax ran loop={first['loop']}, compact={first['compact']} "
                      f"(backend {first['backend']}); runner counters: "
                      f"{json.dumps(warm.get('runner', first['runner']))}; useful share of "
                      f"executed point-steps {_fmt(warm.get('useful_share'), 3)}."]
    rows = []
    for name, label in (("ipguard_jax_cold", "ipguard_jax, first call (with compile)"),
                        ("ipguard_jax_warm", "ipguard_jax, warm call")):
        if name in ph:
            r = ph[name]
            rows.append([label, _fmt(r["seconds"]), _fmt(r["fingerprints_per_s"]),
                         _fmt(r["points_per_s"]), f"{r['converged']}/{r['points']}",
                         _fmt(r["mean_steps"], 1)])
    if "torch_per_point" in ph:
        r = ph["torch_per_point"]
        rows.append([f"PyTorch per point ({r['points_run']} points run, extrapolated)",
                     _fmt(r["extrapolated_seconds"]), _fmt(r["fingerprints_per_s"]),
                     _fmt(r["points_per_s"]), f"{r['converged_share']:.0%}",
                     _fmt(r["mean_steps"], 1)])
    if "torch_batched" in ph:
        r = ph["torch_batched"]
        rows.append([f"PyTorch batched, compacting (call {r['calls']}; first "
                     f"{_fmt(r['first_call_s'])} s)", _fmt(r["seconds"]),
                     _fmt(r["fingerprints_per_s"]), _fmt(r["points_per_s"]),
                     f"{r['converged']}/{points}", _fmt(r["mean_steps"], 1)])
    if rows:
        lines += ["", *harness.table(["implementation", "s", "fp/s", "pts/s", "converged",
                                      "mean steps"], rows)]
    if warm and ("torch_per_point" in ph or "torch_batched" in ph):
        ratios = []
        if "torch_per_point" in ph:
            per_point = ph["torch_per_point"]["extrapolated_seconds"]
            ratios.append(f"{per_point / warm['seconds']:.1f}x the per-point loop")
        if "torch_batched" in ph:
            ratios.append(f"{ph['torch_batched']['seconds'] / warm['seconds']:.2f}x the "
                          "batched loop")
        lines += ["", f"ipguard_jax warm, speed-up (the other's time for the same points / "
                      f"ipguard_jax's): {', '.join(ratios)}."]
    if run["skipped"]:
        lines += ["", f"Skipped: {'; '.join(run['skipped'])}."]
    return lines


if __name__ == "__main__":
    main()
