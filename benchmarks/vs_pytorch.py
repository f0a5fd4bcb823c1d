"""IPGuard fingerprint generation with ipguard_jax against PyTorch implementations (CIFAR-10).

For each owner model (a PyTorch CIFAR-10 classifier: torchvision ResNet-18 at 32x32 and the
CIFAR ResNet-20 layout, trained here or loaded from a cache keyed by the training recipe) and
each margin ``k``, the same start points (test images) with the same owner labels ``i`` and the
same targets ``j`` are optimised by:

* ``a_per_point``: the per-point PyTorch loop of public implementations (batch 1,
  ``torch.optim.Adam``, stop at ``loss <= tol``, clamp to [0, 1]); slow, so it runs on a subset
  of the points and its per-step cost is extrapolated to all of them;
* ``b1_naive``: naive batched PyTorch: one batch of all points, a per-point done mask (done
  points are put back after each Adam step), until every point is done or the step cap;
* ``b2_best``: the best batched PyTorch written here: channels_last, BatchNorm folded into the
  convolutions (eval mode), per-point Adam state written out, a working set whose finished
  points are swapped for fresh ones and which shrinks when no fresh ones are left, each point
  with its own step budget. ``torch.compile`` is measured on its step (compile time apart) and
  was not faster than the folded eager model here, so b2 runs eager;
* ``c_chunked`` / ``c_compact``: ``ipguard_jax.generate`` (keep="all", loop="host"), with
  ``compact=False`` and ``compact=True``.

Settings are equal everywhere: Adam lr 0.01, at most ``--steps`` updates per point (default 100,
not the method's usual 1000: the full-batch implementations run every point to the cap, which
would not fit the time budget of this 2-core CPU), tol 0, init="data", target="random"; ``j``
is drawn once (by ``generate``'s own per-candidate draw, from a warm-up call with the same key)
and given to every implementation. Every implementation runs once before timing (compile and
warm-up, reported apart); then rounds run every implementation once each, in an order rotated
per round, and medians are reported. PyTorch gets the faster of 1 and 2 threads, measured just
before each of its runs: on a CPU shared with other jobs two OpenMP threads can be many times
slower than one. A side-by-side probe also times one optimisation step at fixed batch sizes
(ipguard_jax's compiled block against PyTorch's input-gradient pass), which separates the cost
of a step from that of the loop around it.

The roofline part takes XLA's FLOP count of one batched optimisation step
(``jit(step).lower(...).compile().cost_analysis()``), counts the steps ``generate`` actually
executes (each compiled block call, batch size times block steps), and compares the achieved
FLOP/s with the machine's measured float32 matmul peak (numpy and jax, in the same run).

    python benchmarks/vs_pytorch.py                 # the full run (trains or loads the owners)
    python benchmarks/vs_pytorch.py --quick --out /tmp/vs   # tiny end-to-end check
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as harness  # noqa: E402

DEFAULT_ARCHIVE = harness.ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMPLEMENTATIONS = ("a_per_point", "b1_naive", "b2_best", "c_chunked", "c_compact")


# --- PyTorch models -----------------------------------------------------------------------------


def _torch_models():
    """The torch module classes (defined lazily so that importing this file needs no torch)."""
    import torch
    from torch import nn

    from ipguard_jax.convert.torch_reference import CifarResNet

    class Normalized(nn.Module):
        """Takes raw [0, 1] images: normalises, then runs the network (as the JAX model does)."""

        def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

        def forward(self, x):
            return self.net((x - self.mean) / self.std)

    return CifarResNet, Normalized


def build_torch_model(arch: str):
    """An untrained torch classifier: ``resnet18`` (torchvision) or ``resnet<6n+2>`` (CIFAR)."""
    import torch
    import torchvision

    CifarResNet, _ = _torch_models()
    torch.manual_seed(0)
    if arch == "resnet18":
        # torchvision's ImageNet layout (7x7/2 stem, max pool) at 32x32: the variant the converter
        # maps (the common CIFAR variant with a 3x3/1 stem and no max pool is not a zoo model).
        return torchvision.models.resnet18(num_classes=10)
    if arch.startswith("resnet") and (int(arch[6:]) - 2) % 6 == 0:
        return CifarResNet(int(arch[6:]))
    raise ValueError(f"unknown arch {arch!r}")


# --- training -----------------------------------------------------------------------------------


def _recipe_key(recipe: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _augment(x, generator):
    """Random crop (zero padding 4) and horizontal flip of an NCHW batch."""
    import torch

    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=generator)
    dx = torch.randint(0, 9, (n,), generator=generator)
    out = torch.stack([padded[b, :, dy[b]:dy[b] + h, dx[b]:dx[b] + w] for b in range(n)])
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), out.flip(3), out)


def evaluate_torch(net, x_nchw, y, batch: int = 500) -> float:
    """Test accuracy of a torch classifier on normalised NCHW images."""
    import torch

    net.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(x_nchw), batch):
            xb = x_nchw[s:s + batch].contiguous(memory_format=torch.channels_last)
            correct += int((net(xb).argmax(1) == y[s:s + batch]).sum())
    return correct / len(x_nchw)


def train_or_load(arch: str, recipe: dict[str, Any], cifar, cache_dir: Path, log, *,
                  train_minutes: float, train_threads: int) -> tuple:
    """Trains a torch CIFAR-10 classifier by ``recipe`` (or loads it from the cache).

    SGD (Nesterov), linear warm-up then cosine decay; the schedule runs on the step count or
    on the ``train_minutes`` cap, whichever ends first, so a capped run still anneals. The cache
    is keyed by ``arch``, the recipe and the cap.

    Returns:
        ``(net in eval mode, info)``; ``info`` holds the recipe, the test accuracy, the training
        time and whether it came from the cache.
    """
    import torch
    from torch.nn import functional as F

    key = _recipe_key({"arch": arch, "max_minutes": train_minutes, **recipe})
    weights = cache_dir / f"{arch}-{key}.pt"
    meta_path = cache_dir / f"{arch}-{key}.json"
    net = build_torch_model(arch).to(memory_format=torch.channels_last)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    x_test = (torch.from_numpy(cifar["test_x"]).permute(0, 3, 1, 2) - mean) / std
    y_test = torch.from_numpy(cifar["test_y"].astype(np.int64))
    if weights.exists() and meta_path.exists():
        net.load_state_dict(torch.load(weights, weights_only=True))
        info = json.loads(meta_path.read_text())
        info["from_cache"] = True
        log(f"{arch}: loaded {weights} (test accuracy {info['test_accuracy']:.4f})")
        return net.eval(), info

    threads = torch.get_num_threads()
    rng = np.random.default_rng(recipe["seed"])
    subset = rng.permutation(len(cifar["train_x"]))[:recipe["train_subset"]]
    x_train = (torch.from_numpy(cifar["train_x"][subset]).permute(0, 3, 1, 2) - mean) / std
    y_train = torch.from_numpy(cifar["train_y"][subset].astype(np.int64))
    torch.manual_seed(recipe["seed"])
    generator = torch.Generator().manual_seed(recipe["seed"])
    batch, epochs = recipe["batch_size"], recipe["epochs"]
    steps_per_epoch = len(x_train) // batch
    total_steps, cap_s = epochs * steps_per_epoch, train_minutes * 60
    opt = torch.optim.SGD(net.parameters(), lr=recipe["lr"], momentum=0.9, nesterov=True,
                          weight_decay=recipe["weight_decay"])
    warmup = recipe["warmup"]

    def lr_at(progress: float) -> float:
        # Linear warm-up, then cosine to 0; progress runs on steps or on the time cap.
        if progress < warmup:
            return recipe["lr"] * progress / warmup
        return recipe["lr"] * 0.5 * (1 + np.cos(np.pi * (progress - warmup) / (1 - warmup)))

    torch.set_num_threads(train_threads)
    history, start, step, progress = [], time.perf_counter(), 0, 0.0
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(x_train), generator=generator)
        epoch_start, loss_sum, seen = time.perf_counter(), 0.0, 0
        for s in range(steps_per_epoch):
            progress = max(step / total_steps, (time.perf_counter() - start) / cap_s)
            if progress >= 1.0:
                break
            for group in opt.param_groups:
                group["lr"] = lr_at(progress)
            idx = order[s * batch:(s + 1) * batch]
            xb = _augment(x_train[idx], generator).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(net(xb), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach())
            seen += 1
            step += 1
        seconds = time.perf_counter() - epoch_start
        if seen:
            history.append({"epoch": epoch + 1, "steps": seen,
                            "train_loss": round(loss_sum / seen, 4),
                            "seconds": round(seconds, 1),
                            "images_per_s": round(seen * batch / seconds, 1)})
            log(f"{arch}: epoch {epoch + 1}/{epochs} ({seen} steps) loss "
                f"{history[-1]['train_loss']:.3f} ({history[-1]['images_per_s']:.0f} img/s)")
        if progress >= 1.0:
            break
    stopped_early = step < total_steps
    if stopped_early:
        log(f"{arch}: the {train_minutes} min cap ended training after {step}/{total_steps} "
            "steps (the learning-rate schedule follows the cap)")
    train_s = time.perf_counter() - start
    accuracy = evaluate_torch(net, x_test, y_test)
    torch.set_num_threads(threads)
    info = {"arch": arch, "recipe": recipe, "max_minutes": train_minutes, "recipe_key": key,
            "test_accuracy": accuracy, "train_seconds": round(train_s, 1),
            "steps_done": step, "steps_planned": total_steps,
            "epochs_done": round(step / steps_per_epoch, 2),
            "stopped_at_time_cap": stopped_early, "train_threads": train_threads,
            "history": history, "torch": torch.__version__, "from_cache": False}
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_suffix(".tmp")
    torch.save(net.state_dict(), tmp)
    os.replace(tmp, weights)
    meta_path.write_text(json.dumps({k: v for k, v in info.items() if k != "from_cache"},
                                    indent=2) + "\n")
    log(f"{arch}: trained in {train_s:.0f} s, test accuracy {accuracy:.4f}")
    return net.eval(), info


# --- the IPGuard loss and the PyTorch implementations -------------------------------------------


def torch_ipguard_loss(logits, i, j, k: float):
    """Per-point IPGuard loss ``(B,)``; the other classes' max masks ``i`` and ``j`` with -inf."""
    import torch

    z_i = logits.gather(1, i[:, None])[:, 0]
    z_j = logits.gather(1, j[:, None])[:, 0]
    classes = torch.arange(logits.shape[1], device=logits.device)
    mask = (classes[None] == i[:, None]) | (classes[None] == j[:, None])
    others = logits.masked_fill(mask, float("-inf")).amax(dim=1)
    return torch.relu(z_i - z_j + k) + torch.relu(others - z_i)


