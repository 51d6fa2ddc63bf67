"""The SCNAS 3D U-Net supernet as pure functions: stem, 12 searched cells, out cell.

Arrays are channels-last, float32: image (b, x, y, z, in_channels) -> logits
(b, x, y, z, num_classes). x, y, z must be divisible by 8 (three reductions by 2).

Layout (space.CELL_LAYOUT, paper Figure 1): stem 3x3x3 Conv-IN -> R N R N R N (encoder)
-> E N E N E N (decoder) -> out cell (LeakyReLU, 1x1x1 conv with bias). Cell i takes
s0 = output of cell i - 2 and s1 = output of cell i - 1 (the stem output stands in for
missing ones: the first reduction cell takes it twice).

Decoder skips (paper footnote 1): before a decoder cell uses s1, s1 is summed with the
output of the last encoder cell at the same resolution (the stem at full resolution);
the decoder cell whose s1 IS that encoder output (the first expansion cell) gets none.
So N4 and E2 get N2, N5 and E3 get N1, N6 gets the stem. A 1x1x1 conv aligns the
encoder output's channels where they differ (never with the default schedule).

Width schedule (ours; the paper gives only "stem 32; reduction and expansion cells double
and halve the output channels of their inputs"): a cell at level l (resolution / 2**l)
has node width c_l = width * 2**l * node_scale and outputs 4 c_l channels. The default
node_scale = 1/4 is that sentence taken literally: cell outputs width * 2**l (32, 64, 128,
256 at width 32); encoder and decoder outputs of a level then match and no skip needs an
alignment conv. Parameters at width 32, 4 channels in, 4 classes: supernet 6.2M; derived
networks (one op per edge) 0.33-1.6M, mean 0.88M over random architectures, vs the
paper's 2.2M (SCNAS) and 2.7M (random). node_scale = 1/2 gives 24M and a 3.4M mean,
nearer the paper's counts at 4x the conv cost; node_scale = 1 is DARTS' (94M).
`width_growth` (default 2) replaces the doubling per level: 3 gives node widths
width / 4 * (1, 3, 9, 27), the planner's choice for short budgets (coarse grids are cheap).

`op_choice` = {"index": int32 (4, 14, 2), "weight": float (4, 14, 2)} per
space.CELL_TYPES: all cells of a type share the sample; every cell has its own params.
"""

from typing import Any, NamedTuple

import jax
import numpy as np
from jaxtyping import Array, Float, Int

from jaxnas.nn import ops
from jaxnas.spaces.scnas import cells
from jaxnas.spaces.scnas import space

PyTree = Any
Volume = Float[Array, "b x y z c"]
Logits = Float[Array, "b x y z k"]
OpChoice = dict[str, Array]
STEM = -1  # the stem's position among cell outputs
NUM_REDUCTIONS = space.CELL_LAYOUT.count("reduction")
DEFAULT_NODE_SCALE = 0.25
DEFAULT_GROWTH = 2  # Node width factor per level down (the paper's doubling).


class CellSpec(NamedTuple):
    """Static wiring of one cell of the network."""

    cell_type: str
    type_index: int  # row of op_choice / arch
    level: int  # output resolution = input / 2**level
    s0: int  # index of the cell whose output is s0 (STEM for the stem)
    s1: int
    skip: int | None  # encoder output summed into s1 (decoder cells), or None
    s0_resize: str  # "same", "down" or "up": s0's grid relative to the cell's input grid


