"""Benchmark: InstanceNorm's hand-written VJP (ops.instance_norm) against autodiff of the
same formula, in a derived-network training step and a SCNAS search iteration, back to
back in one process (same machine state). Prints one line per (step, form).

    python experiments/bench_norm.py --size 64 --width 16 --genotype runs/.../genotype.json
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import profile_step  # noqa: E402
from jaxnas.nn import ops  # noqa: E402


def autodiff_norm(params, x):
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=(1, 2, 3), keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + ops.NORM_EPS) * params["scale"] + params["bias"]


def time_step(builder, args, repeats):
    fn, state, inputs = builder(args)
    compiled = fn.lower(state, *inputs(0)).compile()
    state = jax.block_until_ready(compiled(state, *inputs(0)))
    times = []
    for i in range(repeats):
        t = time.time()
        state = jax.block_until_ready(compiled(state, *inputs(i + 1)))
        times.append(time.time() - t)
    return float(np.median(times))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--search_size", type=int, default=48)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--genotype", default="")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    handwritten = ops.instance_norm
    for what, builder, size in (("derived", profile_step.derived_step, args.size),
                                ("search", profile_step.search_step, args.search_size)):
        res = {}
        for form, fn in (("autodiff", autodiff_norm), ("vjp", handwritten),
                         ("autodiff", autodiff_norm), ("vjp", handwritten)):
            ops.instance_norm = fn
            s = time_step(builder, argparse.Namespace(**{**vars(args), "size": size}),
                          args.repeats)
            res.setdefault(form, []).append(s)
            print(f"{what} {size}^3 width {args.width} norm={form}: {s:.3f} s", flush=True)
        a, v = min(res["autodiff"]), min(res["vjp"])
        print(f"{what} vjp/autodiff time ratio {v / a:.3f} (best of 2 compiles each)")
    ops.instance_norm = handwritten


if __name__ == "__main__":
    main()
