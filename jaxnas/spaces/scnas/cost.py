"""Analytic cost of a derived architecture: parameters, multiply-adds and the activation
memory of a training step at a patch size (the last also for the supernet, and as an
expectation under alpha for the search's memory cost term).

XLA's `cost_analysis()` sums every branch of a `lax.switch` (DESIGN.md section 3), so the
derived network is counted by hand. Like the SCNAS paper's table, "GFLOPs" here means
10^9 multiply-adds of the convolutions (pooling, normalisation and activations are not
counted). Voxel counts follow the network's grids: level l has prod(patch) / 8**l voxels.
"""

import jax
import jax.numpy as jnp
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
                 node_scale: float = network.DEFAULT_NODE_SCALE,
                 width_growth: int = network.DEFAULT_GROWTH, stem_stride: int = 1) -> float:
    """Multiply-adds of one forward pass of the derived network on one patch.

    Args:
      index: int (4, 14): the chosen op per cell type and edge (space.OP_NAMES).
      stem_stride: 2 puts the cells on a grid 8x smaller and adds the full-resolution
        full-resolution stage (network.refine_spec).
    """
    index = np.asarray(index)
    widths = network.node_widths(width, node_scale, width_growth)
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
                 patch_size, node_scale: float = network.DEFAULT_NODE_SCALE,
                 width_growth: int = network.DEFAULT_GROWTH) -> dict:
    """{"params": parameters kept by the derived network, "gflops": 1e9 multiply-adds}."""
    return {
        "params": network.num_params_derived(params, index),
        "gflops": derived_macs(index, in_channels=in_channels, num_classes=num_classes,
                               width=width, patch_size=patch_size, node_scale=node_scale,
                               width_growth=width_growth,
                               stem_stride=network.stem_stride(params)) / 1e9,
        "patch_size": list(patch_size),
    }


# --- Activation memory of a training step (what --memory_gb plans with) ---
# Feature maps a training step keeps for its backward pass, in units of (channels x
# voxels) of an op's output: a conv op keeps its LeakyReLU input, the three x-shifted
# slabs of the slab conv, its output and the normalised map (~6); a separable conv the
# activation, the depthwise and pointwise outputs and the normalised map (~4); the
# separable pools one map per pass (3); the factorized reduce its two halves and the
# normalised map (~3). Identity and zero keep nothing. XLA's buffer reuse and fusion move
# the real figure, so the total is scaled by factors fitted to XLA's
# `memory_analysis()` (experiments/calibrate_memory.py, BENCHMARKS.md).
KEPT_MAPS = {"conv_3x3x3": 6.0, "sep_conv_3x3x3_d2": 4.0, "sep_conv_3x3x3_d3": 4.0,
             "sep_conv_3x3x3_d4": 4.0, "max_pool_3x3x3": 3.0, "avg_pool_3x3x3": 3.0,
             "identity": 0.0, "zero": 0.0}
KEPT_REDUCE = 3.0  # identity at stride 2: the factorized reduce.
# XLA:CPU's temp bytes / analytic bytes of a batch-2 training step, median over 32^3 and
# 64^3 (derived: 3 random genotypes; width 16, stem stride 2; 2026-12-04). The calibrated
# figure was within -12% .. +10% of XLA's (derived) and -13% .. +18% (supernet): XLA's
# buffers have a fixed part the per-voxel model lacks. BENCHMARKS.md has the table.
CALIBRATION = {"derived": 1.47, "supernet": 1.11}


def _edge_maps(op: str, stride: int) -> float:
    return KEPT_REDUCE if (op == "identity" and stride == 2) else KEPT_MAPS[op]


