"""Profile: where a search iteration's and a derived-network step's time goes, by op kind.

Runs the step under `jax.profiler`, reads the per-thunk events of the trace (XLA:CPU
names each fused op), maps every event to the `jax.named_scope` of ops.py it came from
(conv_slabs, depthwise_taps, instance_norm, pointwise_conv, pools, upsample, ...; the
op_name metadata of the compiled HLO) and to forward or backward (`transpose(` in the
name), and prints a markdown table of milliseconds per step summed over threads, with
the event count. Events outside every scope are grouped by their jax primitive
(loss, Adam update, switch plumbing, copies).

    python experiments/profile_step.py --what=search --size 48 --width 16
    python experiments/profile_step.py --what=derived --size 64 --width 16

Not a test: the table goes to BENCHMARKS.md.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxnas import models  # noqa: E402
from jaxnas.nn import losses  # noqa: E402
from jaxnas.search import bilevel  # noqa: E402
from jaxnas.spaces import genotype as genotype_lib  # noqa: E402
from jaxnas.spaces.scnas import network  # noqa: E402

SCOPES = ("depthwise_taps_bwd", "instance_norm_bwd", "depthwise_taps", "conv_slabs",
          "instance_norm", "pointwise_conv", "factorized_reduce", "max_pool", "avg_pool",
          "upsample", "leaky_relu")
CONTAINERS = ("ThunkExecutor", "while", "$", "Pjit", "Slinky", "conditional", "call",
              "CommonPjRt", "Handle inputs")


def _batch(size, batch, classes, seed):
    rng = np.random.default_rng(seed)
    return {"image": jnp.asarray(rng.normal(size=(batch, size, size, size, 1)), jnp.float32),
            "label": jnp.asarray(rng.integers(0, classes, (batch, size, size, size)),
                                 jnp.int32)}


def _loss(logits, label, classes):
    return losses.dice_ce(logits, label, num_classes=classes, ce_weight=1.0,
                          include_background=False, batch_dice=True)


def search_step(args):
    """One SCNAS bi-level iteration (Theta step, then alpha step) of the stride-2 supernet."""
    params = network.init_network(jax.random.key(0), in_channels=1, num_classes=args.classes,
                                  width=args.width, stem_stride=2,
                                  width_growth=args.width_growth)
    arch = bilevel.init_arch(jax.random.key(1))
    tx_w, tx_a = optax.adam(1e-2), optax.adam(3e-2)

    def loss(p, a, b, key):
        logits = network.apply_network(p, b["image"], bilevel.sample_edges(key, a, 0.5),
                                       impl="fast")
        return _loss(logits, b["label"], args.classes)

    def iteration(state, bw, ba, key):
        p, a, ow, oa = state
        g = jax.grad(loss)(p, a, bw, key)
        u, ow = tx_w.update(g, ow, p)
        p = optax.apply_updates(p, u)
        ga = jax.grad(loss, argnums=1)(p, a, ba, key)
        u, oa = tx_a.update(ga, oa, a)
        return (p, optax.apply_updates(a, u), ow, oa)

    state = (params, arch, tx_w.init(params), tx_a.init(arch))
    bw, ba = (_batch(args.size, 2, args.classes, s) for s in (0, 1))
    return jax.jit(iteration, donate_argnums=0), state, lambda i: (bw, ba, jax.random.key(i))


def derived_step(args):
    """One training step (fwd, bwd, Adam) of a random genotype's derived network."""
    desc = models.describe(f"random:{args.seed}", in_channels=1, num_classes=args.classes,
                           width=args.width, stem_stride=2, width_growth=args.width_growth)
    if args.genotype:
        desc["genotype"] = genotype_lib.load_genotype(args.genotype)
    model = models.build(desc, impl=getattr(args, "impl", "fast"), ce_weight=1.0,
                         dice_background=False, batch_dice=True)
    params = model.init(jax.random.key(0))
    tx = optax.adam(1e-2)

    def step(state, b):
        p, o = state
        g = jax.grad(model.loss)(p, b)
        u, o = tx.update(g, o, p)
        return (optax.apply_updates(p, u), o)

    b = _batch(args.size, 2, args.classes, 0)
    return jax.jit(step, donate_argnums=0), (params, tx.init(params)), lambda i: (b,)


def kind_of(op_name: str, event: str) -> str:
    direction = "bwd" if "transpose(" in op_name else "fwd"
    for scope in SCOPES:
        if f"/{scope}/" in f"/{op_name}/" or f"({scope})" in op_name:
            return scope if scope.endswith("_bwd") else f"{scope} {direction}"
    if not op_name:
        return f"(no op_name) {re.sub(r'[._]?[0-9]+$', '', event)}"
    last = op_name.split("/")[-1]
    return f"other {direction}: {re.sub(r'[0-9]+$', '', last)}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--what", choices=["search", "derived"], default="search")
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--width_growth", type=int, default=2, help="node width factor per level")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--genotype", default="", help="derived: a genotype.json (default random)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    fn, state, inputs = (search_step if args.what == "search" else derived_step)(args)
    start = time.time()
    compiled = fn.lower(state, *inputs(0)).compile()
    compile_s = time.time() - start

    def run(state, i):
        return compiled(state, *inputs(i))

    state = jax.block_until_ready(run(state, 0))
    times = []
    for i in range(args.steps):
        t = time.time()
        state = jax.block_until_ready(run(state, i + 1))
        times.append(time.time() - t)
    trace_dir = tempfile.mkdtemp(prefix="jaxnas-profile-")
    jax.profiler.start_trace(trace_dir)
    for i in range(args.steps):
        state = jax.block_until_ready(run(state, 100 + i))
    jax.profiler.stop_trace()
    # op_name of every HLO instruction of the compiled step (the trace names instructions).
    names = {}
    for line in compiled.as_text().splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line)
        s = re.search(r'op_name="([^"]+)"', line)
        if m and s:
            names[m.group(1)] = s.group(1)
    path = sorted(glob.glob(os.path.join(trace_dir, "plugins/profile/*/*.trace.json.gz")))[-1]
    events = [e for e in json.load(gzip.open(path))["traceEvents"]
              if e.get("ph") == "X" and not e["name"].startswith(CONTAINERS)]
    total, count = collections.Counter(), collections.Counter()
    for e in events:
        k = kind_of(names.get(e["name"], ""), e["name"])
        total[k] += e["dur"] / 1e3 / args.steps
        count[k] += 1 / args.steps
    busy = sum(total.values())
    step_s = float(np.median(times))
    print(f"jax {jax.__version__} {jax.devices()[0].platform} {args.what} {args.size}^3 "
          f"batch 2 width {args.width}: step {step_s:.3f} s (median of {args.steps}), "
          f"compile {compile_s:.0f} s, {len(events) // args.steps} thunk "
          f"events per step, {busy:.0f} ms busy per step summed over threads")
    print("\n| op kind | ms per step (all threads) | share | events per step |\n|---|---|---|---|")
    for k, ms in total.most_common(args.top):
        print(f"| {k} | {ms:.1f} | {100 * ms / busy:.1f}% | {count[k]:.0f} |")
    rest = sum(ms for k, ms in total.most_common()[args.top:])
    if rest:
        print(f"| (the rest) | {rest:.1f} | {100 * rest / busy:.1f}% | - |")


if __name__ == "__main__":
    main()