def topology() -> tuple[CellSpec, ...]:
    """The wiring of space.CELL_LAYOUT (no widths): see the module docstring."""
    levels = {STEM: 0}
    encoder_at_level = {0: STEM}
    specs = []
    for i, cell_type in enumerate(space.CELL_LAYOUT):
        s0, s1 = max(i - 2, STEM), max(i - 1, STEM)
        delta = {"reduction": 1, "expansion": -1}.get(cell_type, 0)
        levels[i] = levels[s1] + delta
        skip = None
        if cell_type in ("expansion", "normal_dec"):
            partner = encoder_at_level.get(levels[s1])
            skip = partner if partner not in (None, s1) else None
        else:
            encoder_at_level[levels[i]] = i
        # s0 relative to the grid the cell works on before its own resize (= s1's grid).
        gap = levels[s0] - levels[s1]
        if abs(gap) > 1:
            raise ValueError(f"cell {i}: s0 and s1 are {abs(gap)} levels apart")
        s0_resize = {0: "same", -1: "down", 1: "up"}[gap]
        specs.append(
            CellSpec(
                cell_type, space.CELL_TYPES.index(cell_type), levels[i], s0, s1, skip, s0_resize
            )
        )
    return tuple(specs)


def node_widths(width: int, node_scale: float = DEFAULT_NODE_SCALE,
                width_growth: int = DEFAULT_GROWTH) -> tuple[int, ...]:
    """Node width c_l = width * node_scale * width_growth**l of the cells at level
    l = 0..NUM_REDUCTIONS."""
    widths = []
    for level in range(NUM_REDUCTIONS + 1):
        c = width * width_growth**level * node_scale
        if c < 1 or c != int(c):
            raise ValueError(
                f"width {width} * {width_growth}**{level} * node_scale {node_scale} = {c} "
                "must be a positive integer (use a width divisible by 4)"
            )
        widths.append(int(c))
    return tuple(widths)


# Channels of the full-resolution stage: 8x the voxels of level 0. It takes a third of a
# derived 64^3 step (385 ms of 1.07 s), but 4 channels (0.85x the step) scored 0.900 and
# 0.903 against 0.903 and 0.909 with 8 at equal wall-clock (WORKSPACE.md).
REFINE_WIDTH = 8


def refine_spec(in_channels: int, num_classes: int, width: int) -> dict:
    """Params of the full-resolution stage of a stride-2 stem (see `_forward`)."""
    r = min(width, REFINE_WIDTH)
    return {"image": ops.stem_spec(in_channels, r),
            "up": ops.he_spec((width, r)),
            "conv": {"w": ops.he_spec((3, 3, 3, r, r)), **ops.norm_spec(r)},
            "head": ops.ParamSpec((r, num_classes), "lecun", r)}


def aux_cells() -> tuple[int, ...]:
    """The decoder cells that end a coarse level (1 and 2): deep supervision heads."""
    return tuple(i for i, spec in enumerate(topology())
                 if spec.cell_type == "normal_dec" and spec.level >= 1)


def network_spec(
    *, in_channels: int, num_classes: int, width: int, node_scale: float = DEFAULT_NODE_SCALE,
    width_growth: int = DEFAULT_GROWTH, stem_stride: int = 1, deep_supervision: bool = False,
) -> dict:
    """Param specs of the supernet (see `init_network`).

    stem_stride 2 adds `refine`: the cells then run on a grid half as fine, and a
    full-resolution stage adds to their upsampled logits what the coarse grid cannot
    hold: a 3x3x3 Conv-IN of [the image's Conv-IN + the upsampled coarse features].
    deep_supervision adds `aux`: a 1x1x1 head with bias on each cell of `aux_cells()`.
    """
    if stem_stride not in (1, 2):
        raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
    widths = node_widths(width, node_scale, width_growth)
    channels = {STEM: width}
    cell_specs, skips = [], {}
    for i, spec in enumerate(topology()):
        c = widths[spec.level]
        cell_specs.append(
            cells.cell_spec(
                spec.cell_type, channels[spec.s0], channels[spec.s1], c, s0_resize=spec.s0_resize
            )
        )
        channels[i] = cells.output_channels(c)
        if spec.skip is not None and channels[spec.skip] != channels[spec.s1]:
            skips[str(i)] = {"w": ops.he_spec((channels[spec.skip], channels[spec.s1]))}
    c_last = channels[len(cell_specs) - 1]
    spec = {
        "stem": ops.stem_spec(in_channels, width),
        "cells": cell_specs,
        "skips": skips,
        "out": {
            "w": ops.ParamSpec((c_last, num_classes), "lecun", c_last),
            "b": ops.ParamSpec((num_classes,), "zeros"),
        },
    }
    if stem_stride == 2:
        spec["refine"] = refine_spec(in_channels, num_classes, width)
    if deep_supervision:
        spec["aux"] = {str(i): {"w": ops.ParamSpec((channels[i], num_classes), "lecun",
                                                   channels[i]),
                                "b": ops.ParamSpec((num_classes,), "zeros")}
                       for i in aux_cells()}
    return spec


