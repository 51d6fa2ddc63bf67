"""Calibrates the analytic activation memory (spaces/scnas/cost.py) against XLA's
`compiled.memory_analysis()` of the training steps jaxnas runs, and prints a markdown
table: per network and patch, the analytic bytes, the measured temp bytes and their ratio.

    python experiments/calibrate_memory.py                 # CPU: width 16, stem stride 2
    python experiments/calibrate_memory.py --sizes 32,48 --genotypes 0,1,2

The median ratio per kind is what cost.CALIBRATION holds. Compiles only, runs no step.
On a GPU the same command calibrates against the GPU compiler's buffers.
"""

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxnas import config as config_lib  # noqa: E402
from jaxnas import fit  # noqa: E402
from jaxnas import models  # noqa: E402
from jaxnas import phases  # noqa: E402
from jaxnas.search import bilevel  # noqa: E402
from jaxnas.search.strategies import gradient_search  # noqa: E402
from jaxnas.spaces import genotype as genotype_lib  # noqa: E402
from jaxnas.spaces.scnas import cost  # noqa: E402


def _batch(size, batch, channels):
    shape = (batch, size, size, size)
    return {"image": jax.ShapeDtypeStruct(shape + (channels,), jnp.float32),
            "label": jax.ShapeDtypeStruct(shape, jnp.int32)}


def derived_row(args, seed, size):
    desc = models.describe(f"random:{seed}", in_channels=args.channels,
                           num_classes=args.classes, width=args.width,
                           stem_stride=args.stem_stride)
    model = models.build(desc, impl="fast", ce_weight=1.0, dice_background=False,
                         batch_dice=True)
    tx, step = phases.fixed_programs(model, 1e-2, (0.9, 0.999), "cosine", None)
    state = jax.eval_shape(lambda: fit.init_state(model.init(jax.random.key(0)), tx))
    compiled = step.lower(state, _batch(size, args.batch, args.channels)).compile()
    index = genotype_lib.genotype_to_indices(desc["genotype"])
    estimate = cost.derived_activation_bytes(
        index, in_channels=args.channels, num_classes=args.classes, width=args.width,
        patch_size=(size,) * 3, batch_size=args.batch, stem_stride=args.stem_stride,
        calibrated=False)
    return f"derived random:{seed}", estimate, compiled.memory_analysis().temp_size_in_bytes


def supernet_row(args, size):
    search = dataclasses.replace(config_lib.SearchConfig(), width=args.width,
                                 stem_stride=args.stem_stride, budget_minutes=1.0)
    programs = gradient_search.search_programs(search, args.channels, args.classes, 1, True)
    state = jax.eval_shape(lambda: bilevel.init_state(
        programs.init_params(jax.random.key(0)), bilevel.init_arch(), programs.tx_w,
        programs.tx_a))
    key = jax.eval_shape(lambda: jax.random.key(0))
    batch = _batch(size, args.batch, args.channels)
    temp = max(s.lower(state, batch, key).compile().memory_analysis().temp_size_in_bytes
               for s in (programs.step_w, programs.step_a))
    estimate = cost.supernet_activation_bytes(
        in_channels=args.channels, num_classes=args.classes, width=args.width,
        patch_size=(size,) * 3, batch_size=args.batch, stem_stride=args.stem_stride,
        calibrated=False)
    return "supernet", estimate, temp


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="32,64")
    p.add_argument("--genotypes", default="0,1,2")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--stem_stride", type=int, default=2)
    p.add_argument("--skip_supernet", action="store_true")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for size in sizes:
        for seed in [int(g) for g in args.genotypes.split(",") if g]:
            rows.append((size, *derived_row(args, seed, size)))
            print(rows[-1], flush=True)
        if not args.skip_supernet:
            rows.append((size, *supernet_row(args, size)))
            print(rows[-1], flush=True)
    print(f"\n{jax.devices()[0].device_kind}, width {args.width}, batch {args.batch}, "
          f"stem stride {args.stem_stride}, {time.strftime('%Y-%m-%d')}\n")
    print("| network | patch | analytic MiB | measured MiB | measured / analytic |")
    print("|---|---|---|---|---|")
    ratios = {}
    for size, name, estimate, temp in rows:
        ratios.setdefault(name.split()[0], []).append(temp / estimate)
        print(f"| {name} | {size}^3 | {estimate / 2**20:.1f} | {temp / 2**20:.1f} | "
              f"{temp / estimate:.2f} |")
    for kind, r in ratios.items():
        print(f"\n{kind}: median ratio {np.median(r):.2f} (range {min(r):.2f}-{max(r):.2f})")


if __name__ == "__main__":
    main()
