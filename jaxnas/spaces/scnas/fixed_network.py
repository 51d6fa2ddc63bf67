"""The fixed (derived) SCNAS network: one op per edge, zero edges dropped.

A genotype's op index is an int array (4, 14): per cell type (space.CELL_TYPES order)
and edge, an index into space.OP_NAMES. The fixed network has the supernet's topology
(network.py: stem, the 12 cells of space.CELL_LAYOUT with the same s0 / s1 wiring,
decoder skip sums, node widths and out cell), but every edge runs only its chosen op,
and an edge whose op is "zero" has no params and no compute. A node whose incoming edges
are all "zero" is zeros of the node's shape; it is still concatenated into the cell
output, so channel counts (and the next cells' params) match the supernet's.

Arrays are channels-last (b, x, y, z, c), float32. Params are compact, no stacked
8-op edge trees:

    {"stem": ops.stem_spec params,
     "cells": [12 x {"pre0", "pre1": as in the supernet,
                     "edges": {str(e): params of the chosen op, for non-zero edges e}}],
     "skips": {str(i): {"w"}} (as in the supernet), "out": {"w", "b"}}

Parameter-free ops keep an empty dict under their edge. `compact_from_supernet` cuts
these params out of a supernet's (SCNAS keeps the searched Theta, no retraining), so
`apply_fixed(compact_from_supernet(P, idx), x, idx)` equals
`network.apply_network(P, x, search.choice_from_indices(idx))`.

The index is static: edges are unrolled in Python (no lax.switch), one program per
architecture. Under jax.jit pass it as a static argument in hashable form
(`static_index(index)`: nested tuples).
"""

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jaxnas.nn import ops
from jaxnas.spaces.scnas import cells
from jaxnas.spaces.scnas import network
from jaxnas.spaces.scnas import space

Volume = Float[Array, "b x y z c"]
Logits = Float[Array, "b x y z k"]
StaticIndex = tuple[tuple[int, ...], ...]


