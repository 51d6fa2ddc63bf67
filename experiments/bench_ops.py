"""Per-op microbenchmark: fwd + bwd time of every candidate op, "fast" vs "xla" impl.

    python experiments/bench_ops.py                    # 32^3, 16 channels, batch 1
    python experiments/bench_ops.py --size 48 --reps 5 --strides 1
    python experiments/bench_ops.py --network          # + the supernet step at 32^3, width 8

Each row is one jitted value_and_grad of sum(op(x) * cotangent) w.r.t. (params, x): the
median of --reps runs after one warm-up, and the compile time. "edge" rows run the op
through ops.apply_edge_op (lax.switch over 8 checkpointed branches, the supernet's form).
The last line is a summary. Run it on a GPU machine too: "xla" is the cuDNN form.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxnas.nn import ops  # noqa: E402
from jaxnas.spaces.scnas import network  # noqa: E402
from jaxnas.spaces.scnas import space  # noqa: E402


def _time(fn, args, reps):
    """(compile seconds, median run seconds) of jitted fn on args."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(*args))
    runs = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        runs.append(time.perf_counter() - start)
    return compile_s, float(np.median(runs))


def _op_loss(name, stride, impl, switch):
    def loss(params, x, cotangent):
        if switch:
            y = ops.apply_edge_op(space.OP_NAMES.index(name), params, x, stride=stride, impl=impl)
        else:
            y = ops.apply_op(name, params[name], x, stride=stride, impl=impl)
        return jnp.sum(y * cotangent)

    return jax.value_and_grad(loss, (0, 1))


def bench_ops(size, channels, reps, strides, switch):
    rows = []
    key_x, key_p, key_c = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(key_x, (1, size, size, size, channels))
    for stride in strides:
        edge_params = ops.init_edge(key_p, channels, stride)
        cotangent = jax.random.normal(key_c, ops.strided_shape(x.shape, stride))
        for name in space.OP_NAMES:
            times = {}
            for impl in ops.IMPLS:
                fn = _op_loss(name, stride, impl, switch)
                times[impl] = _time(fn, (edge_params, x, cotangent), reps)
            rows.append((name, stride, times))
            fast, xla = times["fast"], times["xla"]
            print(
                f"{name:20s} s{stride} {'edge' if switch else 'op':4s} "
                f"fast {1e3 * fast[1]:8.1f} ms (compile {fast[0]:5.2f} s)   "
                f"xla {1e3 * xla[1]:8.1f} ms (compile {xla[0]:5.2f} s)   "
                f"xla/fast {xla[1] / max(fast[1], 1e-9):6.1f}x",
                flush=True,
            )
    return rows


def bench_network(size, width, reps, impl):
    """Compile and step time of value_and_grad of the supernet, one sampled architecture."""
    params = network.init_network(jax.random.key(0), in_channels=1, num_classes=3, width=width)
    image = jax.random.normal(jax.random.key(1), (1, size, size, size, 1))
    rng = np.random.default_rng(0)
    shape = (space.NUM_CELL_TYPES, space.NUM_EDGES)
    first = rng.integers(0, space.NUM_OPS, shape)
    index = np.stack([first, (first + rng.integers(1, space.NUM_OPS, shape)) % space.NUM_OPS], -1)
    weight = rng.dirichlet([1.0, 1.0], shape).astype(np.float32)

    def loss(p, w, i):
        logits = network.apply_network(p, image, {"index": i, "weight": w}, impl=impl)
        return jnp.mean(jnp.square(logits))

    fn = jax.value_and_grad(loss, (0, 1))
    compile_s, run_s = _time(fn, (params, jnp.asarray(weight), jnp.asarray(index, jnp.int32)), reps)
    print(
        f"network {size}^3 width {width} {impl}: {network.num_params(params)} params, "
        f"compile {compile_s:.1f} s, fwd+bwd step {1e3 * run_s:.0f} ms",
        flush=True,
    )
    return compile_s, run_s


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--strides", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--edge", action="store_true", help="run ops through apply_edge_op")
    parser.add_argument("--network", action="store_true", help="also time the supernet step")
    parser.add_argument("--network_size", type=int, default=32)
    parser.add_argument("--network_width", type=int, default=8)
    args = parser.parse_args()
    print(
        f"jax {jax.__version__} on {jax.devices()[0].device_kind}; x = (1, {args.size}, "
        f"{args.size}, {args.size}, {args.channels}); fwd+bwd, median of {args.reps}"
    )
    rows = bench_ops(args.size, args.channels, args.reps, args.strides, args.edge)
    summary = []
    for impl in ops.IMPLS:
        total = sum(times[impl][1] for _, _, times in rows)
        summary.append(f"{impl} {1e3 * total:.0f} ms")
    if args.network:
        for impl in ops.IMPLS:
            compile_s, run_s = bench_network(args.network_size, args.network_width, args.reps, impl)
            summary.append(f"network {impl} compile {compile_s:.1f} s step {1e3 * run_s:.0f} ms")
    print(f"SUMMARY sum over {len(rows)} op rows: " + "; ".join(summary))


if __name__ == "__main__":
    main()