def _result(x, labels, loss, converged, steps) -> dict[str, np.ndarray]:
    return {"x": np.asarray(x, np.float32), "labels": np.asarray(labels, np.int64),
            "loss": np.asarray(loss, np.float32), "converged": np.asarray(converged, bool),
            "steps": np.asarray(steps, np.int64)}


def run_per_point(model, x0, i, j, *, k, lr, steps, tol) -> dict[str, Any]:
    """(a) one point at a time, as public implementations do: batch 1, torch Adam, clamp.

    Each point: measure the loss; stop when it is ``<= tol`` or the point has had ``steps``
    updates; otherwise one Adam step and a clamp to [0, 1].
    """
    import torch

    out = {name: [] for name in ("x", "labels", "loss", "converged", "steps")}
    for p in range(len(x0)):
        x = x0[p:p + 1].clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr)
        ip, jp = i[p:p + 1], j[p:p + 1]
        taken = 0
        while True:
            logits = model(x)
            loss = torch_ipguard_loss(logits, ip, jp, k)[0]
            if float(loss.detach()) <= tol or taken == steps:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(0.0, 1.0)
            taken += 1
        out["x"].append(x.detach()[0].numpy())
        out["labels"].append(int(logits.argmax(1)))
        out["loss"].append(float(loss.detach()))
        out["converged"].append(float(loss.detach()) <= tol)
        out["steps"].append(taken)
    return _result(**out)


def run_naive_batched(model, x0, i, j, *, k, lr, steps, tol) -> dict[str, Any]:
    """(b1) one batch of all points, torch Adam, a per-point done mask, until all are done.

    torch's Adam is elementwise, so its state on a batch tensor is per point; the shared step
    counter equals every running point's own count because all start together. Done points are
    put back after each Adam step, so they do not move.
    """
    import torch

    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    done = torch.zeros(len(x0), dtype=torch.bool)
    taken = torch.zeros(len(x0), dtype=torch.int64)
    t = 0
    while True:
        logits = model(x)
        loss = torch_ipguard_loss(logits, i, j, k)
        done |= loss.detach() <= tol
        if bool(done.all()) or t == steps:
            break
        opt.zero_grad()
        loss.sum().backward()
        before = x.detach().clone()
        opt.step()
        with torch.no_grad():
            x.clamp_(0.0, 1.0)
            x[done] = before[done]
        taken += (~done).long()
        t += 1
    loss = loss.detach()
    return _result(x.detach().numpy(), logits.argmax(1).numpy(), loss.numpy(),
                   (loss <= tol).numpy(), taken.numpy())