def stem_stride(params: dict) -> int:
    """2 if the params hold a full-resolution refinement (stride-2 stem), else 1."""
    return 2 if "refine" in params else 1


def init_network(
    key: jax.Array,
    *,
    in_channels: int,
    num_classes: int,
    width: int,
    node_scale: float = DEFAULT_NODE_SCALE,
    width_growth: int = DEFAULT_GROWTH,
    stem_stride: int = 1,
    deep_supervision: bool = False,
) -> dict:
    """Supernet params: {"stem", "cells": [12 cell params], "skips": {str(i): ...}, "out"}
    (+ "refine" with stem_stride 2, "aux" with deep_supervision).

    Args:
      key: PRNG key (one draw; about 0.3 s eagerly, also fine under jit / eval_shape).
      in_channels: image channels (modalities).
      num_classes: logits channels (background included).
      width: stem output channels (paper: 32); see the module docstring for the schedule.
      node_scale: node width / cell level width (default 1/4: cell outputs = width * 2**l).
      width_growth: node width factor per level down (default 2, the paper's doubling).
      stem_stride: 1 (paper) or 2 (cells on a grid half as fine; see `network_spec`).
      deep_supervision: heads on the coarse decoder levels (`network_spec`).
    """
    return ops.init_params(
        key,
        network_spec(
            in_channels=in_channels, num_classes=num_classes, width=width, node_scale=node_scale,
            width_growth=width_growth, stem_stride=stem_stride,
            deep_supervision=deep_supervision,
        ),
    )


def _check_input(params: dict, image: Volume, width: int | None, num_classes: int | None):
    """Static checks: divisible patch sizes and, when given, width / num_classes."""
    factor = 2**NUM_REDUCTIONS * stem_stride(params)
    if image.ndim != 5 or any(n % factor for n in image.shape[1:4]):
        raise ValueError(
            f"image must be (b, x, y, z, c) with x, y, z divisible by {factor}, got {image.shape}"
        )
    if width is not None and params["stem"]["w"].shape[-1] != width:
        raise ValueError(f"width={width} but params have {params['stem']['w'].shape[-1]}")
    if num_classes is not None and params["out"]["w"].shape[-1] != num_classes:
        raise ValueError(
            f"num_classes={num_classes} but params have {params['out']['w'].shape[-1]}"
        )


