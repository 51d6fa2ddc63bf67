"""The planned search's compiled programs: its two step programs against one step program
for both (`bilevel.search_step`) and one program per iteration (the alpha step under
`lax.cond`, or always run), and the Theta step on a sampled op pair against the argmax
network (what it runs past the anneal).

At the default flow's search settings (stride-2 stem, width 16, growth x3, batch 2, 4
classes, planned schedule), synthetic data; each form compiled with `lower().compile()`
(cache off), then timed over 3 calls after a warm-up call. XLA flags as main.py's (-O1).

    python experiments/bench_search_programs.py --size 48 [--parts=programs,iterations,theta]

Not a test: the numbers go to BENCHMARKS.md.
"""

import argparse
import dataclasses
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_ENABLE_COMPILATION_CACHE", "0")

from jaxnas import main as main_lib  # noqa: E402

os.environ["XLA_FLAGS"] = main_lib.with_cpu_xla_flags(os.environ.get("XLA_FLAGS", ""),
                                                      gpu_plugin=False)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxnas import config as config_lib  # noqa: E402
from jaxnas import phases  # noqa: E402
from jaxnas.nn import losses  # noqa: E402
from jaxnas.search import bilevel  # noqa: E402
from jaxnas.search.strategies import gradient_search  # noqa: E402


def _timed(fn, state, repeats=3):
    state = jax.block_until_ready(fn(state))
    start = time.time()
    for _ in range(repeats):
        state = fn(state)
    jax.block_until_ready(state)
    return state, (time.time() - start) / repeats


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--parts", default="programs,iterations,theta",
                   help="programs: two step programs against one (search_step); "
                        "iterations: one program per iteration; theta: the Theta step")
    args = p.parse_args()
    parts = args.parts.split(",")
    s = dataclasses.replace(
        config_lib.SearchConfig(), width=args.width, stem_stride=2, width_growth=3,
        dice_background=False, batch_dice=True, ce_weight=1.0, lr_schedule="cosine",
        lr_w=0.01, betas_w=(0.9, 0.999), lr_a=0.03, tau_min=0.01, budget_minutes=9.0)
    rng = np.random.default_rng(0)
    shape = (2,) + (args.size,) * 3
    bw, ba = ({"image": jnp.asarray(rng.normal(size=shape + (1,)), jnp.float32),
               "label": jnp.asarray(rng.integers(0, 4, shape), jnp.int32)} for _ in range(2))
    init_params, apply_fn = phases.make_model(s, 1, 4)
    tx_w, tx_a = bilevel.make_optimizers(lr_w=s.lr_w, betas_w=s.betas_w, lr_a=s.lr_a,
                                        betas_a=s.betas_a)
    schedule_fn = functools.partial(gradient_search._planned_schedule, tau_min=s.tau_min,
                                    lr_kind=s.lr_schedule)
    common = dict(apply_fn=apply_fn, loss_fn=losses.from_settings(s, 4), tx_w=tx_w, tx_a=tx_a,
                  schedule_fn=schedule_fn)
    step_w, step_a = bilevel.make_steps(**common)
    params = init_params(jax.random.key(0))
    # Step 5 of (warm-up 2, anneal end 20, 40): both steps run, tau ~0.5. Alpha ~N(0, 1):
    # its argmax is a random genotype (zeros would make it a dense conv on every edge).
    arch = bilevel.init_arch(jax.random.key(7), scale=1.0)
    state = bilevel.init_state(params, arch, tx_w, tx_a, horizon=(2, 20, 40))
    state = state.replace(step=jnp.asarray(5, jnp.int32))
    key = jax.random.key(1)
    print(f"jax {jax.__version__}, {args.size}^3, width {args.width}, growth x3, batch 2",
          flush=True)

    start = time.time()
    cw = jax.jit(step_w).lower(state, bw, key).compile()
    compile_w = time.time() - start
    if "programs" in parts:
        programs(state, step_w, step_a, cw, compile_w, bw, ba, key, common,
                 "iterations" in parts)
    if "theta" in parts:
        theta(state, cw, bw, key)


def programs(state, step_w, step_a, cw, compile_w, bw, ba, key, common, iterations):
    start = time.time()
    ca = jax.jit(step_a).lower(state, ba, key).compile()
    compile_a = time.time() - start
    _, two = _timed(lambda st: ca(cw(st, bw, key)[0], ba, key)[0], state)
    print(f"| two programs (Theta step, alpha step) | {compile_w:.1f} + {compile_a:.1f} = "
          f"{compile_w + compile_a:.1f} | {two:.3f} |", flush=True)

    batches = {"w": bw, "a": ba}

    def iteration_cond(st, batches, key):  # the alpha step only inside the bi-level window
        st, _ = step_w(st, batches["w"], key)
        on = (st.step - 1 >= st.horizon[0]) & (st.step - 1 < st.horizon[1])
        return jax.lax.cond(on, lambda x: step_a(x, batches["a"], key)[0], lambda x: x, st)

    def iteration_always(st, batches, key):
        return step_a(step_w(st, batches["w"], key)[0], batches["a"], key)[0]

    # bilevel.search_step: one forward and backward serving both steps (a traced `which`).
    start = time.time()
    joint = jax.jit(functools.partial(bilevel.search_step, **common)).lower(
        state, bw, (key, np.int32(bilevel.THETA))).compile()
    seconds = time.time() - start
    one_w, one_a = bilevel.split_search_step(joint)
    _, per_w = _timed(lambda st: one_w(st, bw, key)[0], state)
    _, per_a = _timed(lambda st: one_a(st, ba, key)[0], state)
    _, per_w2 = _timed(lambda st: cw(st, bw, key)[0], state)
    _, per_a2 = _timed(lambda st: ca(st, ba, key)[0], state)
    print(f"| one step program for both steps (search_step) | {seconds:.1f} | "
          f"{per_w + per_a:.3f} (Theta {per_w:.3f}, alpha {per_a:.3f}; two programs: "
          f"{per_w2:.3f}, {per_a2:.3f}) |", flush=True)

    if not iterations:
        return
    for name, fn in (("one program, alpha step under lax.cond", iteration_cond),
                     ("one program, alpha step always run", iteration_always)):
        start = time.time()
        compiled = jax.jit(fn).lower(state, batches, key).compile()
        seconds = time.time() - start
        _, per = _timed(lambda st: compiled(st, batches, key), state)
        print(f"| {name} | {seconds:.1f} | {per:.3f} |", flush=True)
        if fn is iteration_cond:  # past the anneal: the cond skips the alpha step
            late = state.replace(step=jnp.asarray(25, jnp.int32))
            _, per = _timed(lambda st: compiled(st.replace(step=late.step), batches, key), late)
            print(f"| (the same, past the anneal) | - | {per:.3f} |", flush=True)


def theta(state, cw, bw, key):
    # The same compiled Theta step past the anneal (step 25 of (2, 20, 40): the argmax
    # network) and inside a bi-level window at tau 1 (a sampled op pair).
    for name, horizon in (("sampled op pair", (2, 2**30, 2**30)),
                          ("argmax network (past the anneal)", (2, 20, 40))):
        probe = state.replace(step=jnp.asarray(25, jnp.int32),
                              horizon=jnp.asarray(horizon, jnp.int32))
        _, per = _timed(lambda st: cw(probe.replace(params=st.params, opt_w=st.opt_w), bw,
                                      key)[0], probe)
        print(f"| Theta step, {name} | - | {per:.3f} |", flush=True)


if __name__ == "__main__":
    main()