def run_best_batched(model, x0, i, j, *, k, lr, steps, tol, capacity,
                     b1=0.9, b2=0.999, eps=1e-8) -> dict[str, Any]:
    """(b2) a compacting working set of at most ``capacity`` points, channels_last.

    Every step measures the working set's losses and input gradients in one forward/backward
    pass; points with ``loss <= tol`` or with ``steps`` updates leave the set (their result is
    this measurement), fresh points take their places while any are left, and the set shrinks
    after that. Adam is written out with a per-point step count (refilled points start at 0),
    so each point follows the same path as alone. Runs on ``x0``'s device (``model`` and ``i``,
    ``j`` must be there too); the results come back as host arrays.
    """
    import torch

    n, device = len(x0), x0.device
    res_x = torch.empty_like(x0)
    res_labels = torch.zeros(n, dtype=torch.int64, device=device)
    res_loss = torch.zeros(n, device=device)
    res_steps = torch.zeros(n, dtype=torch.int64, device=device)
    empty = x0[:0].contiguous(memory_format=torch.channels_last)
    ids = torch.zeros(0, dtype=torch.int64, device=device)
    x, m, v = empty, empty.clone(), empty.clone()
    count = torch.zeros(0, dtype=torch.int64, device=device)
    next_id = 0
    while True:
        fresh = min(capacity - len(ids), n - next_id)
        if fresh > 0:  # refill free slots with the next points
            new = torch.arange(next_id, next_id + fresh, device=device)
            next_id += fresh
            start = x0[new].contiguous(memory_format=torch.channels_last)
            ids = torch.cat([ids, new])
            x = torch.cat([x, start])
            m = torch.cat([m, torch.zeros_like(start)])
            v = torch.cat([v, torch.zeros_like(start)])
            count = torch.cat([count, torch.zeros(fresh, dtype=torch.int64, device=device)])
        if len(ids) == 0:
            break
        xr = x.detach().requires_grad_(True)
        logits = model(xr)
        loss = torch_ipguard_loss(logits, i[ids], j[ids], k)
        (grad,) = torch.autograd.grad(loss.sum(), xr)
        loss = loss.detach()
        finished = (loss <= tol) | (count >= steps)
        if bool(finished.any()):
            done_ids = ids[finished]
            res_x[done_ids] = x[finished]
            res_labels[done_ids] = logits.detach()[finished].argmax(1)
            res_loss[done_ids] = loss[finished]
            res_steps[done_ids] = count[finished]
            keep = ~finished
            ids, x, m, v, count, grad = (ids[keep], x[keep], m[keep], v[keep], count[keep],
                                         grad[keep])
            if len(ids) == 0:
                continue
        count = count + 1
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad * grad
        shape = (-1, 1, 1, 1)
        c1 = (1 - b1 ** count.double()).float().view(shape)
        c2 = (1 - b2 ** count.double()).float().view(shape)
        x = (x - lr * (m / c1) / ((v / c2).sqrt() + eps)).clamp_(0.0, 1.0)
    return _result(res_x.cpu().numpy(), res_labels.cpu().numpy(), res_loss.cpu().numpy(),
                   (res_loss <= tol).cpu().numpy(), res_steps.cpu().numpy())


# --- timing (harness.clock: one call, its result waited for) ----------------------------------


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _summary(result: dict[str, np.ndarray], times: Sequence[float]) -> dict[str, Any]:
    n = len(result["converged"])
    converged = int(result["converged"].sum())
    seconds = _median(times)
    return {"points": n, "converged": converged, "converged_share": converged / n,
            "mean_steps": float(result["steps"].mean()),
            "mean_steps_converged": (float(result["steps"][result["converged"]].mean())
                                     if converged else None),
            "max_steps": int(result["steps"].max()), "total_steps": int(result["steps"].sum()),
            "seconds": seconds, "times_s": [round(t, 3) for t in times],
            "points_per_s": n / seconds, "fingerprints_per_s": converged / seconds}


def measure_peak(sizes: Sequence[int], reps: int) -> dict[str, Any]:
    """float32 matmul GFLOP/s with numpy and jax (median and best of ``reps``, alternating)."""
    import jax
    import jax.numpy as jnp

    out = {}
    for n in sizes:
        a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
        flops = 2.0 * n ** 3
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        matmul = jax.jit(jnp.dot)
        matmul(ja, jb).block_until_ready()
        np.dot(a, b)
        times = {"numpy": [], "jax": []}
        for _ in range(reps):
            times["numpy"].append(harness.clock(lambda: np.dot(a, b))[0])
            times["jax"].append(harness.clock(lambda: matmul(ja, jb))[0])
        out[str(n)] = {lib: {"median_gflops": flops / _median(ts) / 1e9,
                             "best_gflops": flops / min(ts) / 1e9,
                             "times_s": [round(t, 5) for t in ts]}
                       for lib, ts in times.items()}
    return out


def xla_step_flops(owner, batch: int, k: float, lr: float) -> dict[str, Any]:
    """XLA's FLOP count of one batched optimisation step (``engine.step_points``, Adam)."""
    import jax
    import jax.numpy as jnp
    import optax

    from ipguard_jax import engine

    optimizer = optax.adam(lr)
    x0 = jnp.full((batch, *owner.input_shape), 0.5, owner.dtype)
    i = jnp.zeros((batch,), jnp.int32)
    j = jnp.ones((batch,), jnp.int32)
    state = engine.init_points(optimizer, x0)

    def step(params, state, i, j):
        return engine.step_points(owner.apply_fn, params, state, i, j, k=k, optimizer=optimizer)

    def analyse():
        cost = jax.jit(step).lower(owner.params, state, i, j).compile().cost_analysis()
        forward = jax.jit(owner.apply_fn).lower(owner.params, x0).cost_analysis()
        return [c[0] if isinstance(c, (list, tuple)) else c for c in (cost, forward)]

    compile_s, (cost, forward) = harness.clock(analyse)
    return {"batch": batch, "step_flops": float(cost.get("flops", float("nan"))),
            "bytes_accessed": float(cost.get("bytes accessed", float("nan"))),
            "forward_flops_unoptimised_hlo": float(forward.get("flops", float("nan"))),
            "compile_s": compile_s}


def _torch_step_fn(model, i, j, k):
    """One forward/backward pass w.r.t. the input of a batch, as every implementation does."""
    import torch

    def step(x):
        xr = x.detach().requires_grad_(True)
        loss = torch_ipguard_loss(model(xr), i[:len(x)], j[:len(x)], k)
        return torch.autograd.grad(loss.sum(), xr)[0]

    return step


def probe_threads(model_nchw, model_cl, x0_t, i_t, j_t, batches: dict[str, int], reps: int,
                  candidates: Sequence[int]) -> dict[str, Any]:
    """Per implementation, the torch thread count with the fastest input-gradient step.

    Measured alternating, median of ``reps``; on a CPU shared with other jobs one thread can be
    several times faster than two (OpenMP workers wait for each other at every op).
    """
    import torch

    out = {}
    for name, batch in batches.items():
        model = model_cl if name == "b2_best" else model_nchw
        x = x0_t[:batch]
        if name == "b2_best":
            x = x.contiguous(memory_format=torch.channels_last)
        step = _torch_step_fn(model, i_t, j_t, 3.0)
        times = {t: [] for t in candidates}
        for t in candidates:
            torch.set_num_threads(t)
            step(x)
        for _ in range(reps):
            for t in candidates:
                torch.set_num_threads(t)
                times[t].append(harness.clock(lambda: step(x))[0])
        medians = {t: _median(ts) for t, ts in times.items()}
        best = min(medians, key=medians.get)
        out[name] = {"batch": batch, "threads": best,
                     "median_step_ms": {str(t): round(1e3 * m, 2) for t, m in medians.items()}}
    return out


