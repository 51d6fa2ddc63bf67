"""Run by sharding_test.py in a subprocess with 4 simulated CPU devices.

`python -m tests.sharding_check` with XLA_FLAGS=--xla_force_host_platform_device_count=4:
one SCNAS weights step and one supernet forward pass (width 4, 2 x 32 x 16 x 16 x 1, 3 classes),
on one device and sharded; prints one JSON line of the largest differences and seconds.
"""

import functools
import json
import time

import jax
import numpy as np

from jaxnas import sharding
from jaxnas.nn import losses
from jaxnas.search import bilevel
from jaxnas.spaces.scnas import network

WIDTH, NUM_CLASSES, IMPL = 4, 3, "xla"
# Patches 32 x 16 x 16, not 16^3: x = 16 over space:2 leaves 1 voxel per slab at the
# bottom level, where XLA aborts (sharding.MIN_BOTTOM_SLAB); x = 32 allows space <= 2, so
# the space-only mesh is data:1,space:2 on 2 of the 4 devices, not data:1,space:4.
PATCH = (32, 16, 16)
# spec -> (number of devices, also compare a weights step). The step compiles slowly on
# 2 cores: data:1,space:2 checks the forward pass only.
MESHES = {"data:2,space:2": (4, True), "data:1,space:2": (2, False), "data:2": (2, True)}


def _batch():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, *PATCH, 1)).astype(np.float32)
    label = rng.integers(0, NUM_CLASSES, size=(2, *PATCH)).astype(np.int32)
    return {"image": image, "label": label}


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main():
    assert jax.device_count() == 4, jax.devices()
    tick = time.time()
    apply_fn = functools.partial(network.apply_network, impl=IMPL)
    loss_fn = functools.partial(losses.dice_ce, num_classes=NUM_CLASSES, ce_weight=1.0)
    # Adam's first step is lr * g / (|g| + eps): with the usual eps = 1e-8 it is lr * sign(g)
    # and a gradient near 0 may flip sign with the summation order (2 * lr apart). eps = 1
    # keeps the update smooth in g, and lr = 1 moves params by up to ~1.
    tx_w, tx_a = bilevel.make_optimizers(lr_w=1.0, betas_w=(0.9, 0.999), eps=1.0)
    step_w, _ = bilevel.make_steps(apply_fn=apply_fn, loss_fn=loss_fn, tx_w=tx_w, tx_a=tx_a,
                                  tau_fn=bilevel.make_tau_fn(1))
    # Host copies: a donated state must not share device buffers with anything reused.
    params = jax.device_get(network.init_network(
        jax.random.key(0), in_channels=1, num_classes=NUM_CLASSES, width=WIDTH))
    init = lambda: bilevel.init_state(params, bilevel.init_arch(), tx_w, tx_a)  # noqa: E731
    batch, key = _batch(), jax.random.key(1)
    choice = bilevel.sample_edges(key, bilevel.init_arch(), 1.0)
    forward = lambda p, x, c: apply_fn(p, x, c)  # noqa: E731
    rep_logits = np.asarray(jax.jit(forward)(params, batch["image"], choice))
    ref_state, ref_metrics = jax.jit(step_w)(init(), batch, key)
    ref_params = jax.device_get(ref_state.params)
    seconds = {"reference": time.time() - tick}
    out = {}
    for spec, (num_devices, with_step) in MESHES.items():
        tick = time.time()
        axes = sharding.parse_mesh(spec)
        sharding.check_divisible(axes, 2, PATCH)
        mesh = sharding.make_mesh(axes, jax.devices()[:num_devices])
        on_mesh = sharding.put_batch(batch, mesh)
        assert on_mesh["image"].sharding.spec == jax.sharding.PartitionSpec("data", "space")
        result = {}
        rep = sharding.replicated(mesh)
        logits = jax.jit(forward, in_shardings=(rep, sharding.batch_sharding(mesh)["image"],
                                                rep))(params, on_mesh["image"], choice)
        result.update({"logits": _max_diff(rep_logits, logits),
                  "logits_scale": float(np.max(np.abs(rep_logits))),
                  "logits_devices": len(logits.sharding.device_set)})
        if with_step:
            state = sharding.put_replicated(init(), mesh)
            new_state, metrics = sharding.shard_step(step_w, mesh)(state, on_mesh, key)
            result.update({
                "params": _max_diff(ref_params, new_state.params),
                "params_moved": _max_diff(params, ref_params),
                "grad_norm": abs(float(ref_metrics["train/grad_norm_w"]) -
                                 float(metrics["train/grad_norm_w"])),
                "grad_norm_scale": float(ref_metrics["train/grad_norm_w"]),
                "loss": abs(float(ref_metrics["train/loss_w"]) -
                            float(metrics["train/loss_w"])),
                "step": int(new_state.step),
                "params_devices": len(jax.tree.leaves(new_state.params)[0].sharding
                                      .device_set)})
        out[spec] = result
        seconds[spec] = time.time() - tick
    out["seconds"] = seconds
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
