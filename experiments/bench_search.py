"""Benchmark: one SCNAS search step (2 sampled ops per edge) vs DARTS (all 8 ops).

Times a full bi-level iteration (Theta step + alpha step, forward and backward) of the
12-cell supernet and reads XLA's temp memory from `compiled.memory_analysis()`, both
networks in one run on the same inputs. Also reports the compile time of the SCNAS step.
Not a test: numbers go to BENCHMARKS.md. Last line:
`scnas/darts time_ratio=X mem_ratio=Y compile_s=Z`.

    python experiments/bench_search.py --size 32 --width 8 --repeats 3
"""

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxnas import losses  # noqa: E402
from jaxnas import network  # noqa: E402
from jaxnas import search  # noqa: E402
from jaxnas import train  # noqa: E402


def _darts_weights(key, arch, tau):
    del key, tau
    return jax.nn.softmax(arch, axis=-1)  # DARTS: every op, softmax(alpha) weights.


def make_iteration(apply_fn, sample_fn, tx_w, tx_a, loss_fn):
    """One bi-level iteration: Theta step on one batch, alpha step on another."""

    def loss(params, arch, batch, key):
        return loss_fn(apply_fn(params, batch["image"], sample_fn(key, arch, 1.0)),
                       batch["label"])

    def iteration(params, arch, opt_w, opt_a, batch_w, batch_a, key):
        g_w = jax.grad(loss)(params, arch, batch_w, key)
        upd, opt_w = tx_w.update(g_w, opt_w, params)
        params = jax.tree.map(jnp.add, params, upd)
        g_a = jax.grad(loss, argnums=1)(params, arch, batch_a, key)
        upd, opt_a = tx_a.update(g_a, opt_a, arch)
        return params, arch + upd, opt_w, opt_a

    return iteration


def measure(name, iteration, args, repeats):
    start = time.time()
    compiled = jax.jit(iteration).lower(*args).compile()
    compile_s = time.time() - start
    temp = compiled.memory_analysis().temp_size_in_bytes
    jax.block_until_ready(compiled(*args))  # Warm-up.
    times = []
    for r in range(repeats):
        # A new key per repeat: SCNAS's cost depends on the sampled pair of ops.
        step_args = args[:-1] + (jax.random.key(100 + r),)
        start = time.time()
        jax.block_until_ready(compiled(*step_args))
        times.append(time.time() - start)
    step_s = float(np.mean(times))
    print(f"{name:6s} step {step_s:8.3f} s  temp {temp / 2**20:9.1f} MiB  "
          f"compile {compile_s:6.1f} s", flush=True)
    return step_s, temp, compile_s


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--impl", default="auto")
    args = parser.parse_args()
    impl = train.resolve_impl(args.impl)
    shape = (args.batch, args.size, args.size, args.size)
    print(f"jax {jax.__version__} backend {jax.default_backend()} devices {jax.devices()} "
          f"impl {impl} patch {args.size}^3 batch {args.batch} width {args.width}", flush=True)
    key = jax.random.key(0)
    params = network.init_network(key, in_channels=1, num_classes=3, width=args.width)
    arch = search.init_arch(jax.random.key(1), scale=1.0)
    rng = np.random.default_rng(0)
    batches = [{"image": jnp.asarray(rng.normal(size=shape + (1,)), jnp.float32),
                "label": jnp.asarray(rng.integers(0, 3, size=shape), jnp.int32)}
               for _ in range(2)]
    tx_w, tx_a = search.make_optimizers(lr_w=1e-3, betas_w=(0.9, 0.999))
    loss_fn = functools.partial(losses.dice_ce, num_classes=3)
    inputs = (params, arch, tx_w.init(params), tx_a.init(arch), *batches, key)
    scnas = make_iteration(functools.partial(network.apply_network, impl=impl),
                           search.sample_edges, tx_w, tx_a, loss_fn)
    darts = make_iteration(functools.partial(network.apply_network_dense, impl=impl),
                           _darts_weights, tx_w, tx_a, loss_fn)
    t_s, m_s, c_s = measure("scnas", scnas, inputs, args.repeats)
    t_d, m_d, _ = measure("darts", darts, inputs, args.repeats)
    print(f"scnas/darts time_ratio={t_s / t_d:.3f} mem_ratio={m_s / m_d:.3f} "
          f"compile_s={c_s:.1f}")


if __name__ == "__main__":
    main()
