"""Analytic cost of a derived architecture: parameters and multiply-adds at a patch size.

XLA's `cost_analysis()` sums every branch of a `lax.switch` (DESIGN.md section 3), so the
derived network is counted by hand. Like the SCNAS paper's table, "GFLOPs" here means
10^9 multiply-adds of the convolutions (pooling, normalisation and activations are not
counted). Voxel counts follow the network's grids: level l has prod(patch) / 8**l voxels.
"""

import numpy as np

from jaxnas.spaces.scnas import cells
from jaxnas.spaces.scnas import network
from jaxnas.spaces.scnas import space


def _edge_macs(op: str, c: int, voxels: float, stride: int) -> float:
    if op == "conv_3x3x3":
        return 27 * c * c * voxels
    if op.startswith("sep_conv"):
        return (27 * c + c * c) * voxels  # Depthwise 3x3x3 + pointwise 1x1x1.
    if op == "identity" and stride == 2:
        return c * c * voxels  # Factorized reduce: two 1x1x1 convs of c/2 outputs each.
    return 0.0  # Pools, identity, zero.


def derived_macs(index, *, in_channels: int, num_classes: int, width: int, patch_size,
                 node_scale: float = network.DEFAULT_NODE_SCALE, stem_stride: int = 1) -> float:
    """Multiply-adds of one forward pass of the derived network on one patch.

    Args:
      index: int (4, 14): the chosen op per cell type and edge (space.OP_NAMES).
      stem_stride: 2 puts the cells on a grid 8x smaller and adds the full-resolution
        full-resolution stage (network.refine_spec).
    """
    index = np.asarray(index)
    widths = network.node_widths(width, node_scale)
    full = float(np.prod(patch_size))
    voxels = [full / stem_stride**3 / 8**level for level in range(len(widths))]
    channels = {network.STEM: width}
    total = 27 * in_channels * width * voxels[0]  # Stem.
    if stem_stride == 2:
        r = min(width, network.REFINE_WIDTH)  # Image conv, squeeze, conv, head.
        total += (27 * in_channels * r + width * r / 8 + 27 * r * r + r * num_classes) * full
    topology = network.topology()
    levels = {network.STEM: 0, **{i: spec.level for i, spec in enumerate(topology)}}
    for i, spec in enumerate(topology):
        c, n_out = widths[spec.level], voxels[spec.level]
        # Preprocessing 1x1x1 convs run on the grid the edges start from.
        n_in = voxels[spec.level - 1] if spec.cell_type == "reduction" else n_out
        total += (channels[spec.s0] + channels[spec.s1]) * c * n_in
        for group, stride in cells.edge_groups(spec.cell_type):
            for e in group:
                op = space.OP_NAMES[index[spec.type_index, e]]
                total += _edge_macs(op, c, n_out, stride)
        channels[i] = cells.output_channels(c)
        if spec.skip is not None and channels[spec.skip] != channels[spec.s1]:
            # A 1x1x1 conv aligns the encoder output to s1 (same grid as s1).
            total += channels[spec.skip] * channels[spec.s1] * voxels[levels[spec.s1]]
    total += channels[len(space.CELL_LAYOUT) - 1] * num_classes * voxels[0]  # Out cell.
    return total


def derived_cost(index, params, *, in_channels: int, num_classes: int, width: int,
                 patch_size, node_scale: float = network.DEFAULT_NODE_SCALE) -> dict:
    """{"params": parameters kept by the derived network, "gflops": 1e9 multiply-adds}."""
    return {
        "params": network.num_params_derived(params, index),
        "gflops": derived_macs(index, in_channels=in_channels, num_classes=num_classes,
                               width=width, patch_size=patch_size, node_scale=node_scale,
                               stem_stride=network.stem_stride(params)) / 1e9,
        "patch_size": list(patch_size),
    }
