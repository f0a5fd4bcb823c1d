"""Runs ``generate`` in a fresh process, for tests that need their own JAX runtime: several CPU
devices, several processes under ``jax.distributed``, or a run killed part-way.

Usage: ``python generate_worker.py SPEC_JSON`` where the spec says how many CPU devices to
make, whether to join a distributed run, the configs to run (each sharded over all devices
and, with ``compare``, also on one device), and where to write the results (``.npz``).
"""

from __future__ import annotations

import json
import os
import sys

import jax

FIELDS = ("x", "labels", "i", "j", "loss", "converged", "steps", "source")


def main() -> None:
    spec = json.loads(sys.argv[1])
    jax.config.update("jax_num_cpu_devices", spec.get("devices", 1))
    if "process_id" in spec:
        jax.distributed.initialize(coordinator_address=spec["coordinator"],
                                   num_processes=spec["num_processes"],
                                   process_id=spec["process_id"])
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import numpy as np

    import ipguard_jax as ipg
    from ipguard_jax.data import load_digits
    from conftest import mlp_apply, train_mlp

    digits = load_digits()
    if spec.get("model", "mlp") == "mlp":
        owner = ipg.Classifier(mlp_apply, train_mlp(digits.x[:700], digits.y[:700], seed=0),
                               input_shape=(8, 8, 1))
    else:  # an untrained small CNN: convolutions, batch statistics in eval mode
        from flax import nnx

        from ipguard_jax import models
        model = models.create("cnn", num_classes=10, in_channels=1, widths=(8, 16),
                              rngs=nnx.Rngs(0))
        owner = ipg.Classifier.from_nnx(model, input_shape=(8, 8, 1))
    compiled = []  # with "collectives": the compiled programs of the loop's compaction
    if spec.get("collectives"):
        from ipguard_jax.runners import device_compacted

        segment = device_compacted._segment

        def spy(*args, **kwargs):
            compiled.append(segment.lower(*args, **kwargs).compile().as_text())
            return segment(*args, **kwargs)

        device_compacted._segment = spy
    results = {}
    for index, fields in enumerate(spec["configs"]):
        config = ipg.FingerprintConfig(**fields)
        data = digits.x[1400:] if config.init == "data" else None
        runs = ((("sharded", "auto"), ("single", None)) if spec.get("compare")
                else (("run", "auto"),))
        for name, mesh in runs:
            fp = ipg.generate(owner, config, key=spec.get("key", 0), data=data, progress=False,
                              mesh=mesh, method=spec.get("method", "ipguard"),
                              checkpoint=spec.get("checkpoint"),
                              checkpoint_every=spec.get("checkpoint_every", 1))
            prefix = f"{index}_{name}_"
            results.update({prefix + f: np.asarray(getattr(fp, f)) for f in FIELDS})
            results[prefix + "suspect_labels"] = ipg.query_labels(fp, owner, batch_size=13,
                                                                  mesh=mesh)
            results[prefix + "devices"] = np.asarray(fp.metadata["devices"])
            results[prefix + "processes"] = np.asarray(fp.metadata["processes"])
            for counter in ("point_steps", "syncs", "refills", "blocks"):
                if counter in fp.metadata["runner"]:
                    results[prefix + counter] = np.asarray(fp.metadata["runner"][counter])
            if compiled:
                text, compiled[:] = "\n".join(compiled), []
                for op in ("all-reduce", "all-gather", "all-to-all", "collective-permute",
                           "reduce-scatter"):
                    results[prefix + op] = np.asarray(text.count(f" {op}("))
    out = spec["out"]
    tmp = f"{out}.tmp.npz"
    np.savez(tmp, **results)
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