def _network_maps(edge_maps, *, in_channels: int, num_classes: int, width: int,
                  patch_size, node_scale: float, width_growth: int,
                  stem_stride: int) -> float:
    """Kept floats of one patch: edge_maps(cell type index, edge, stride) gives the kept
    maps of an edge in units of its output (c x voxels); the rest is the fixed plumbing
    (stem, preprocessing, node sums and concatenations, head, refinement; the skips'
    1x1x1 convs are left out)."""
    widths = network.node_widths(width, node_scale, width_growth)
    full = float(np.prod(patch_size))
    voxels = [full / stem_stride**3 / 8**level for level in range(len(widths))]
    total = (in_channels + 3.0 * width) * voxels[0]  # Image, stem conv-norm-activation.
    if stem_stride == 2:
        r = min(width, network.REFINE_WIDTH)
        total += (in_channels + 9.0 * r + 2.0 * num_classes) * full
    channels = {network.STEM: width}
    for i, spec in enumerate(network.topology()):
        c, n_out = widths[spec.level], voxels[spec.level]
        n_in = voxels[spec.level - 1] if spec.cell_type == "reduction" else n_out
        total += 2 * 3.0 * c * n_in  # Two preprocessing ReLU-conv-norms.
        for group, stride in cells.edge_groups(spec.cell_type):
            for e in group:
                total += edge_maps(spec.type_index, e, stride) * c * n_out
        total += 2.0 * cells.output_channels(c) * n_out  # Node sums and the concatenation.
        channels[i] = cells.output_channels(c)
    total += (channels[len(space.CELL_LAYOUT) - 1] + 2.0 * num_classes) * voxels[0]
    return total


def derived_activation_bytes(index, *, in_channels: int, num_classes: int, width: int,
                             patch_size, batch_size: int,
                             node_scale: float = network.DEFAULT_NODE_SCALE,
                             width_growth: int = network.DEFAULT_GROWTH,
                             stem_stride: int = 1, calibrated: bool = True) -> float:
    """Bytes of activations a derived network's training step keeps (fp32), from the ops
    chosen: index (4, 14) into space.OP_NAMES."""
    index = np.asarray(index)

    def edge_maps(t, e, stride):
        return _edge_maps(space.OP_NAMES[index[t, e]], stride)

    maps = _network_maps(edge_maps, in_channels=in_channels, num_classes=num_classes,
                         width=width, patch_size=patch_size, node_scale=node_scale,
                         width_growth=width_growth,
                         stem_stride=stem_stride)
    return 4.0 * batch_size * maps * (CALIBRATION["derived"] if calibrated else 1.0)


def supernet_activation_bytes(*, in_channels: int, num_classes: int, width: int, patch_size,
                              batch_size: int, node_scale: float = network.DEFAULT_NODE_SCALE,
                              width_growth: int = network.DEFAULT_GROWTH,
                              stem_stride: int = 1, calibrated: bool = True) -> float:
    """Bytes of activations a supernet training step keeps. Every switch branch is under
    `jax.checkpoint` (ops.py), so an edge's ops keep nothing; the scan over a cell's edges
    keeps its carry, the stack of the cell's two inputs and its node states, at every
    edge: 2 + NUM_NODES maps per edge."""
    maps = _network_maps(lambda t, e, stride: 2.0 + space.NUM_NODES, in_channels=in_channels,
                         num_classes=num_classes, width=width, patch_size=patch_size,
                         node_scale=node_scale, width_growth=width_growth, stem_stride=stem_stride)
    return 4.0 * batch_size * maps * (CALIBRATION["supernet"] if calibrated else 1.0)


def edge_memory_table(*, width: int, patch_size, batch_size: int,
                      node_scale: float = network.DEFAULT_NODE_SCALE,
                      width_growth: int = network.DEFAULT_GROWTH,
                      stem_stride: int = 1) -> np.ndarray:
    """float (4, 14, 8): calibrated GiB a derived network's training step keeps for op o on
    edge e of cell type t, summed over the cells of that type. Its inner product with a
    one-hot genotype is the edge part of `derived_activation_bytes` (in GiB); with
    softmax(alpha) it is the expected memory a search can penalise (`memory_cost`)."""
    widths = network.node_widths(width, node_scale, width_growth)
    full = float(np.prod(patch_size))
    table = np.zeros((len(space.CELL_TYPES), space.NUM_EDGES, space.NUM_OPS))
    for spec in network.topology():
        c = widths[spec.level]
        n_out = full / stem_stride**3 / 8**spec.level
        for group, stride in cells.edge_groups(spec.cell_type):
            for e in group:
                for o, op in enumerate(space.OP_NAMES):
                    table[spec.type_index, e, o] += _edge_maps(op, stride) * c * n_out
    return table * 4.0 * batch_size * CALIBRATION["derived"] / 2**30


def memory_cost(arch, table) -> jax.Array:
    """Expected GiB of the derived network's edges under softmax(arch): differentiable in
    the arch logits (4, 14, 8), for a cost term in the alpha step (`--memory_weight`)."""
    return jnp.sum(jax.nn.softmax(arch, axis=-1) * table)