def static_index(index) -> StaticIndex:
    """(4, 14) op index (numpy array, nested sequence) -> nested tuples of ints (hashable).

    A traced jax array cannot be used: the index decides which code and params exist.
    """
    if isinstance(index, jax.core.Tracer):
        raise TypeError("index must be static (numpy array or nested tuple), not traced")
    array = np.asarray(index)
    expected = (space.NUM_CELL_TYPES, space.NUM_EDGES)
    if array.shape != expected:
        raise ValueError(f"index has shape {array.shape}, expected {expected}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"index must hold integers, got dtype {array.dtype}")
    if array.min() < 0 or array.max() >= space.NUM_OPS:
        raise ValueError(f"op indices must be in [0, {space.NUM_OPS}), got {array}")
    return tuple(tuple(int(i) for i in row) for row in array)


def _edge_strides(cell_type: str) -> dict[int, int]:
    """Edge -> stride, from cells.edge_groups (2 for a reduction cell's input edges)."""
    return {e: stride for edges, stride in cells.edge_groups(cell_type) for e in edges}


def _live_edges(cell_index) -> tuple[int, ...]:
    """Edges of one cell (its row of the index) whose op is not "zero"."""
    return tuple(e for e in range(space.NUM_EDGES) if cell_index[e] != space.ZERO_OP)


# --- One fixed cell ---


def fixed_cell_spec(
    cell_type: str, c_prev_prev: int, c_prev: int, c: int, cell_index, *, s0_resize: str = "same"
) -> dict:
    """Param specs of one fixed cell: {"pre0", "pre1", "edges": {str(e): op specs}}.

    cell_index: 14 op indices (the cell type's row of the genotype index).
    """
    if s0_resize == "down":  # s0 is finer than s1: the factorized reduce aligns it
        pre0 = ops.factorized_reduce_spec(c_prev_prev, c)
    else:
        pre0 = ops.relu_conv_norm_spec(c_prev_prev, c)
    strides = _edge_strides(cell_type)
    edges = {
        str(e): ops.op_spec(space.OP_NAMES[cell_index[e]], c, strides[e])
        for e in _live_edges(cell_index)
    }
    return {"pre0": pre0, "pre1": ops.relu_conv_norm_spec(c_prev, c), "edges": edges}


def apply_fixed_cell(
    params: dict, s0: Volume, s1: Volume, cell_index, *, cell_type: str, impl: str = "fast"
) -> Volume:
    """One fixed cell: (s0, s1) -> (b, x', y', z', NUM_NODES * c), as cells.apply_cell.

    Args:
      params: from `fixed_cell_spec` (same cell_type and cell_index).
      s0, s1: (b, x, y, z, c_prev_prev / c_prev); s0 on s1's grid or twice / half as fine.
      cell_index: 14 static op indices.
      cell_type: one of space.CELL_TYPES; x' = ceil(x / 2) for reduction cells, 2 x for
        expansion cells, x otherwise.
    """
    h0, h1 = cells.preprocess(params, s0, s1, cell_type=cell_type, impl=impl)
    strides = _edge_strides(cell_type)
    # Every node lives on the cell's output grid (reduction: the strided input grid).
    node_shape = ops.strided_shape(h1.shape, 2 if cell_type == "reduction" else 1)
    states = [h0, h1]  # 0 = s0, 1 = s1, 2 + j = node j
    live = set(_live_edges(cell_index))
    for j in range(space.NUM_NODES):
        node = None
        for e in range(space.NUM_EDGES):
            if space.EDGE_DST[e] != j or e not in live:
                continue
            name = space.OP_NAMES[cell_index[e]]
            x = states[space.EDGE_SRC[e]]
            y = ops.apply_op(name, params["edges"][str(e)], x, stride=strides[e], impl=impl)
            node = y if node is None else node + y
        # No live input: zeros keep the channel layout of the supernet's concat.
        states.append(jnp.zeros(node_shape, h1.dtype) if node is None else node)
    return jnp.concatenate(states[2:], axis=-1)


# --- The network ---


def fixed_spec(
    index,
    *,
    in_channels: int,
    num_classes: int,
    width: int,
    node_scale: float = network.DEFAULT_NODE_SCALE,
    width_growth: int = network.DEFAULT_GROWTH,
    stem_stride: int = 1,
    deep_supervision: bool = False,
) -> dict:
    """Param specs of the fixed network for op index (4, 14) (see the module docstring)."""
    index = static_index(index)
    # Stem, skips, out cell (refinement, aux heads) are the supernet's: take its spec.
    spec = network.network_spec(
        in_channels=in_channels, num_classes=num_classes, width=width, node_scale=node_scale,
        width_growth=width_growth, stem_stride=stem_stride,
        deep_supervision=deep_supervision,
    )
    widths = network.node_widths(width, node_scale, width_growth)
    channels = {network.STEM: width}
    cell_specs = []
    for i, cell in enumerate(network.topology()):
        c = widths[cell.level]
        cell_specs.append(
            fixed_cell_spec(
                cell.cell_type,
                channels[cell.s0],
                channels[cell.s1],
                c,
                index[cell.type_index],
                s0_resize=cell.s0_resize,
            )
        )
        channels[i] = cells.output_channels(c)
    return {**spec, "cells": cell_specs}


def init_fixed(
    key: jax.Array,
    index,
    *,
    in_channels: int,
    num_classes: int,
    width: int,
    node_scale: float = network.DEFAULT_NODE_SCALE,
    width_growth: int = network.DEFAULT_GROWTH,
    stem_stride: int = 1,
    deep_supervision: bool = False,
) -> dict:
    """Fresh params of the fixed network for op index (4, 14) (one draw of key).

    Args:
      key: PRNG key.
      index: int (4, 14) op indices per cell type and edge (static).
      in_channels, num_classes, width, ...: as network.init_network.
    """
    specs = fixed_spec(
        index, in_channels=in_channels, num_classes=num_classes, width=width,
        node_scale=node_scale, width_growth=width_growth, stem_stride=stem_stride,
        deep_supervision=deep_supervision,
    )
    return ops.init_params(key, specs)


def apply_fixed(params: dict, image: Volume, index, *, impl: str = "fast",
                return_aux: bool = False):
    """The fixed network: image (b, x, y, z, in_channels) -> logits (b, x, y, z, k).

    Args:
      params: from `init_fixed` or `compact_from_supernet` with the same index.
      image: x, y, z divisible by 8.
      index: int (4, 14) op indices, static (numpy array or nested tuples; under jax.jit
        pass `static_index(index)` as a static argument or close over it).
      impl: "fast" (XLA:CPU) or "xla" (GPUs); see ops.py.
      return_aux: (logits, deep supervision logits), as network._forward.
    """
    index = static_index(index)
    network._check_input(params, image, None, None)

    def cell_fn(cell_params, s0, s1, spec):
        return apply_fixed_cell(
            cell_params, s0, s1, index[spec.type_index], cell_type=spec.cell_type, impl=impl
        )

    # The supernet's forward pass: same stem, wiring, decoder skips and out cell.
    return network._forward(params, image, cell_fn, impl, return_aux)


def _on_host(a):
    """a as numpy where this process holds all of it (single host): slicing it there
    avoids one small compiled program per shape that an eager a[row] costs (1.6 s for a
    searched network); arrays spread over several hosts stay jax arrays."""
    return np.asarray(a) if getattr(a, "is_fully_addressable", True) else a


def compact_from_supernet(supernet_params: dict, index) -> dict:
    """The fixed network's params cut out of supernet params (network.init_network).

    Keeps stem, preprocessing, skips and out cell, and on each non-zero edge the chosen
    op's params: in the supernet they sit in the edge's group (cells.edge_groups), at the
    edge's row of that group's stacked tree. Arrays are sliced, not re-drawn.
    """
    index = static_index(index)
    fixed_cells = []
    # One host copy per stacked edge leaf, sliced once per live row below.
    host_edges = jax.tree.map(_on_host, [c["edges"] for c in supernet_params["cells"]])
    for cell, cell_params, host in zip(network.topology(), supernet_params["cells"],
                                       host_edges):
        cell_index = index[cell.type_index]
        live = set(_live_edges(cell_index))
        edges = {}
        for g, (group, _) in enumerate(cells.edge_groups(cell.cell_type)):
            for row, e in enumerate(group):
                if e in live:
                    op_params = host[g][space.OP_NAMES[cell_index[e]]]
                    edges[str(e)] = jax.tree.map(lambda a, row=row: jnp.asarray(a[row]),
                                                 op_params)
        fixed_cells.append({"pre0": cell_params["pre0"], "pre1": cell_params["pre1"],
                            "edges": edges})
    return {**supernet_params, "cells": fixed_cells}