def probe_torch_compile(model_cl, model_fused, x, i_t, j_t, reps: int) -> dict[str, Any]:
    """Input-gradient step time of the working set: eager, conv-BN folded, torch.compile.

    Compile time (first call, and a second batch size, as the shrinking working set needs) is
    reported apart; step times are alternating medians.
    """
    import torch

    import torch._dynamo
    import torch._inductor.config

    torch._dynamo.reset()
    compiled = torch.compile(model_cl, dynamic=True)
    steps = {"eager": _torch_step_fn(model_cl, i_t, j_t, 3.0),
             "eager_bn_folded": _torch_step_fn(model_fused, i_t, j_t, 3.0),
             "compiled": _torch_step_fn(compiled, i_t, j_t, 3.0)}
    # Without inductor's on-disk caches, so the compile time is that of a first run.
    with torch._inductor.config.patch(force_disable_caches=True):
        first, _ = harness.clock(lambda: steps["compiled"](x))
        second, _ = harness.clock(lambda: steps["compiled"](x[:max(2, len(x) // 2)]))
    for fn in steps.values():
        fn(x)
    times = {name: [] for name in steps}
    for _ in range(reps):
        for name, fn in steps.items():
            times[name].append(harness.clock(lambda: fn(x))[0])
    return {"batch": len(x), "mode": "default", "dynamic": True, "caches": "disabled",
            "compile_s_first_call": first, "compile_s_second_shape": second,
            "median_step_ms": {name: 1e3 * _median(ts) for name, ts in times.items()},
            "times_ms": {name: [round(1e3 * t, 2) for t in ts] for name, ts in times.items()}}


def probe_steps(owner, model_nchw, model_fused, x0_nhwc, i_np, j_np, batches: Sequence[int],
                reps: int, lr: float) -> dict[str, Any]:
    """Side-by-side time of one optimisation step at fixed batch sizes, without orchestration.

    ipguard_jax: a compiled block of 4 unrolled ``engine.run_steps`` steps (what ``generate``
    runs on CPU), per step. PyTorch: one input-gradient pass of the b1 model (NCHW) and of the
    b2 model (channels_last, BatchNorm folded), each with 1 and 2 threads. Alternating, medians.
    """
    import functools

    import jax
    import jax.numpy as jnp
    import optax
    import torch

    from ipguard_jax import engine

    optimizer = optax.adam(lr)
    out = {}
    for batch in batches:
        x = jnp.asarray(x0_nhwc[:batch])
        i, j = jnp.asarray(i_np[:batch]), jnp.asarray(j_np[:batch])
        state = engine.init_points(optimizer, x)

        @functools.partial(jax.jit, static_argnames="num_steps")
        def block(params, state, num_steps):
            return engine.run_steps(owner.apply_fn, params, state, i, j, k=3.0,
                                    optimizer=optimizer, num_steps=num_steps, max_steps=10 ** 6)

        compile_s, _ = harness.clock(lambda: block(owner.params, state, 4))
        xt = torch.from_numpy(np.ascontiguousarray(x0_nhwc[:batch].transpose(0, 3, 1, 2)))
        it, jt = torch.from_numpy(i_np[:batch].astype(np.int64)), torch.from_numpy(
            j_np[:batch].astype(np.int64))
        fns = {"jax_step": (lambda: block(owner.params, state, 4), 4, 0)}
        for threads in (1, 2):
            fns[f"torch_nchw_{threads}t"] = (
                functools.partial(_torch_step_fn(model_nchw, it, jt, 3.0), xt), 1, threads)
            fns[f"torch_cl_folded_{threads}t"] = (
                functools.partial(_torch_step_fn(model_fused, it, jt, 3.0),
                                  xt.contiguous(memory_format=torch.channels_last)), 1, threads)
        times = {name: [] for name in fns}
        for _ in range(reps):
            for name, (fn, per, threads) in fns.items():
                if threads:
                    torch.set_num_threads(threads)
                harness.clock(fn)  # untimed: thread pools settle after a thread-count change
                times[name].append(harness.clock(fn)[0] / per)
        out[str(batch)] = {"jax_compile_s": compile_s,
                           "median_ms_per_step": {name: 1e3 * _median(ts)
                                                  for name, ts in times.items()},
                           "times_ms": {name: [round(1e3 * t, 2) for t in ts]
                                        for name, ts in times.items()},
                           "load_average": list(os.getloadavg())}
    return out


def batching_bound(step_probe: dict[str, Any]) -> dict[str, Any] | None:
    """The step costs that bound how much batching alone can gain over the per-point loop.

    Returns the batch-1 input-gradient pass (fastest PyTorch variant, and ipguard_jax) and, per
    probed batch ``B``, the cost of one point-step. With compaction every point takes the same
    updates as in the per-point loop (a), so at equal steps ``c / a`` cannot exceed the cost of
    one update of (a) (measured in the run, see :func:`render_markdown`) over ipguard_jax's
    point-step cost. On a GPU a batch-1 step is launch-bound and this ratio is large; on a CPU
    the batch-1 step already keeps the cores busy and the ratio is small.
    """
    if "1" not in step_probe:
        return None

    def fastest_torch(p):
        return min(v for name, v in p["median_ms_per_step"].items() if name.startswith("torch"))

    one = step_probe["1"]
    torch_1, jax_1 = fastest_torch(one), one["median_ms_per_step"]["jax_step"]
    out = {"torch_batch1_ms": torch_1, "jax_batch1_ms": jax_1, "by_batch": {}}
    for b, p in step_probe.items():
        if b == "1":
            continue
        jax_pp = p["median_ms_per_step"]["jax_step"] / int(b)
        torch_pp = fastest_torch(p) / int(b)
        out["by_batch"][b] = {"jax_ms_per_point_step": jax_pp,
                              "torch_ms_per_point_step": torch_pp}
    return out


# --- one owner model ----------------------------------------------------------------------------


def bench_model(arch: str, net, x0_nhwc: np.ndarray, settings: dict[str, Any], args,
                log) -> dict[str, Any]:
    """All implementations on one owner model, for every ``k``."""
    import dataclasses

    import torch
    from torch.fx.experimental.optimization import fuse

    import jax

    import ipguard_jax as ipg
    from ipguard_jax.convert import from_torch
    from ipguard_jax.runners.compacted import shrunk_size

    _, Normalized = _torch_models()
    n, steps, reps = len(x0_nhwc), settings["steps"], settings["reps"]
    owner = from_torch(net, input_shape=(32, 32, 3), mean=CIFAR_MEAN, std=CIFAR_STD)
    # NCHW weights for the plain implementations (a, b1); channels_last for b2, whose model
    # also has each BatchNorm folded into its convolution (eval mode: an affine map).
    model_nchw = Normalized(copy.deepcopy(net).to(memory_format=torch.contiguous_format),
                            CIFAR_MEAN, CIFAR_STD).eval()
    model_cl = Normalized(copy.deepcopy(net).to(memory_format=torch.channels_last),
                          CIFAR_MEAN, CIFAR_STD).eval()
    model_fused = Normalized(fuse(copy.deepcopy(net).eval()).to(
        memory_format=torch.channels_last), CIFAR_MEAN, CIFAR_STD).eval()
    for module in (model_nchw, model_cl, model_fused):
        for p in module.parameters():
            p.requires_grad_(False)

    x0_t = torch.from_numpy(np.ascontiguousarray(x0_nhwc.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        torch_logits = model_nchw(x0_t).numpy()
    jax_logits = np.asarray(owner(x0_nhwc))
    torch_i = torch_logits.argmax(1)

    cc = dict(keep="all", loop="host", lr=args.lr, steps=steps, tol=args.tol, init="data",
              target="random", num=n)
    configs = {"c_chunked": ipg.FingerprintConfig(compact=False, batch_size=args.chunk_batch,
                                                  **cc),
               "c_compact": ipg.FingerprintConfig(compact=True, batch_size=args.compact_batch,
                                                  **cc)}

    last_runner = {}  # the last run's counters (metadata["runner"]): executed point-steps

    def run_generate(config, k, max_steps=None):
        config = dataclasses.replace(config, k=float(k), steps=max_steps or config.steps)
        fp = ipg.generate(owner, config, key=args.seed, data=x0_nhwc, progress=False)
        last_runner.clear()
        last_runner.update(fp.metadata["runner"])
        order = np.argsort(fp.source)  # back to the data order
        if not np.array_equal(fp.source[order], np.arange(n)):
            raise RuntimeError("generate did not return every start point once")
        res = _result(np.asarray(fp.x)[order].transpose(0, 3, 1, 2), fp.labels[order],
                      fp.loss[order], fp.converged[order], fp.steps[order])
        return res, np.asarray(fp.i)[order], np.asarray(fp.j)[order]

    # Warm-up: a 1-step call compiles the timed programs (steps and k are traced values), and
    # the compacted run refills its slots, which compiles the refill program too. The same
    # call gives the owner labels i and the targets j that every implementation uses.
    warmup_s = {}
    i_shared = j_shared = None
    for name, config in configs.items():
        warmup_s[name], (_, i_w, j_w) = harness.clock(
            lambda: run_generate(config, args.ks[0], max_steps=1))
        if i_shared is not None and not (np.array_equal(i_w, i_shared)
                                         and np.array_equal(j_w, j_shared)):
            raise RuntimeError("the generate variants drew different targets")
        i_shared, j_shared = i_w, j_w
        log(f"{arch}: {name} warm-up (compile) {warmup_s[name]:.1f} s")
    # Compaction shrinks its batch by halves at the end of a run: compile those shapes too.
    batch = configs["c_compact"].batch_size
    sizes = sorted({shrunk_size(batch, running, jax.device_count())
                    for running in range(batch + 1)} - {batch}, reverse=True)
    warmup_s["c_compact"] += harness.clock(lambda: [run_generate(
        dataclasses.replace(configs["c_compact"], batch_size=size), args.ks[0], max_steps=1)
        for size in sizes])[0]
    i_t = torch.from_numpy(i_shared.astype(np.int64))
    j_t = torch.from_numpy(j_shared.astype(np.int64))
    labels = {"torch_argmax_equals_generate_i": float((torch_i == i_shared).mean()),
              "max_abs_logit_diff_torch_vs_jax": float(np.abs(torch_logits - jax_logits).max())}
    log(f"{arch}: owner labels i: torch and jax agree on "
        f"{labels['torch_argmax_equals_generate_i']:.0%} of the points; max |logit diff| "
        f"{labels['max_abs_logit_diff_torch_vs_jax']:.2e}")

    subset = np.arange(min(settings["per_point_num"], n))
    batches = {"a_per_point": 1, "b1_naive": n, "b2_best": min(args.compact_batch, n)}
    thread_log: dict[str, list] = {name: [] for name in batches}

    def choose_threads(name: str) -> int:
        """The faster of 1 and 2 torch threads for this implementation, measured just before
        its run (the load of a shared machine changes which one wins)."""
        if args.threads:
            torch.set_num_threads(args.threads)
            return args.threads
        probe = probe_threads(model_nchw, model_fused, x0_t, i_t, j_t, {name: batches[name]},
                              reps=1 if args.quick else 2, candidates=(1, 2))[name]
        thread_log[name].append(probe)
        torch.set_num_threads(probe["threads"])
        return probe["threads"]

    compile_probe = None
    if arch in args.compile_probe:
        x_probe = x0_t[:min(args.compact_batch, n)].contiguous(memory_format=torch.channels_last)
        choose_threads("b2_best")
        compile_probe = probe_torch_compile(model_cl, model_fused, x_probe, i_t, j_t,
                                            reps=1 if args.quick else 5)
        log(f"{arch}: torch.compile probe {json.dumps(compile_probe['median_step_ms'])} ms/step,"
            f" compile {compile_probe['compile_s_first_call']:.0f} s")

    step_probe = probe_steps(owner, model_nchw, model_fused, x0_nhwc, i_shared, j_shared,
                             sorted({1, min(args.compact_batch, n), n}),
                             reps=1 if args.quick else 5, lr=args.lr)
    log(f"{arch}: step probe (ms per step) " + json.dumps(
        {b: {k: round(v, 1) for k, v in p["median_ms_per_step"].items()}
         for b, p in step_probe.items()}))

    x0_cl = x0_t.contiguous(memory_format=torch.channels_last)
    common = dict(lr=args.lr, tol=args.tol)

    impls: dict[str, Callable[..., dict]] = {
        "a_per_point": lambda k, s=steps: run_per_point(
            model_nchw, x0_t[subset], i_t[subset], j_t[subset], k=k, steps=s, **common),
        "b1_naive": lambda k, s=steps: run_naive_batched(
            model_nchw, x0_t, i_t, j_t, k=k, steps=s, **common),
        "b2_best": lambda k, s=steps: run_best_batched(
            model_fused, x0_cl, i_t, j_t, k=k, steps=s, capacity=args.compact_batch,
            **common),
    }
    for name, config in configs.items():
        impls[name] = (lambda config: lambda k, s=steps: run_generate(config, k, s)[0])(config)
    impls = {name: impls[name] for name in IMPLEMENTATIONS if name in impls
             and name not in args.skip}
    for name in ("a_per_point", "b1_naive", "b2_best"):  # warm-up: 2 steps each
        if name in impls:
            choose_threads(name)
            warmup_s[name], _ = harness.clock(lambda: impls[name](args.ks[0], 2))
    slow = ("b1_naive", "c_chunked")

    per_k = {}
    for k in args.ks:
        times = {name: [] for name in impls}
        results, executed, threads_used = {}, {}, {}
        for rnd in range(reps):
            names = list(impls)
            shift = rnd % len(names)  # rotate the order every round
            for name in names[shift:] + names[:shift]:
                if name in slow and rnd >= args.slow_reps:
                    continue
                chosen = None if name.startswith("c_") else choose_threads(name)
                seconds, res = harness.clock(lambda: impls[name](k))
                if name.startswith("c_"):  # what generate reports it executed
                    executed[name] = {"point_steps": last_runner["point_steps"],
                                      "block_calls": last_runner["blocks"]}
                times[name].append(seconds)
                results[name] = res
                threads_used.setdefault(name, []).append(chosen)
                log(f"{arch} k={k:g} round {rnd + 1}: {name} {times[name][-1]:.1f} s, "
                    f"{int(res['converged'].sum())}/{len(res['converged'])} converged, "
                    f"mean steps {res['steps'].mean():.1f}"
                    + ("" if chosen is None else f" ({chosen} torch threads)"))
        per_k[f"{k:g}"] = _analyse(results, times, executed, subset, n, j_shared)
        for name, used in threads_used.items():
            if name in per_k[f"{k:g}"]:
                per_k[f"{k:g}"][name]["torch_threads"] = used
    torch.set_num_threads(args.threads or 2)
    return {"arch": arch, "owner_num_params": int(sum(p.numel() for p in net.parameters())),
            "settings": {**settings, "num_points": n},
            "warmup_or_compile_s": warmup_s, "labels": labels,
            "owner_labels_i": i_shared.tolist(), "targets_j": j_shared.tolist(),
            "torch_thread_probes": thread_log, "torch_compile_probe": compile_probe,
            "step_probe": step_probe,
            "batching_bound": batching_bound(step_probe),
            "generate_batch_sizes": {"c_chunked": min(args.chunk_batch, n),
                                     "c_compact": min(args.compact_batch, n)},
            "per_k": per_k, "_owner": owner}


def _analyse(results, times, executed, subset, n, j_shared) -> dict[str, Any]:
    """Summaries, the per-point extrapolation of (a), agreement, ratios."""
    out: dict[str, Any] = {name: _summary(res, times[name]) for name, res in results.items()}
    for name, value in executed.items():
        out[name]["executed"] = value
    ref_name = next((r for r in ("b1_naive", "c_chunked", "b2_best", "c_compact")
                     if r in results), None)
    if "a_per_point" in results and ref_name is not None:
        a, ref = results["a_per_point"], results[ref_name]
        measured = int((a["steps"] + 1).sum())  # passes: one per update plus the last measure
        per_pass = out["a_per_point"]["seconds"] / measured
        est = per_pass * int((ref["steps"] + 1).sum())
        out["a_per_point"].update({
            "subset": f"the first {len(subset)} of the {n} points",
            "seconds_per_pass": per_pass,
            "extrapolated_all_points": {
                "how": f"seconds per batch-1 pass on the subset x the passes (updates + 1) "
                       f"{ref_name} took on all {n} points",
                "seconds": est, "points_per_s": n / est,
                "fingerprints_per_s": int(ref["converged"].sum()) / est},
        })
    agree = {}
    b1 = results.get("b1_naive")
    for name, res in results.items():
        sel = subset if name == "a_per_point" else np.arange(n)
        conv = res["converged"]
        agree[name] = {
            "converged_same_as_b1": (None if b1 is None else
                                     float((conv == b1["converged"][sel]).mean())),
            "steps_same_as_b1": (None if b1 is None else
                                 float((res["steps"] == b1["steps"][sel]).mean())),
            "max_abs_steps_diff_vs_b1": (None if b1 is None else
                                         int(np.abs(res["steps"] - b1["steps"][sel]).max())),
            "label_is_j_where_converged": (float((res["labels"] == j_shared[sel])[conv].mean())
                                           if conv.any() else None),
        }
    out["agreement"] = agree
    ratios = {}
    for c in ("c_compact", "c_chunked"):
        for other in ("a_per_point", "b1_naive", "b2_best"):
            if c in out and other in out:
                other_s = (out[other]["extrapolated_all_points"]["seconds"]
                           if other == "a_per_point" else out[other]["seconds"])
                ratios[f"{c}_vs_{other}"] = other_s / out[c]["seconds"]
    if "c_compact" in out and "c_chunked" in out:
        ratios["c_compact_vs_c_chunked"] = out["c_chunked"]["seconds"] / out["c_compact"]["seconds"]
    out["speedup"] = ratios
    return out


def _roofline(model_result: dict[str, Any], args, peak_gflops: float) -> dict[str, Any]:
    """FLOPs per batched step by XLA's count, achieved FLOP/s in (c), utilisation of peak."""
    owner = model_result.pop("_owner")
    batch = model_result["generate_batch_sizes"]["c_compact"]
    flops = xla_step_flops(owner, batch, float(args.ks[0]), args.lr)
    per_point_step = flops["step_flops"] / batch  # convolutions are linear in the batch
    out = {}
    for k, per in model_result["per_k"].items():
        for name in ("c_chunked", "c_compact"):
            if name not in per or not per[name].get("executed", {}).get("point_steps"):
                continue
            executed = per[name]["executed"]["point_steps"]
            useful = per[name]["total_steps"]
            seconds = per[name]["seconds"]
            achieved = executed * per_point_step / seconds
            out[f"k={k}/{name}"] = {
                "executed_point_steps": executed, "useful_point_steps": useful,
                "useful_share": useful / executed,
                "achieved_gflops": achieved / 1e9,
                "useful_gflops": useful * per_point_step / seconds / 1e9,
                "utilisation_of_peak": achieved / (peak_gflops * 1e9)}
    return {"xla_step": flops, "flops_per_point_step": per_point_step,
            "peak_gflops": peak_gflops, "generate": out}


# --- main ---------------------------------------------------------------------------------------


def _load_cifar(path: Path, quick: bool, seed: int) -> dict[str, Any]:
    if quick:  # no data set needed: random images
        rng = np.random.default_rng(seed)
        return {"test_x": rng.random((64, 32, 32, 3), np.float32)}
    from ipguard_jax import data

    train = data.load_image_folder(path, split="train")
    test = data.load_image_folder(path, split="test")
    return {"train_x": train.x, "train_y": np.asarray(train.y), "test_x": test.x,
            "test_y": np.asarray(test.y)}


def _per_model(values: list | None, models: list[str], default, name: str, parser):
    if values is None:
        return [default(m) for m in models]
    if len(values) == 1:
        return values * len(models)
    if len(values) != len(models):
        parser.error(f"--{name} takes one value or one per model")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny end-to-end check: untrained ResNet-8, random images, "
                             "8 points, 20 steps, 1 round")
    parser.add_argument("--out", type=Path, default=harness.RESULTS,
                        help="results directory (vs_pytorch.json and vs_pytorch.md)")
    parser.add_argument("--data", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--models", nargs="+", default=None,
                        help="torch owner architectures (default resnet20 resnet18)")
    parser.add_argument("--ks", type=float, nargs="+", default=None)
    parser.add_argument("--num", type=int, nargs="+", default=None,
                        help="start points (test images), one value or one per model")
    parser.add_argument("--steps", type=int, nargs="+", default=None,
                        help="most updates per point, one value or one per model")
    parser.add_argument("--reps", type=int, nargs="+", default=None,
                        help="timed rounds (each implementation once per round), per model")
    parser.add_argument("--slow-reps", type=int, default=1,
                        help="of those rounds, how many run b1_naive and c_chunked")
    parser.add_argument("--per-point-num", type=int, nargs="+", default=None,
                        help="points of the slow per-point loop (the first of the points)")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--tol", type=float, default=0.0)
    parser.add_argument("--chunk-batch", type=int, default=128,
                        help="batch_size of c_chunked (FingerprintConfig's default)")
    parser.add_argument("--compact-batch", type=int, default=None,
                        help="batch_size of c_compact and the working set of b2_best")
    parser.add_argument("--compile-probe", nargs="*", default=None,
                        help="models on which to measure torch.compile (slow to compile)")
    parser.add_argument("--skip", nargs="*", default=[], choices=IMPLEMENTATIONS)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads; 0: measure 1 and 2 per implementation, take the "
                             "faster")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-epochs", type=int, nargs="+", default=None,
                        help="epochs per model (the time cap may end training sooner)")
    parser.add_argument("--train-subset", type=int, default=50000)
    parser.add_argument("--train-max-minutes", type=float, default=14.0)
    parser.add_argument("--train-threads", type=int, default=1,
                        help="torch threads for training (one was 2-3x faster than two on "
                             "this shared 2-core CPU)")
    parser.add_argument("--train-only", action="store_true",
                        help="train (or load) the owners and stop")
    parser.add_argument("--cache-dir", type=Path,
                        default=Path.home() / ".cache" / "ipguard_jax" / "vs_pytorch")
    args = parser.parse_args(argv)
    quick = args.quick
    if args.models is None:
        args.models = ["resnet8"] if quick else ["resnet20", "resnet18"]
    if args.ks is None:
        args.ks = [0.1, 3.0] if quick else [3.0, 10.0]
    if args.compact_batch is None:
        args.compact_batch = 4 if quick else 16
    if args.compile_probe is None:
        args.compile_probe = [] if quick else args.models[:1]
    models = args.models
    args.num = _per_model(args.num, models, lambda m: 8 if quick else
                          100, "num", parser)
    args.steps = _per_model(args.steps, models, lambda m: 20 if quick else 100, "steps", parser)
    args.reps = _per_model(args.reps, models, lambda m: 1 if quick else
                           {"resnet18": 2}.get(m, 3), "reps", parser)
    args.per_point_num = _per_model(args.per_point_num, models, lambda m: 4 if quick else
                                    {"resnet18": 8}.get(m, 16),
                                    "per-point-num", parser)
    args.train_epochs = _per_model(args.train_epochs, models,
                                   lambda m: {"resnet18": 3, "resnet20": 4}.get(m, 4),
                                   "train-epochs", parser)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    run_start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - run_start:7.1f} s] {message}", flush=True)

    import torch

    env = harness.environment(rename={"cpus": "cpu_count"}, torch=torch.__version__,
                              load_average_at_start=list(os.getloadavg()))
    log(f"environment: {json.dumps(env)}")
    cifar = _load_cifar(args.data, args.quick, args.seed)
    # Start points: a fixed random order of the test images (random images with --quick).
    order = np.random.default_rng(args.seed).permutation(len(cifar["test_x"]))

    owners, training = {}, {}
    for arch, epochs in zip(args.models, args.train_epochs):
        if args.quick:
            owners[arch] = build_torch_model(arch).eval()
            training[arch] = {"arch": arch, "recipe": "untrained (random init, seed 0)",
                              "test_accuracy": None}
            continue
        recipe = {"epochs": epochs, "train_subset": args.train_subset, "batch_size": 128,
                  "lr": 0.05 if arch == "resnet18" else 0.1, "weight_decay": 5e-4,
                  "seed": args.seed, "augment": "crop4+flip", "optimizer": "sgd-nesterov",
                  "schedule": "warmup-cosine", "warmup": 0.15}
        owners[arch], training[arch] = train_or_load(
            arch, recipe, cifar, args.cache_dir, log, train_minutes=args.train_max_minutes,
            train_threads=args.train_threads)
    if args.train_only:
        return 0

    peak_sizes, peak_reps = ([512], 1) if args.quick else ([2048, 4096], 5)
    peak = {"before": measure_peak(peak_sizes, peak_reps)}
    models_out = {}
    for m, (arch, net) in enumerate(owners.items()):
        pick = np.sort(order[:args.num[m]])
        settings = {"steps": args.steps[m], "reps": args.reps[m],
                    "per_point_num": args.per_point_num[m],
                    "start_point_test_indices": pick.tolist()}
        x0 = np.ascontiguousarray(cifar["test_x"][pick], np.float32)
        models_out[arch] = bench_model(arch, net, x0, settings, args, log)
        models_out[arch]["training"] = training[arch]
    peak["after"] = measure_peak(peak_sizes, peak_reps)
    peak_gflops = max(lib["best_gflops"] for when in peak.values() for size in when.values()
                      for lib in size.values())
    log(f"matmul peak {peak_gflops:.1f} GFLOP/s")
    for arch, result in models_out.items():
        result["roofline"] = _roofline(result, args, peak_gflops)
    report = {
        "command": harness.command(__file__, argv),
        "quick": args.quick,
        "settings": {"ks": args.ks, "optimizer": f"adam(lr={args.lr})", "tol": args.tol,
                     "init": "data (CIFAR-10 test images)" if not args.quick else
                     "data (random images)",
                     "target": "random: generate's own draw (key seed), given to all",
                     "seed": args.seed, "slow_reps": args.slow_reps,
                     "compact_batch": args.compact_batch, "chunk_batch": args.chunk_batch,
                     "keep": "all", "loop": "host"},
        "environment": env,
        "matmul_peak": {**peak, "best_gflops": peak_gflops},
        "models": models_out,
        "wall_time_s": time.perf_counter() - run_start,
        "load_average_at_end": list(os.getloadavg()),
    }
    written = harness.write_results(args.out / "vs_pytorch", report, render_markdown(report))
    log("wrote " + " and ".join(str(p) for p in written))
    return 0


# --- the readable report ------------------------------------------------------------------------

_LABELS = {"a_per_point": "(a) PyTorch, per point (batch 1)",
           "b1_naive": "(b1) PyTorch, naive batch",
           "b2_best": "(b2) PyTorch, compacting working set",
           "c_chunked": "(c) ipguard_jax, compact=False",
           "c_compact": "(c) ipguard_jax, compact=True"}


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_markdown(report: dict[str, Any]) -> str:
    """A readable summary of the JSON report (the numbers come from it unchanged)."""
    env, lines = report["environment"], []
    lines += ["# IPGuard generation: ipguard_jax against PyTorch (CIFAR-10, CPU)", "",
              f"Command: `{report['command']}`", "",
              f"{env['cpu']} x{env['cpu_count']} (shared with other jobs: load average "
              f"{env['load_average_at_start'][0]:.1f} at the start, "
              f"{report['load_average_at_end'][0]:.1f} at the end), python {env['python']}, "
              f"jax {env['jax']}, torch {env['torch']}, ipguard_jax {env['ipguard_jax']}. "
              f"Whole run: {report['wall_time_s'] / 60:.1f} min. Raw numbers: `vs_pytorch.json`.",
              ""]
    st = report["settings"]
    lines += [f"Settings, equal for every implementation: {st['optimizer']}, tol "
              f"{st['tol']}, init {st['init']}, target {st['target']}, keep=\"{st['keep']}\", "
              f"loop=\"{st['loop']}\"; ipguard_jax's compact batch and the PyTorch working set "
              f"{st['compact_batch']}, chunked batch_size {st['chunk_batch']} (capped at the "
              "number of points). Times are medians over rounds that run every implementation "
              "once, in an order rotated per round; compile and warm-up are apart. "
              "fp/s = converged fingerprints per second; pts/s = start points finished per "
              "second; speed-up = the other implementation's time for the same points / "
              "ipguard_jax's time.", ""]
    for arch, m in report["models"].items():
        tr, s = m["training"], m["settings"]
        acc = tr.get("test_accuracy")
        lines += [f"## {arch}", "",
                  f"Owner: PyTorch {arch}, {m['owner_num_params']:,} parameters, test accuracy "
                  f"{_fmt(acc, 4) if acc is not None else 'n/a (untrained)'}"
                  + (f" after {tr.get('epochs_done')} epochs in {tr.get('train_seconds')} s "
                     f"({'from the cache' if tr.get('from_cache') else 'trained in this run'})"
                     if acc is not None else "") + ". "
                  f"{s['num_points']} start points, at most {s['steps']} updates per point, "
                  f"{s['reps']} round(s) ({report['settings']['slow_reps']} for the full-batch "
                  f"b1 and c_chunked); (a) ran on the first {s['per_point_num']} points. "
                  f"Owner labels: torch and the converted JAX model agree on "
                  f"{m['labels']['torch_argmax_equals_generate_i']:.0%} of the start points "
                  f"(max |logit difference| {m['labels']['max_abs_logit_diff_torch_vs_jax']:.1e})."
                  " PyTorch runs take the faster of 1 and 2 threads, measured just before each "
                  "run (the threads used are in the JSON).", ""]
        for k, per in m["per_k"].items():
            rows = []
            for name in IMPLEMENTATIONS:
                if name not in per:
                    continue
                r = per[name]
                speed = per["speedup"].get(f"c_compact_vs_{name}")
                rates = [_fmt(r["seconds"], 1), _fmt(r["fingerprints_per_s"], 3),
                         _fmt(r["points_per_s"], 3), f"{r['converged_share']:.0%}",
                         _fmt(r["mean_steps"], 1)]
                if name == "a_per_point":
                    e = r["extrapolated_all_points"]
                    rows += [[f"{_LABELS[name]}, {r['points']} points measured", *rates, "-",
                              len(r["times_s"])],
                             [f"{_LABELS[name]}, extrapolated to {s['num_points']} points",
                              _fmt(e["seconds"], 1), _fmt(e["fingerprints_per_s"], 3),
                              _fmt(e["points_per_s"], 3), "-", "-", f"{_fmt(speed)}x", "-"]]
                    continue
                rows.append([_LABELS[name], *rates,
                             "-" if speed is None else f"{_fmt(speed)}x", len(r["times_s"])])
            lines += [f"### k = {k}", "", *harness.table(
                ["implementation", "time (s)", "fp/s", "pts/s", "converged", "mean steps",
                 "speed-up of c_compact", "rounds"], rows)]
            sp = per["speedup"]
            lines += ["", "Speed-ups of ipguard_jax (other time / ours): " + ", ".join(
                f"{key.replace('_vs_', ' vs ')} {value:.2f}x" for key, value in sp.items()), ""]
        rf = m["roofline"]
        lines += [f"Roofline: XLA counts {rf['xla_step']['step_flops'] / 1e9:.2f} GFLOP per "
                  f"optimisation step of a batch of {rf['xla_step']['batch']} "
                  f"({rf['flops_per_point_step'] / 1e6:.0f} MFLOP per point-step); measured "
                  f"float32 matmul peak {rf['peak_gflops']:.0f} GFLOP/s.", "",
                  "Executed point-steps count every point of every compiled block "
                  "(`batch x block steps`, done and padding slots included); useful ones are "
                  "the updates the points took (the sum of their step counts).", "",
                  *harness.table(
                      ["run", "executed point-steps", "useful share", "achieved GFLOP/s",
                       "utilisation of peak"],
                      [[key, g["executed_point_steps"], f"{g['useful_share']:.0%}",
                        f"{g['achieved_gflops']:.1f}", f"{g['utilisation_of_peak']:.1%}"]
                       for key, g in rf["generate"].items()]), ""]
        sp_ = m.get("step_probe") or {}
        if sp_:
            lines += ["One optimisation step at a fixed batch, without the loop around it "
                      "(ms per step, alternating medians; ipguard_jax: a compiled block of 4 "
                      "steps / 4; PyTorch: one input-gradient pass):", "",
                      *harness.table(
                          ["batch", "ipguard_jax", "torch NCHW 1 thread", "2 threads",
                           "torch channels_last + folded BN 1 thread", "2 threads",
                           "load average"],
                          [[b, *(f"{p['median_ms_per_step'][name]:.1f}" for name in (
                              "jax_step", "torch_nchw_1t", "torch_nchw_2t",
                              "torch_cl_folded_1t", "torch_cl_folded_2t")),
                            f"{p['load_average'][0]:.1f}"] for b, p in sp_.items()]), ""]
        bound = m.get("batching_bound")
        if bound:
            passes = {k: v["a_per_point"].get("seconds_per_pass")
                      for k, v in m.get("per_k", {}).items() if "a_per_point" in v}
            passes = {k: 1e3 * v for k, v in passes.items() if v}
            lines += [f"Batching bound: one input-gradient pass at batch 1 costs "
                      f"{bound['torch_batch1_ms']:.1f} ms in PyTorch ({bound['jax_batch1_ms']:.1f}"
                      " ms in ipguard_jax); a whole update of the per-point loop (a), with Adam, "
                      "clamping and the Python around it, measured "
                      + ", ".join(f"{v:.1f} ms (k={k})" for k, v in passes.items())
                      + ". Every point takes the same updates in (a) and with compaction, so at "
                      "equal steps c/a is at most the cost of an update in (a) over the cost of "
                      "one point-step in a batch:", ""]
            per_update = max(passes.values()) if passes else bound["torch_batch1_ms"]
            lines += [*harness.table(
                ["batch", "ipguard_jax ms per point-step", "fastest PyTorch ms per point-step",
                 "largest possible c/a", "largest possible batched-PyTorch/a"],
                [[b, f"{v['jax_ms_per_point_step']:.2f}", f"{v['torch_ms_per_point_step']:.2f}",
                  f"{per_update / v['jax_ms_per_point_step']:.1f}x",
                  f"{per_update / v['torch_ms_per_point_step']:.1f}x"]
                 for b, v in bound["by_batch"].items()]), ""]
        cp = m.get("torch_compile_probe")
        if cp:
            ms = cp["median_step_ms"]
            lines += [f"torch.compile (dynamic shapes, batch {cp['batch']}): compile "
                      f"{cp['compile_s_first_call']:.0f} s (+{cp['compile_s_second_shape']:.0f} s "
                      f"for a second batch size); input-gradient step {ms['compiled']:.1f} ms "
                      f"against {ms['eager']:.1f} ms eager and {ms['eager_bn_folded']:.1f} ms "
                      "eager with BatchNorm folded into the convolutions (b2 runs the last).", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
