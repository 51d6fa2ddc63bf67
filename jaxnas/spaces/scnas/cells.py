"""A pure SCNAS cell: preprocess two inputs, run 14 edges in `lax.scan`, concat 4 nodes.

Arrays are channels-last `(b, x, y, z, c)`, float32. A cell of width c maps
(s0, s1) -> (b, x', y', z', NUM_NODES * c):
- Preprocessing (DARTS): s0 and s1 go to width c by a 1x1x1 LeakyReLU-Conv-IN. Where s0 has
  another resolution than s1 (the cell after a reduction or expansion cell), s0 is aligned
  first: a factorized 1x1x1 stride-2 conv when s0 is finer (it is the preprocessing conv),
  a trilinear upsampling by 2 before the 1x1x1 conv when s0 is coarser.
  Expansion cells upsample s0 and s1 by 2 before their preprocessing; their edges have
  stride 1. Reduction cells run the 8 edges that leave s0/s1 with stride 2.
- Node j = sum of its incoming edges (space.EDGE_SRC / space.EDGE_DST); output = the
  channel concatenation of the 4 nodes.

Edge params are stacked along a leading axis, one stacked tree per group of edges of one
stride (`edge_groups`): all 14 edges for normal and expansion cells; the 8 stride-2 input
edges and the 6 node edges for reduction cells. Each group runs as one `lax.scan` whose
carry is a buffer of states (DESIGN.md: ~4x less compile time than unrolled edges).

Two forms share params and code:
- `apply_cell`: the sampled edge of SCNAS, w1 * op_{i1}(x) + w2 * op_{i2}(x) with two
  `lax.switch` calls on traced indices (choice_index int32 (14, 2), choice_weight (14, 2));
  the scan runs the two calls as two steps, so its body compiles one switch, not two.
- `apply_cell_dense`: DARTS, sum_o w_o * op_o(x) over all 8 ops with weights (14, 8).
`scan=False` unrolls the edges in plain Python: an independent reference for tests.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float, Int

from jaxnas.nn import ops
from jaxnas.spaces.scnas import space

PyTree = Any
Volume = Float[Array, "b x y z c"]

INPUT_EDGES = tuple(e for e in range(space.NUM_EDGES) if space.EDGE_SRC[e] < 2)
NODE_EDGES = tuple(e for e in range(space.NUM_EDGES) if space.EDGE_SRC[e] >= 2)
ALL_EDGES = tuple(range(space.NUM_EDGES))
S0_RESIZES = ("same", "down", "up")


def _check_cell_type(cell_type: str) -> None:
    if cell_type not in space.CELL_TYPES:
        raise ValueError(f"cell_type must be one of {space.CELL_TYPES}, got {cell_type!r}")


def edge_groups(cell_type: str) -> tuple[tuple[tuple[int, ...], int], ...]:
    """((edge numbers, stride), ...): the scanned groups of a cell, in run order."""
    _check_cell_type(cell_type)
    if cell_type == "reduction":
        return ((INPUT_EDGES, 2), (NODE_EDGES, 1))
    return ((ALL_EDGES, 1),)


def output_channels(c: int) -> int:
    return space.NUM_NODES * c


def cell_spec(
    cell_type: str, c_prev_prev: int, c_prev: int, c: int, *, s0_resize: str = "same"
) -> dict:
    """Param specs of one cell (see `init_cell`)."""
    _check_cell_type(cell_type)
    if s0_resize not in S0_RESIZES:
        raise ValueError(f"s0_resize must be one of {S0_RESIZES}, got {s0_resize!r}")
    if s0_resize == "down":
        pre0 = ops.factorized_reduce_spec(c_prev_prev, c)
    else:
        pre0 = ops.relu_conv_norm_spec(c_prev_prev, c)
    edges = [
        ops.stack_specs([ops.edge_spec(c, stride)] * len(group))
        for group, stride in edge_groups(cell_type)
    ]
    return {"pre0": pre0, "pre1": ops.relu_conv_norm_spec(c_prev, c), "edges": edges}


def init_cell(
    key: jax.Array,
    cell_type: str,
    c_prev_prev: int,
    c_prev: int,
    c: int,
    *,
    s0_resize: str = "same",
) -> dict:
    """Params of one cell of width c (output NUM_NODES * c channels).

    Args:
      key: PRNG key.
      cell_type: one of space.CELL_TYPES.
      c_prev_prev, c_prev: channels of s0 and s1.
      c: node width.
      s0_resize: "down" when s0 has twice the resolution of s1 (factorized reduce
        preprocessing), "up" or "same" otherwise (same params: a 1x1x1 conv).

    Returns:
      {"pre0", "pre1": preprocessing params, "edges": [one stacked edge tree per group of
      `edge_groups(cell_type)`, leading axis = the group's edges]}.
    """
    return ops.init_params(key, cell_spec(cell_type, c_prev_prev, c_prev, c, s0_resize=s0_resize))


# --- Preprocessing ---


def _s0_resize(s0_shape: tuple[int, ...], s1_shape: tuple[int, ...]) -> str:
    """How s0 must be resized to s1's grid: "same", "down" (x 1/2) or "up" (x 2)."""
    s0_grid, s1_grid = tuple(s0_shape[1:4]), tuple(s1_shape[1:4])
    if s0_grid == s1_grid:
        return "same"
    if ops.strided_shape(s0_shape, 2)[1:4] == s1_grid:
        return "down"
    if tuple(2 * n for n in s0_grid) == s1_grid:
        return "up"
    raise ValueError(
        f"cannot align s0 {s0_shape} with s1 {s1_shape}: sizes must be equal, half or double"
    )


def preprocess(
    params: dict, s0: Volume, s1: Volume, *, cell_type: str, impl: str = "fast"
) -> tuple[Volume, Volume]:
    """(s0, s1) -> (h0, h1), both of width c on the grid the cell's edges start from."""
    if cell_type == "expansion":
        s0, s1 = ops.upsample2(s0, impl=impl), ops.upsample2(s1, impl=impl)
    resize = _s0_resize(s0.shape, s1.shape)
    if (resize == "down") != ("w_even" in params["pre0"]):
        raise ValueError(
            f"s0 {s0.shape} needs resize {resize!r} vs s1 {s1.shape}, but the "
            "cell was initialised with another s0_resize"
        )
    if resize == "down":
        h0 = ops.apply_factorized_reduce(params["pre0"], s0)
    else:
        if resize == "up":
            s0 = ops.upsample2(s0, impl=impl)
        h0 = ops.apply_relu_conv_norm(params["pre0"], s0)
    return h0, ops.apply_relu_conv_norm(params["pre1"], s1)


# --- Edge terms: one sampled op (switch) or all 8 ops (dense) ---
#
# An edge output is a sum of terms. The switch form has 2 terms per edge, w * op_i(x),
# each one `lax.switch`; the scan runs them as separate steps so that its body holds ONE
# switch (8 branches) instead of two: about 20% less compile time for a cell, and the same
# memory (measured: normal cell at 32^3, 8 channels: 57 MiB of XLA temp either way). The
# dense form has one term per edge, the DARTS mixed op.


def _switch_term(edge_params: dict, x: Volume, choice, *, stride: int, impl: str) -> Volume:
    """weight * op_index(x); choice = (index int32 scalar, weight scalar)."""
    index, weight = choice
    return ops.apply_edge_op(index, edge_params, x, stride=stride, impl=impl, weight=weight)


def _switch_terms(choice):
    """Per-edge choice (index (e, 2), weight (e, 2)) -> per-term choice (2 e,), 2 terms/edge."""
    index, weight = choice
    return (index.reshape(-1), weight.reshape(-1)), index.shape[-1]


def _dense_term(edge_params: dict, x: Volume, weights, *, stride: int, impl: str) -> Volume:
    return ops.apply_edge_all(weights, edge_params, x, stride=stride, impl=impl)


def _dense_terms(weights):
    return weights, 1


# A form = (term function, per-edge choice -> (per-term choice, terms per edge)).
_SWITCH = (_switch_term, _switch_terms)
_DENSE = (_dense_term, _dense_terms)


# --- Nodes ---


def _scan_group(term_fn, group_params, terms, src, dst, buffer, inputs=None):
    """Runs the terms of a group of edges: buffer[dst] += term(source[src]), in order.

    group_params: stacked edge params (e, ...); terms: (per-term choice pytree with
    leading axis e * k, k terms per edge); src, dst: per-edge numpy int arrays. source =
    inputs (stacked states, not carried) or, when inputs is None, the carried buffer.
    """
    choice, per_edge = terms
    if per_edge > 1:  # each term carries its edge's params: a cheap copy, no scatter in bwd
        group_params = jax.tree.map(lambda a: jnp.repeat(a, per_edge, axis=0), group_params)
        src, dst = np.repeat(src, per_edge), np.repeat(dst, per_edge)

    def body(buf, xs):
        edge_params, term_choice, s, d = xs
        x = lax.dynamic_index_in_dim(buf if inputs is None else inputs, s, keepdims=False)
        y = term_fn(edge_params, x, term_choice)
        # dynamic_update_slice, not .at[].add: a traced .at[] index lowers to a scatter.
        node = lax.dynamic_index_in_dim(buf, d, keepdims=False) + y
        return lax.dynamic_update_index_in_dim(buf, node, d, 0), None

    xs = (group_params, choice, jnp.asarray(src, jnp.int32), jnp.asarray(dst, jnp.int32))
    return lax.scan(body, buffer, xs)[0]


def _nodes_scan(form, params, h0, h1, choice, cell_type):
    """The 4 node states, one lax.scan per edge group."""
    term_fn, split_terms = form
    src, dst = np.asarray(space.EDGE_SRC), np.asarray(space.EDGE_DST)

    def terms(edges):
        return split_terms(jax.tree.map(lambda a: a[np.asarray(edges)], choice))

    if cell_type != "reduction":
        zeros = jnp.zeros((space.NUM_NODES, *h1.shape), h1.dtype)
        states = jnp.concatenate([jnp.stack([h0, h1]), zeros])  # 0 = s0, 1 = s1, 2 + j = node j
        states = _scan_group(
            functools.partial(term_fn, stride=1),
            params["edges"][0],
            terms(ALL_EDGES),
            src,
            dst + 2,
            states,
        )
        return [states[2 + j] for j in range(space.NUM_NODES)]
    (in_edges, in_stride), (node_edges, node_stride) = edge_groups(cell_type)
    in_edges, node_edges = list(in_edges), list(node_edges)
    grid = ops.strided_shape(h1.shape, in_stride)
    nodes = jnp.zeros((space.NUM_NODES, *grid), h1.dtype)
    nodes = _scan_group(
        functools.partial(term_fn, stride=in_stride),
        params["edges"][0],
        terms(in_edges),
        src[in_edges],
        dst[in_edges],
        nodes,
        inputs=jnp.stack([h0, h1]),
    )
    nodes = _scan_group(
        functools.partial(term_fn, stride=node_stride),
        params["edges"][1],
        terms(node_edges),
        src[node_edges] - 2,
        dst[node_edges],
        nodes,
    )
    return [nodes[j] for j in range(space.NUM_NODES)]


def _nodes_unrolled(form, params, h0, h1, choice, cell_type):
    """The same nodes with every edge unrolled in Python (reference; slow to compile)."""
    term_fn, split_terms = form
    term_choice, per_edge = split_terms(choice)
    where = {}  # edge -> (group, position in group, stride)
    for g, (edges, stride) in enumerate(edge_groups(cell_type)):
        where.update({e: (g, k, stride) for k, e in enumerate(edges)})
    states = [h0, h1]
    nodes = [None] * space.NUM_NODES
    for e in range(space.NUM_EDGES):  # edges are sorted by destination node
        g, k, stride = where[e]
        j = space.EDGE_DST[e]
        edge_params = jax.tree.map(lambda a, k=k: a[k], params["edges"][g])
        for t in range(e * per_edge, (e + 1) * per_edge):
            term_choice_t = jax.tree.map(lambda a, t=t: a[t], term_choice)
            y = term_fn(edge_params, states[space.EDGE_SRC[e]], term_choice_t, stride=stride)
            nodes[j] = y if nodes[j] is None else nodes[j] + y
        if e + 1 == space.NUM_EDGES or space.EDGE_DST[e + 1] != j:  # node j is complete
            states.append(nodes[j])
    return nodes


def _apply(form, params, s0, s1, choice, *, cell_type, impl, scan):
    _check_cell_type(cell_type)
    h0, h1 = preprocess(params, s0, s1, cell_type=cell_type, impl=impl)
    form = (functools.partial(form[0], impl=impl), form[1])
    nodes_fn = _nodes_scan if scan else _nodes_unrolled
    return jnp.concatenate(nodes_fn(form, params, h0, h1, choice, cell_type), axis=-1)


def apply_cell(
    params: dict,
    s0: Volume,
    s1: Volume,
    choice_index: Int[Array, "e 2"],
    choice_weight: Float[Array, "e 2"],
    *,
    cell_type: str,
    impl: str = "fast",
    scan: bool = True,
) -> Volume:
    """A cell with the sampled edges of SCNAS Algorithm 2.

    Args:
      params: from `init_cell` with the same cell_type.
      s0, s1: outputs of the two previous cells (b, x, y, z, c_prev_prev / c_prev); s0 on
        s1's grid, or twice / half as fine.
      choice_index: int32 (14, 2), two op indices per edge (traced: one compile serves
        every sample).
      choice_weight: float (14, 2), their weights (the gradient path to alpha).
      cell_type: one of space.CELL_TYPES.
      impl: "fast" or "xla" (ops.IMPLS).
      scan: False unrolls the edges (a reference; compiles slowly).

    Returns:
      (b, x', y', z', 4 c): x' = x for normal cells, ceil(x / 2) for reduction cells,
      2 x for expansion cells.
    """
    choice = (jnp.asarray(choice_index, jnp.int32), choice_weight)
    return _apply(_SWITCH, params, s0, s1, choice, cell_type=cell_type, impl=impl, scan=scan)


def apply_cell_dense(
    params: dict,
    s0: Volume,
    s1: Volume,
    weights: Float[Array, "e o"],
    *,
    cell_type: str,
    impl: str = "fast",
    scan: bool = True,
) -> Volume:
    """The same cell, every edge = sum_o weights[e, o] * op_o(x) (DARTS); weights (14, 8)."""
    return _apply(_DENSE, params, s0, s1, weights, cell_type=cell_type, impl=impl, scan=scan)
