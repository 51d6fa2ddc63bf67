"""Benchmark: one search step of SCNAS (2 sampled ops per edge), GDAS (1 op) and DARTS (all).

Network part (default): times a full bi-level iteration (Theta step + alpha step, forward
and backward) of the 12-cell supernet and reads XLA's temp memory from
`compiled.memory_analysis()`, every method in one run on the same inputs; also the
compile time of each iteration. SCNAS = `bilevel.sample_edges` (Algorithm 2), GDAS =
`bilevel.sample_edges_gdas` (straight-through hard Gumbel, the argmax op plus the free zero
op on the same switch code), DARTS = softmax(alpha) over all 8 ops
(`network.apply_network_dense`).

Growth part (`--growth`): the same iteration on ONE searched cell (normal_enc by default,
`--cell reduction` for the strided one) with the 8 ops of space.OP_NAMES and with 16 ops
(those 8 + 8 more, listed in EXTRA_OPS), built like cells.py builds it: the cell code of
cells.py (`cells._apply`, one `lax.scan` per edge group) with an edge term that switches
over ops._branches(...) plus the branches of the extra ops (each in `jax.checkpoint`), or
sums all ops (DARTS). Row "scnas_d8" runs the 16-op cell with SCNAS draws restricted to
the first 8 ops: the cost of having 16 branches without the different op mix.
s0 and s1 are size^3 x `--width` channels, node width `--width`, loss = MSE to a random
target; arch (14, 8 or 16) ~ N(0, 1). The 8-op cell is exactly cells.apply_cell.
Target (performance issue): SCNAS at 16 ops <= 1.15x its cost at 8 ops.

Not a test: numbers go to BENCHMARKS.md. A markdown table of all numbers comes before
the summary lines (`<method> 16/8 ...` for the cell, `gdas/darts ...`); the last line is
(network part with scnas and darts)
`scnas/darts time_ratio=X mem_ratio=Y compile_s=Z`, or with `--growth` alone
`scnas 16/8 time_ratio=X mem_ratio=Y compile_ratio=Z`.

    python experiments/bench_search.py --size 32 --width 8 --repeats 5
    python experiments/bench_search.py --size 32 --width 8 --repeats 5 --methods scnas,gdas
    python experiments/bench_search.py --growth --size 32 --width 8 --repeats 5
    python experiments/bench_search.py --growth --network --size 48 --width 8 --repeats 5
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
from jax import lax  # noqa: E402

from jaxnas import phases  # noqa: E402
from jaxnas.nn import losses  # noqa: E402
from jaxnas.nn import ops  # noqa: E402
from jaxnas.search import bilevel  # noqa: E402
from jaxnas.spaces.scnas import cells  # noqa: E402
from jaxnas.spaces.scnas import network  # noqa: E402
from jaxnas.spaces.scnas import space  # noqa: E402

METHODS = ("scnas", "darts", "gdas")


def _darts_weights(key, arch, tau):
    del key, tau
    return jax.nn.softmax(arch, axis=-1)  # DARTS: every op, softmax(alpha) weights.


SAMPLERS = {"scnas": bilevel.sample_edges, "gdas": bilevel.sample_edges_gdas,
            "darts": _darts_weights}


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
        # A new key per repeat: the sampled methods' cost depends on the sampled ops.
        step_args = args[:-1] + (jax.random.key(100 + r),)
        start = time.time()
        jax.block_until_ready(compiled(*step_args))
        times.append(time.time() - start)
    step_s = float(np.mean(times))
    print(f"{name:6s} step {step_s:8.3f} s  temp {temp / 2**20:9.1f} MiB  "
          f"compile {compile_s:6.1f} s", flush=True)
    return step_s, temp, compile_s


# --- Network part ---


def bench_network(args, impl, methods):
    shape = (args.batch, args.size, args.size, args.size)
    key = jax.random.key(0)
    params = network.init_network(key, in_channels=1, num_classes=3, width=args.width)
    arch = bilevel.init_arch(jax.random.key(1), scale=1.0)
    rng = np.random.default_rng(0)
    batches = [{"image": jnp.asarray(rng.normal(size=shape + (1,)), jnp.float32),
                "label": jnp.asarray(rng.integers(0, 3, size=shape), jnp.int32)}
               for _ in range(2)]
    tx_w, tx_a = bilevel.make_optimizers(lr_w=1e-3, betas_w=(0.9, 0.999))
    loss_fn = functools.partial(losses.dice_ce, num_classes=3)
    inputs = (params, arch, tx_w.init(params), tx_a.init(arch), *batches, key)
    results = {}
    for method in methods:
        apply = network.apply_network_dense if method == "darts" else network.apply_network
        iteration = make_iteration(functools.partial(apply, impl=impl), SAMPLERS[method],
                                   tx_w, tx_a, loss_fn)
        results[method] = measure(method, iteration, inputs, args.repeats)
    return results


# --- Growth part: one cell with 8 or 16 candidate ops ---
#
# The 8 more ops of the 16-op set, appended after space.OP_NAMES (so indices 0-7, and
# the zero op space.ZERO_OP, keep their meaning). Params and code from ops.py's pieces.
EXTRA_OPS = (
    "conv_3x3x3_d2",  # dense 3x3x3, dilation 2 (5^3 receptive field)
    "conv_3x3x3_d3",  # dense 3x3x3, dilation 3 (7^3)
    "sep_conv_3x3x3",  # LeakyReLU-depthwise 3x3x3 d1-pointwise-IN
    "sep_conv_3x3x3_d5",
    "sep_conv_3x3x3_d6",
    "sep_conv_3x3x3_x2",  # two stacked d1 separable convs (DARTS sep_conv, 5^3 field)
    "conv_1x1x1",  # LeakyReLU-pointwise-IN (stride 2: on the even voxels)
    "max_pool_5x5x5",  # = two 3x3x3 max pools (exact: a max of maxes)
)
CONV_DILATION = {"conv_3x3x3_d2": 2, "conv_3x3x3_d3": 3}
EXTRA_SEP_DILATION = {"sep_conv_3x3x3": 1, "sep_conv_3x3x3_d5": 5, "sep_conv_3x3x3_d6": 6}


def op_names(num_ops):
    names = space.OP_NAMES + EXTRA_OPS
    if num_ops not in (len(space.OP_NAMES), len(names)):
        raise ValueError(f"num_ops must be 8 or 16, got {num_ops}")
    return names[:num_ops]


def _sep_spec(c):
    return ops.op_spec("sep_conv_3x3x3_d2", c)


def extra_op_spec(name, c, stride):
    if name in CONV_DILATION:
        return ops.op_spec("conv_3x3x3", c)
    if name in EXTRA_SEP_DILATION:
        return _sep_spec(c)
    if name == "sep_conv_3x3x3_x2":
        return {"a": _sep_spec(c), "b": _sep_spec(c)}
    if name == "conv_1x1x1":
        return ops.relu_conv_norm_spec(c, c)
    if name == "max_pool_5x5x5":
        return {}
    raise ValueError(name)


def _sep(params, x, stride, dilation, impl):
    h = ops.depthwise_conv3(ops.leaky_relu(x), params["dw"], stride=stride,
                            dilation=dilation, impl=impl)
    return ops.instance_norm(params, ops.pointwise(h, params["pw"]))


def apply_extra_op(name, params, x, *, stride, impl):
    """One of EXTRA_OPS with static dilation: (b, x, y, z, c) -> strided (b, ..., c)."""
    if name in CONV_DILATION:
        h = ops.conv3(ops.leaky_relu(x), params["w"], stride=stride,
                      dilation=CONV_DILATION[name], impl=impl)
        return ops.instance_norm(params, h)
    if name in EXTRA_SEP_DILATION:
        return _sep(params, x, stride, EXTRA_SEP_DILATION[name], impl)
    if name == "sep_conv_3x3x3_x2":
        return _sep(params["b"], _sep(params["a"], x, stride, 1, impl), 1, 1, impl)
    if name == "conv_1x1x1":
        return ops.apply_relu_conv_norm(params, x[:, ::stride, ::stride, ::stride])
    if name == "max_pool_5x5x5":
        return ops.max_pool3(ops.max_pool3(x, impl=impl), stride=stride, impl=impl)
    raise ValueError(name)


def _merged_dilated(table, stride, depthwise):
    """One "fast" branch for ops differing only by dilation (traced), as ops._any_sep_conv."""
    names = tuple(table)
    first = len(space.OP_NAMES) + EXTRA_OPS.index(names[0])
    pad = max(table.values())

    def run(edge_params, x, index, weight):
        k = jnp.clip(index - first, 0, len(names) - 1)
        stacked = jax.tree.map(lambda *a: jnp.stack(a), *(edge_params[n] for n in names))
        params = jax.tree.map(lambda a: lax.dynamic_index_in_dim(a, k, keepdims=False), stacked)
        dilation = jnp.asarray([table[n] for n in names], jnp.int32)[k]
        if depthwise:
            w27 = params["dw"].reshape(27, x.shape[-1])
            h = ops._shifted_conv(ops.leaky_relu(x), w27, dilation, stride, pad, True)
            h = ops.pointwise(h, params["pw"])
        else:
            w27 = params["w"].reshape(27, *params["w"].shape[3:])
            h = ops._shifted_conv(ops.leaky_relu(x), w27, dilation, stride, pad, False)
        return weight * ops.instance_norm(params, h)

    return run


def _named_extra(name, stride, impl):
    def run(edge_params, x, index, weight):
        del index
        return weight * apply_extra_op(name, edge_params[name], x, stride=stride, impl=impl)

    return run


@functools.cache
def branches(num_ops, stride, impl):
    """(switch branches, op index -> branch): ops._branches for the first 8 ops (the very
    branches cells.py runs), then the extra ops, each branch in jax.checkpoint; "fast"
    merges the dilated dense convs and the new separable convs like ops.py merges its own."""
    base, base_of = ops._branches(stride, impl)
    if num_ops == len(space.OP_NAMES):
        return base, base_of
    fns, branch_of = list(base), list(base_of)
    groups = {}
    for name in EXTRA_OPS:
        if impl == "fast" and name in CONV_DILATION:
            group = ("conv", lambda: _merged_dilated(CONV_DILATION, stride, False))
        elif impl == "fast" and name in EXTRA_SEP_DILATION:
            group = ("sep", lambda: _merged_dilated(EXTRA_SEP_DILATION, stride, True))
        else:
            group = (name, lambda name=name: _named_extra(name, stride, impl))
        if group[0] not in groups:
            groups[group[0]] = len(fns)
            fns.append(jax.checkpoint(group[1]()))
        branch_of.append(groups[group[0]])
    return tuple(fns), np.asarray(branch_of, np.int32)


def _switch_term(edge_params, x, choice, *, stride, impl, num_ops):
    """As cells._switch_term / ops.apply_edge_op, over `num_ops` ops."""
    index, weight = choice
    fns, branch_of = branches(num_ops, stride, impl)
    index = jnp.asarray(index, jnp.int32)
    weight = jnp.asarray(weight, x.dtype)
    return lax.switch(jnp.asarray(branch_of)[index], fns, edge_params, x, index, weight)


def _dense_term(edge_params, x, weights, *, stride, impl, num_ops):
    """As ops.apply_edge_all (no checkpoint), over `num_ops` ops."""
    y = ops.apply_edge_all(weights[: len(space.OP_NAMES)], edge_params, x, stride=stride,
                           impl=impl)
    for o, name in enumerate(op_names(num_ops)[len(space.OP_NAMES):], len(space.OP_NAMES)):
        y = y + weights[o] * apply_extra_op(name, edge_params[name], x, stride=stride,
                                            impl=impl)
    return y


def growth_cell_spec(cell_type, c, num_ops):
    def edge_spec(stride):
        spec = ops.edge_spec(c, stride)
        spec.update({n: extra_op_spec(n, c, stride) for n in op_names(num_ops)[8:]})
        return spec

    edges = [ops.stack_specs([edge_spec(stride)] * len(group))
             for group, stride in cells.edge_groups(cell_type)]
    return {"pre0": ops.relu_conv_norm_spec(c, c), "pre1": ops.relu_conv_norm_spec(c, c),
            "edges": edges}


def growth_apply(params, image, choice, *, method, cell_type, impl, num_ops):
    """The cell on (s0, s1) = the two channel halves of image, via cells._apply."""
    c = image.shape[-1] // 2
    if method == "darts":
        form = (functools.partial(_dense_term, num_ops=num_ops), cells._dense_terms)
        arg = choice  # (14, num_ops) weights
    else:
        form = (functools.partial(_switch_term, num_ops=num_ops), cells._switch_terms)
        arg = (jnp.asarray(choice["index"], jnp.int32), choice["weight"])
    return cells._apply(form, params, image[..., :c], image[..., c:], arg,
                        cell_type=cell_type, impl=impl, scan=True)


def _mse(out, target):
    return jnp.mean(jnp.square(out - target))


def bench_growth(args, impl, methods):
    c = args.width
    shape = (args.batch, args.size, args.size, args.size)
    grid = shape if args.cell != "reduction" else ops.strided_shape(shape + (1,), 2)[:4]
    rng = np.random.default_rng(0)
    batches = [{"image": jnp.asarray(rng.normal(size=shape + (2 * c,)), jnp.float32),
                "label": jnp.asarray(rng.normal(size=grid + (4 * c,)), jnp.float32)}
               for _ in range(2)]
    tx_w, tx_a = bilevel.make_optimizers(lr_w=1e-3, betas_w=(0.9, 0.999))
    key = jax.random.key(0)
    results = {}
    names = op_names(16)
    print(f"growth: one {args.cell} cell, node width {c}, ops 0-7 = {', '.join(names[:8])}; "
          f"ops 8-15 = {', '.join(names[8:])}", flush=True)
    rows = [(m, n) for m in methods for n in (8, 16)]
    if "scnas" in methods:
        rows.append(("scnas_d8", 16))
    for method, num_ops in rows:
        base = "scnas" if method == "scnas_d8" else method
        params = ops.init_params(key, growth_cell_spec(args.cell, c, num_ops))
        arch = jax.random.normal(jax.random.key(1), (space.NUM_EDGES, num_ops), jnp.float32)
        sample = SAMPLERS[base]
        if method == "scnas_d8":  # draws among the first 8 ops only
            sample = lambda k, a, t: bilevel.sample_edges(k, a[..., :8], t)  # noqa: E731
        apply = functools.partial(growth_apply, method=base, cell_type=args.cell, impl=impl,
                                  num_ops=num_ops)
        iteration = make_iteration(apply, sample, tx_w, tx_a, _mse)
        inputs = (params, arch, tx_w.init(params), tx_a.init(arch), *batches, key)
        results[(method, num_ops)] = measure(f"{method}@{num_ops}", iteration, inputs,
                                             args.repeats)
    return results


# --- Report ---


def _fmt(x, digits=3):
    return "-" if x is None else f"{x:.{digits}f}"


def report(network_res, growth_res):
    print()
    print("| part | method | ops | step s | temp MiB | compile s | time / darts | "
          "mem / darts | time 16/8 | mem 16/8 | compile 16/8 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    darts = network_res.get("darts")
    for method, (t, m, c) in network_res.items():
        tr = t / darts[0] if darts else None
        mr = m / darts[1] if darts else None
        print(f"| network | {method} | 8 | {t:.3f} | {m / 2**20:.1f} | {c:.1f} | {_fmt(tr)} | "
              f"{_fmt(mr)} | - | - | - |")
    for (method, num_ops), (t, m, c) in growth_res.items():
        d = growth_res.get(("darts", num_ops))
        b = growth_res.get(("scnas" if method == "scnas_d8" else method, 8))
        tr, mr = (t / d[0], m / d[1]) if d else (None, None)
        if num_ops == 16 and b:
            gt, gm, gc = t / b[0], m / b[1], c / b[2]
        else:
            gt = gm = gc = None
        print(f"| cell | {method} | {num_ops} | {t:.4f} | {m / 2**20:.1f} | {c:.1f} | "
              f"{_fmt(tr)} | {_fmt(mr)} | {_fmt(gt)} | {_fmt(gm)} | {_fmt(gc)} |")
    print()
    # Summary lines; the last one printed is the contract line of the module docstring.
    lines = []
    for method in ("darts", "gdas", "scnas_d8", "scnas"):  # scnas_d8: vs scnas at 8 ops
        base = "scnas" if method == "scnas_d8" else method
        if (method, 16) in growth_res and (base, 8) in growth_res:
            (t8, m8, c8), (t16, m16, c16) = growth_res[(base, 8)], growth_res[(method, 16)]
            lines.append(f"{method} 16/8 time_ratio={t16 / t8:.3f} mem_ratio={m16 / m8:.3f} "
                         f"compile_ratio={c16 / c8:.3f}")
    for method in ("gdas", "scnas"):
        if darts and method in network_res:
            t, m, c = network_res[method]
            lines.append(f"{method}/darts time_ratio={t / darts[0]:.3f} "
                         f"mem_ratio={m / darts[1]:.3f} compile_s={c:.1f}")
    print("\n".join(lines), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--width", type=int, default=8,
                        help="network width; with --growth, the cell's node width")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--impl", default="auto")
    parser.add_argument("--methods", default="scnas,darts,gdas",
                        help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--growth", action="store_true",
                        help="run the 8-vs-16-op cell benchmark (alone unless --network)")
    parser.add_argument("--network", action="store_true",
                        help="with --growth, also run the network benchmark")
    parser.add_argument("--cell", default="normal_enc", choices=space.CELL_TYPES[:2],
                        help="cell type of the growth benchmark")
    args = parser.parse_args()
    methods = tuple(m for m in args.methods.split(",") if m)
    bad = set(methods) - set(METHODS)
    if bad or not methods:
        parser.error(f"--methods: unknown {sorted(bad)}; choose from {METHODS}")
    impl = phases.resolve_impl(args.impl)
    print(f"jax {jax.__version__} backend {jax.default_backend()} devices {jax.devices()} "
          f"impl {impl} patch {args.size}^3 batch {args.batch} width {args.width} "
          f"methods {','.join(methods)}", flush=True)
    network_res = bench_network(args, impl, methods) if args.network or not args.growth else {}
    growth_res = bench_growth(args, impl, methods) if args.growth else {}
    report(network_res, growth_res)


if __name__ == "__main__":
    main()
