"""A derived network's training step on one CPU device against a data mesh of N
simulated host devices in the same process (the batch split over them).

XLA:CPU keeps the 2 cores of these machines ~63% busy in a derived 64^3 step (the
profile's thunk times over 2 threads); N devices run their halves of the batch side by
side. Run once per N (XLA_FLAGS is read when jax starts):

    python experiments/bench_cpu_devices.py --devices 1 --genotype runs/x/genotype.json
    python experiments/bench_cpu_devices.py --devices 2 --genotype runs/x/genotype.json

Prints the first call (compile) and the median of 6 steps. Not a test.
"""

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--width_growth", type=int, default=3)
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--genotype", default="", help="a genotype.json (default random:0)")
    args = p.parse_args()
    if args.devices > 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.devices}")
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    import profile_step

    args.seed, args.impl = 0, "fast"
    step, state, batch = profile_step.derived_step(args)  # batch 2, fwd + bwd + Adam
    (b,) = batch(0)
    if args.devices > 1:
        mesh = Mesh(np.array(jax.devices()[:args.devices]), ("data",))
        rep, dat = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh,
                                                                         PartitionSpec("data"))
        state, b = jax.device_put(state, rep), jax.device_put(b, dat)
        step = jax.jit(step.__wrapped__, donate_argnums=0, in_shardings=(rep, dat),
                       out_shardings=rep)
    start = time.time()
    state = jax.block_until_ready(step(state, b))
    print(f"first call (compile) {time.time() - start:.1f} s")
    times = []
    for _ in range(6):
        start = time.time()
        state = jax.block_until_ready(step(state, b))
        times.append(time.time() - start)
    print(f"{args.devices} device(s), {args.size}^3 batch 2: step median "
          f"{np.median(times):.3f} s ({', '.join(f'{t:.3f}' for t in times)})")


if __name__ == "__main__":
    main()