def _forward(params: dict, image: Volume, cell_fn, impl: str, return_aux: bool = False):
    """Stem -> cells (cell_fn(cell_params, s0, s1, spec)) with decoder skips -> out cell.

    return_aux: (logits, [the `aux` heads' logits on their cells' grids]) instead.
    """
    outputs = {STEM: ops.apply_stem(params["stem"], image, stride=stem_stride(params),
                                    impl=impl)}
    for i, spec in enumerate(topology()):
        s1 = outputs[spec.s1]
        if spec.skip is not None:
            partner = outputs[spec.skip]
            if str(i) in params["skips"]:
                partner = ops.pointwise(partner, params["skips"][str(i)]["w"])
            s1 = s1 + partner
        outputs[i] = cell_fn(params["cells"][i], outputs[spec.s0], s1, spec)
    # The last cell's output is a sum of normalised, not yet activated maps.
    features = ops.leaky_relu(outputs[len(params["cells"]) - 1])
    logits = ops.pointwise(features, params["out"]["w"]) + params["out"]["b"]
    if "refine" in params:
        # Stride-2 stem: one conv at full resolution sees the image's edges next to the
        # coarse features (squeezed to a few channels before the upsample, 8x cheaper),
        # and corrects the upsampled logits: a residual, so it starts from them.
        r = params["refine"]
        up = ops.upsample2(ops.pointwise(features, r["up"]), impl=impl)
        h = ops.leaky_relu(ops.apply_stem(r["image"], image, impl=impl) + up)
        h = ops.leaky_relu(ops.instance_norm(r["conv"], ops.conv3(h, r["conv"]["w"],
                                                                   impl=impl)))
        logits = ops.upsample2(logits, impl=impl) + ops.pointwise(h, r["head"])
    if return_aux:
        return logits, [ops.pointwise(ops.leaky_relu(outputs[int(i)]), head["w"]) + head["b"]
                        for i, head in params.get("aux", {}).items()]
    return logits


def apply_network(
    params: dict,
    image: Volume,
    op_choice: OpChoice,
    *,
    width: int | None = None,
    num_classes: int | None = None,
    impl: str = "fast",
) -> Logits:
    """The supernet with sampled edges (SCNAS Algorithm 2): two ops per edge.

    Args:
      params: from `init_network`.
      image: (b, x, y, z, in_channels), x, y, z divisible by 8.
      op_choice: {"index": int32 (4, 14, 2), "weight": float (4, 14, 2)}, traced (one
        compile serves every sample); rows in space.CELL_TYPES order.
      width, num_classes: optional checks against params (the params fix both).
      impl: "fast" (XLA:CPU) or "xla" (GPUs); see ops.py.

    Returns:
      logits (b, x, y, z, num_classes).
    """
    _check_input(params, image, width, num_classes)
    index, weight = op_choice["index"], op_choice["weight"]

    def cell_fn(cell_params, s0, s1, spec):
        return cells.apply_cell(
            cell_params,
            s0,
            s1,
            index[spec.type_index],
            weight[spec.type_index],
            cell_type=spec.cell_type,
            impl=impl,
        )

    return _forward(params, image, cell_fn, impl)


def apply_network_dense(
    params: dict,
    image: Volume,
    weights: Float[Array, "t e o"],
    *,
    width: int | None = None,
    num_classes: int | None = None,
    impl: str = "fast",
) -> Logits:
    """The supernet with every op on every edge weighted by weights (4, 14, 8) (DARTS)."""
    _check_input(params, image, width, num_classes)

    def cell_fn(cell_params, s0, s1, spec):
        return cells.apply_cell_dense(
            cell_params, s0, s1, weights[spec.type_index], cell_type=spec.cell_type, impl=impl
        )

    return _forward(params, image, cell_fn, impl)


# --- Parameter counts ---


def num_params(params: PyTree) -> int:
    """Number of scalars in a params pytree."""
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(params)))


def num_params_derived(params: dict, index: Int[Array, "t e"]) -> int:
    """Parameters of the derived network: one op per edge, index (4, 14) into OP_NAMES.

    Counts the stem, preprocessing, skips, out cell and, on every edge, only the chosen
    op (zero and parameter-free ops count 0). SCNAS keeps these params: no retraining.
    """
    index = np.asarray(index)
    total = num_params({k: v for k, v in params.items() if k != "cells"})
    for spec, cell_params in zip(topology(), params["cells"]):
        total += num_params({k: v for k, v in cell_params.items() if k != "edges"})
        for g, (edges, _) in enumerate(cells.edge_groups(spec.cell_type)):
            for e in edges:
                name = space.OP_NAMES[index[spec.type_index, e]]
                per_edge = num_params(cell_params["edges"][g][name])
                total += per_edge // len(edges)
    return total
