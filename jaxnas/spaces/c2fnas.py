"""C2FNAS (Yu et al. 2019, "Coarse-to-Fine Neural Architecture Search for 3D Medical Image
Segmentation"), the pure parts: the macro topology space, topology grouping, one
supernet whose topology and op weights are traced inputs, and the derived network.

Arrays are channels-last, float32: image (b, x, y, z, in_channels) -> logits
(b, x, y, z, num_classes); x, y, z divisible by 8 (levels 0..3).

The space
- NUM_CELLS = 12 cells, NUM_LEVELS = 4 levels; level l works at resolution 1 / 2**l of
  the patch with c_l = width * 2**l channels. Stem (ops.stem_spec, 3x3x3 Conv-IN) at
  level 0; head: 1x1x1 conv with bias at level 0 -> num_classes.
- A topology is a tuple of 12 levels (l_1, ..., l_12); cells are numbered 1..12 in
  messages, as in the paper, and l_0 = 0 is the stem. It is a valid U-path iff every
  level is in [0, NUM_LEVELS - 1], |l_i - l_{i-1}| <= 1, l_12 = 0, the path is unimodal
  (non-decreasing, then non-increasing: one descent, one ascent) and max level >= 1.
  Counting: the 12 steps are +1, 0 or -1 with all +1's before all -1's, k of each, so
  there are sum_{k=1..3} C(12, 2k) = 66 + 495 + 924 = 1485 valid topologies.
- Cell i takes the output of cell i - 1 and moves it to level l_i:
  down (l_i = l_{i-1} + 1): LeakyReLU, 3x3x3 stride-2 conv to c_{l_i}, IN;
  same: as is;
  up (l_i = l_{i-1} - 1): 1x1x1 conv to c_{l_i}, trilinear upsampling by 2, IN, then ADD
  the most recent feature map at level l_i (in a U-path: the encoder's last cell at that
  level, or the stem; the encoder-decoder skip). The 1x1x1 conv runs before the
  upsampling: both are linear on different axes, so the result is the same at 1/8 of the
  multiply-adds.
  Then the cell's ops, residual: out = h + sum_k w_k op_k(h).
- Ops (OP_NAMES, 2D, 3D, pseudo-3D): LeakyReLU-Conv 3x3x1-IN; LeakyReLU-Conv 3x3x3-IN;
  LeakyReLU-Conv 3x3x1-IN-LeakyReLU-Conv 1x1x3-IN. Size-preserving padding.
- Op weights: float (12, 3). Coarse stage: uniform 1/3 (every op runs); fine stage:
  softmax(alpha) (DARTS). A derived network has one op per cell: `ops`, a tuple of 12
  op indices into OP_NAMES.

Formats
- Supernet params {"stem", "cells": [level 0..3 dicts, leaves stacked over the 12 cells],
  "head": {"w", "b"}}; level l: {"down" (l >= 1), "up" (l <= 2), "ops": {name: params}}.
- Derived params {"stem", "cells": [12 dicts {"down" or "up" if used, "ops": {name}}],
  "head"}; `compact_params` cuts them from the supernet, `init_derived` draws new ones.
- Genotype JSON: {"topology": [12 ints], "ops": [12 op names]} (`to_json`, `from_json`).

The supernet scans over the cells; its carry is the pyramid (one map per level, zeros
until first written) and the previous level. The body is a lax.switch over the 10
(move, target level) transitions, each branch in jax.checkpoint (the backward pass keeps
the branch inputs, not the residuals of all 10 branches). A traced topology is not
validated: check it on the host (`check_topology`) before feeding it.
"""

import itertools
import warnings
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float, Int
from scipy.cluster import vq

from jaxnas.nn import ops

PyTree = Any
Volume = Float[Array, "b x y z c"]
Logits = Float[Array, "b x y z k"]

NUM_CELLS = 12
NUM_LEVELS = 4
OP_NAMES = ("conv_3x3x1", "conv_3x3x3", "p3d_3x3x1_1x1x3")
MOVES = ("same", "down", "up")
_DIMS = ("NDHWC", "DHWIO", "NDHWC")  # channels-last convs, as in ops.py
# The switch branches of the supernet: (move, target level).
TRANSITIONS = (
    tuple(("same", l) for l in range(NUM_LEVELS))
    + tuple(("down", l) for l in range(1, NUM_LEVELS))
    + tuple(("up", l) for l in range(NUM_LEVELS - 1))
)


# --- The topology space (numpy only) ---


def _topology_error(levels, num_cells: int, num_levels: int) -> str | None:
    """Why `levels` is not a valid U-path, or None."""
    levels = list(levels)
    if len(levels) != num_cells:
        return f"topology has {len(levels)} cells, expected {num_cells}"
    for i, level in enumerate(levels, 1):
        if isinstance(level, bool) or not isinstance(level, (int, np.integer)):
            return f"cell {i} has level {level!r}, not an integer"
        if not 0 <= level < num_levels:
            return f"cell {i} is at level {level!r}, outside [0, {num_levels - 1}]"
    prev, ascended = 0, None  # ascended: cell number of the first up move
    for i, level in enumerate(levels, 1):
        if abs(level - prev) > 1:
            return f"cell {i} jumps from level {prev} to {level} (at most one level per cell)"
        if level < prev and ascended is None:
            ascended = i
        if level > prev and ascended is not None:
            return (
                f"cell {i} goes down again (level {prev} -> {level}) after going up at cell "
                f"{ascended}: a U-path has one descent, then one ascent"
            )
        prev = level
    if levels[-1] != 0:
        return f"the last cell is at level {levels[-1]}: a U-path ends at level 0"
    if max(levels) < 1:
        return "the path never leaves level 0 (max level must be >= 1)"
    return None


def is_valid_topology(
    levels: Sequence[int], *, num_cells: int = NUM_CELLS, num_levels: int = NUM_LEVELS
) -> bool:
    """Whether `levels` (one level per cell) is a U-path (module docstring)."""
    return _topology_error(levels, num_cells, num_levels) is None


def check_topology(
    levels: Sequence[int], *, num_cells: int = NUM_CELLS, num_levels: int = NUM_LEVELS
) -> tuple[int, ...]:
    """Returns `levels` as a tuple of ints; ValueError saying what is wrong if not a U-path."""
    error = _topology_error(levels, num_cells, num_levels)
    if error:
        raise ValueError(f"invalid topology {tuple(levels)}: {error}")
    return tuple(int(l) for l in levels)


def enumerate_topologies(num_cells: int = NUM_CELLS, num_levels: int = NUM_LEVELS) -> np.ndarray:
    """All valid U-paths, int32 (n, num_cells), lexicographic order. n = 1485 for 12 / 4.

    Built from the steps: k +1's and k -1's (k = 1..num_levels-1, all +1's first) placed
    among the num_cells steps, zeros elsewhere.
    """
    paths = []
    for k in range(1, num_levels):
        for moves in itertools.combinations(range(num_cells), 2 * k):
            steps = np.zeros(num_cells, np.int32)
            steps[list(moves[:k])], steps[list(moves[k:])] = 1, -1
            paths.append(np.cumsum(steps))
    if not paths:
        return np.zeros((0, num_cells), np.int32)
    paths = np.unique(np.stack(paths).astype(np.int32), axis=0)  # sorted rows
    return paths


def sample_topologies(
    rng: np.random.Generator | int,
    n: int,
    *,
    num_cells: int = NUM_CELLS,
    num_levels: int = NUM_LEVELS,
) -> np.ndarray:
    """n topologies (n, num_cells) uniform over the enumeration: distinct when n <= count,
    with replacement otherwise."""
    rng = np.random.default_rng(rng)
    space = enumerate_topologies(num_cells, num_levels)
    return space[rng.choice(len(space), size=n, replace=n > len(space))]


def group_topologies(topologies: np.ndarray, num_groups: int, seed: int = 0) -> np.ndarray:
    """Group labels (n,) int in 0..k'-1, every group non-empty: k-means on the level vectors.

    k' <= min(num_groups, distinct topologies) (k-means may leave clusters empty; they are
    dropped). Identical topologies always share a group (nearest-centroid assignment).
    """
    data = np.asarray(topologies, np.float64)
    if data.ndim != 2 or not len(data):
        raise ValueError(f"topologies must be a non-empty (n, cells) array, got {data.shape}")
    if num_groups < 1:
        raise ValueError(f"num_groups must be >= 1, got {num_groups}")
    k = min(num_groups, len(np.unique(data, axis=0)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "One of the clusters is empty": relabelled below
        _, labels = vq.kmeans2(data, k, minit="++", seed=seed)
    return np.unique(labels, return_inverse=True)[1].astype(np.int32)


def move_of(prev_level: int, level: int) -> str:
    """"same", "down" (to level + 1: coarser) or "up" (to level - 1: finer)."""
    return MOVES[{0: 0, 1: 1, -1: 2}[level - prev_level]]


# --- Params ---


def level_widths(width: int) -> tuple[int, ...]:
    """Channels c_l = width * 2**l of level l = 0..3."""
    return tuple(width * 2**l for l in range(NUM_LEVELS))


def _conv_norm_spec(shape: tuple[int, ...]) -> dict:
    return {"w": ops.he_spec(shape), **ops.norm_spec(shape[-1])}


def op_spec(name: str, c: int) -> dict:
    """Params of op `name` (OP_NAMES) with c channels in and out."""
    if name == "conv_3x3x1":
        return _conv_norm_spec((3, 3, 1, c, c))
    if name == "conv_3x3x3":
        return _conv_norm_spec((3, 3, 3, c, c))
    if name == "p3d_3x3x1_1x1x3":
        return {
            "conv1": _conv_norm_spec((3, 3, 1, c, c)),
            "conv2": _conv_norm_spec((1, 1, 3, c, c)),
        }
    raise ValueError(f"unknown op {name!r}; expected one of {OP_NAMES}")


def _down_spec(c: Sequence[int], level: int) -> dict:
    return _conv_norm_spec((3, 3, 3, c[level - 1], c[level]))


def _up_spec(c: Sequence[int], level: int) -> dict:
    # lecun: the input is a normalised map, not activated.
    w = ops.ParamSpec((c[level + 1], c[level]), "lecun", c[level + 1])
    return {"w": w, **ops.norm_spec(c[level])}


def _level_spec(c: Sequence[int], level: int) -> dict:
    spec = {}
    if level >= 1:
        spec["down"] = _down_spec(c, level)
    if level <= NUM_LEVELS - 2:
        spec["up"] = _up_spec(c, level)
    spec["ops"] = {name: op_spec(name, c[level]) for name in OP_NAMES}
    return spec


def _outer_spec(in_channels: int, num_classes: int, c0: int) -> dict:
    head = {
        "w": ops.ParamSpec((c0, num_classes), "lecun", c0),
        "b": ops.ParamSpec((num_classes,), "zeros"),
    }
    return {"stem": ops.stem_spec(in_channels, c0), "head": head}


def supernet_spec(in_channels: int, num_classes: int, width: int) -> dict:
    """Param specs of the supernet: {"stem", "cells": [4 levels, stacked over cells], "head"}."""
    c = level_widths(width)
    cells = [ops.stack_specs([_level_spec(c, l)] * NUM_CELLS) for l in range(NUM_LEVELS)]
    return {**_outer_spec(in_channels, num_classes, c[0]), "cells": cells}


def init_supernet(key: jax.Array, *, in_channels: int, num_classes: int, width: int) -> dict:
    """Supernet params (one random draw, ops.init_params); see `supernet_spec`."""
    return ops.init_params(key, supernet_spec(in_channels, num_classes, width))


def _check_ops(op_indices: Sequence[int]) -> tuple[int, ...]:
    op_indices = tuple(int(o) for o in op_indices)
    if len(op_indices) != NUM_CELLS or not all(0 <= o < len(OP_NAMES) for o in op_indices):
        raise ValueError(f"ops must be {NUM_CELLS} indices into {OP_NAMES}, got {op_indices}")
    return op_indices


def _derived_cell(level_params: dict, prev_level: int, level: int, op: int) -> dict:
    """One cell of the derived network cut from its level's params (specs or arrays)."""
    move = move_of(prev_level, level)
    cell = {move: level_params[move]} if move != "same" else {}
    cell["ops"] = {OP_NAMES[op]: level_params["ops"][OP_NAMES[op]]}
    return cell


def derived_spec(
    topology: Sequence[int], op_indices: Sequence[int], *, in_channels: int, num_classes: int,
    width: int,
) -> dict:
    """Param specs of a derived network (the structure `compact_params` returns)."""
    topology, op_indices = check_topology(topology), _check_ops(op_indices)
    c = level_widths(width)
    prev = (0, *topology[:-1])
    cells = [
        _derived_cell(_level_spec(c, l), p, l, o) for p, l, o in zip(prev, topology, op_indices)
    ]
    return {**_outer_spec(in_channels, num_classes, c[0]), "cells": cells}


def init_derived(
    key: jax.Array, topology: Sequence[int], op_indices: Sequence[int], *, in_channels: int,
    num_classes: int, width: int,
) -> dict:
    """Fresh params of a derived network (C2FNAS retrains the found one from scratch)."""
    return ops.init_params(
        key, derived_spec(topology, op_indices, in_channels=in_channels,
                          num_classes=num_classes, width=width)
    )


def compact_params(super_params: dict, topology: Sequence[int], op_indices: Sequence[int]) -> dict:
    """The derived network's params cut from the supernet's: per cell the transition it
    uses and its one op (topology and op_indices static)."""
    topology, op_indices = check_topology(topology), _check_ops(op_indices)
    prev = (0, *topology[:-1])
    cells = []
    for i, (p, l, o) in enumerate(zip(prev, topology, op_indices)):
        level_params = jax.tree.map(lambda a: a[i], super_params["cells"][l])
        cells.append(_derived_cell(level_params, p, l, o))
    return {"stem": super_params["stem"], "cells": cells, "head": super_params["head"]}


# --- The cell: one function for the supernet and the derived network ---


def _conv(x: Volume, w: Float[Array, "kx ky kz i o"], impl: str) -> Volume:
    """Size-preserving conv, no bias; 3x3x3 by ops.conv3, thin kernels by XLA directly."""
    if w.shape[:3] == (3, 3, 3):
        return ops.conv3(x, w, impl=impl)
    pad = [((k - 1) // 2, (k - 1) // 2) for k in w.shape[:3]]
    return lax.conv_general_dilated(x, w, (1, 1, 1), pad, dimension_numbers=_DIMS)


def _relu_conv_norm(params: dict, x: Volume, impl: str) -> Volume:
    return ops.instance_norm(params, _conv(ops.leaky_relu(x), params["w"], impl))


def apply_op(name: str, params: dict, x: Volume, *, impl: str = "fast") -> Volume:
    """Runs op `name` (OP_NAMES): (b, x, y, z, c) -> same shape."""
    if name in ("conv_3x3x1", "conv_3x3x3"):
        return _relu_conv_norm(params, x, impl)
    if name == "p3d_3x3x1_1x1x3":
        return _relu_conv_norm(params["conv2"], _relu_conv_norm(params["conv1"], x, impl), impl)
    raise ValueError(f"unknown op {name!r}; expected one of {OP_NAMES}")


def apply_cell(
    params: dict,
    prev: Volume,
    skip: Volume | None,
    weights: Float[Array, " k"] | None,
    *,
    move: str,
    impl: str = "fast",
) -> Volume:
    """One cell: transition of `prev` to the cell's level, then h + sum_k w_k op_k(h).

    Args:
      params: {"down" / "up" (read only for that move), "ops": {name: params}}; the ops
        present run in OP_NAMES order.
      prev: output of the previous cell (its level's grid and width).
      skip: the most recent map at the cell's level, added after an up move (else unused).
      weights: one weight per op present; None = all ones (the derived network).
      move: "same", "down" or "up" (MOVES).
    """
    if move == "down":
        p = params["down"]
        h = ops.instance_norm(p, ops.conv3(ops.leaky_relu(prev), p["w"], stride=2, impl=impl))
    elif move == "up":
        p = params["up"]
        h = ops.instance_norm(p, ops.upsample2(ops.pointwise(prev, p["w"]), impl=impl)) + skip
    elif move == "same":
        h = prev
    else:
        raise ValueError(f"move must be one of {MOVES}, got {move!r}")
    names = [n for n in OP_NAMES if n in params["ops"]]
    out = h
    for k, name in enumerate(names):
        y = apply_op(name, params["ops"][name], h, impl=impl)
        out = out + (y if weights is None else weights[k] * y)
    return out


def _check_input(image: Volume) -> None:
    factor = 2 ** (NUM_LEVELS - 1)
    if image.ndim != 5 or any(n % factor for n in image.shape[1:4]):
        raise ValueError(
            f"image must be (b, x, y, z, c) with x, y, z divisible by {factor}, got {image.shape}"
        )


def _head(params: dict, x: Volume) -> Logits:
    return ops.pointwise(x, params["head"]["w"]) + params["head"]["b"]


# --- The supernet: traced topology and op weights ---


def _branch_table() -> np.ndarray:
    """(prev level, level) -> switch branch (TRANSITIONS); 0 where no transition exists."""
    table = np.zeros((NUM_LEVELS, NUM_LEVELS), np.int32)
    for b, (move, level) in enumerate(TRANSITIONS):
        prev = {"same": level, "down": level - 1, "up": level + 1}[move]
        table[prev, level] = b
    return table


def _transition_branch(move: str, level: int, impl: str):
    source = {"same": level, "down": level - 1, "up": level + 1}[move]

    def branch(cell_params, pyramid, weights):
        out = apply_cell(
            cell_params[level], pyramid[source], pyramid[level], weights, move=move, impl=impl
        )
        return tuple(out if l == level else x for l, x in enumerate(pyramid))

    # Without the checkpoint the scan keeps every branch's residuals per cell (zero-filled
    # for the branches not taken): fwd + bwd at 32^3, width 8 needed 431 MiB of XLA temp
    # memory, 63 MiB with it (measured, XLA:CPU, impl "fast").
    return jax.checkpoint(branch)


def apply_supernet(
    params: dict,
    image: Volume,
    topology: Int[Array, "12"],
    op_weights: Float[Array, "12 3"],
    *,
    impl: str = "fast",
) -> Logits:
    """Supernet forward pass for any topology: one compile serves them all.

    Args:
      params: from `init_supernet`.
      image: (b, x, y, z, in_channels), x, y, z divisible by 8.
      topology: int32 (12,), a valid U-path (traced; not checked: see check_topology).
      op_weights: float (12, 3): cell i outputs h + sum_k op_weights[i, k] op_k(h).
      impl: "fast" (XLA:CPU) or "xla" (GPUs); see ops.py.

    Returns:
      logits (b, x, y, z, num_classes). Params of the levels and transitions the
      topology does not use get exactly zero gradient.
    """
    _check_input(image)
    stem = ops.apply_stem(params["stem"], image, impl=impl)
    c = [level["ops"][OP_NAMES[0]]["scale"].shape[-1] for level in params["cells"]]
    pyramid = tuple(
        stem if l == 0 else jnp.zeros(ops.strided_shape(stem.shape, 2**l)[:4] + (c[l],), stem.dtype)
        for l in range(NUM_LEVELS)
    )
    branches = [_transition_branch(move, level, impl) for move, level in TRANSITIONS]
    table = jnp.asarray(_branch_table())

    def body(carry, xs):
        pyramid, prev = carry
        cell_params, level, weights = xs
        pyramid = lax.switch(table[prev, level], branches, cell_params, pyramid, weights)
        return (pyramid, level), None

    xs = (params["cells"], jnp.asarray(topology, jnp.int32), jnp.asarray(op_weights, stem.dtype))
    (pyramid, _), _ = lax.scan(body, (pyramid, jnp.int32(0)), xs)
    return _head(params, pyramid[0])


def uniform_weights() -> Float[Array, "12 3"]:
    """The coarse stage's op weights: 1/3 each."""
    return jnp.full((NUM_CELLS, len(OP_NAMES)), 1.0 / len(OP_NAMES), jnp.float32)


# --- The derived network: static topology and ops ---


def apply_derived(
    params: dict,
    image: Volume,
    topology: Sequence[int],
    op_indices: Sequence[int],
    *,
    impl: str = "fast",
) -> Logits:
    """Derived network forward pass (params from `compact_params` or `init_derived`);
    topology and op_indices are static (a Python loop over the cells)."""
    _check_input(image)
    topology = check_topology(topology)
    _check_ops(op_indices)  # the op is implied by params; checked for a consistent call
    pyramid: list[Volume | None] = [ops.apply_stem(params["stem"], image, impl=impl)]
    pyramid += [None] * (NUM_LEVELS - 1)
    prev = 0
    for cell_params, level in zip(params["cells"], topology):
        source = pyramid[prev]
        pyramid[level] = apply_cell(
            cell_params, source, pyramid[level], None, move=move_of(prev, level), impl=impl
        )
        prev = level
    return _head(params, pyramid[0])


# --- Cost ---


_OP_TAPS = {"conv_3x3x1": 9, "conv_3x3x3": 27, "p3d_3x3x1_1x1x3": 9 + 3}


def derived_macs(
    topology: Sequence[int],
    op_indices: Sequence[int],
    *,
    in_channels: int,
    num_classes: int,
    width: int,
    patch_size: Sequence[int],
) -> float:
    """Multiply-adds of the convolutions (1x1x1 included) of one forward pass on one patch.

    Convention of jaxnas/cost.py: norms, activations, upsampling and sums not counted;
    each conv counted on the grid it runs on (the up 1x1x1 conv on the coarse grid).
    """
    topology, op_indices = check_topology(topology), _check_ops(op_indices)
    c = level_widths(width)
    voxels = [float(np.prod(patch_size)) / 8**l for l in range(NUM_LEVELS)]
    total = 27 * in_channels * c[0] * voxels[0] + c[0] * num_classes * voxels[0]  # stem, head
    prev = 0
    for level, op in zip(topology, op_indices):
        move = move_of(prev, level)
        if move == "down":
            total += 27 * c[level - 1] * c[level] * voxels[level]
        elif move == "up":
            total += c[level + 1] * c[level] * voxels[level + 1]
        total += _OP_TAPS[OP_NAMES[op]] * c[level] ** 2 * voxels[level]
        prev = level
    return total


# --- Genotype JSON ---


def to_json(topology: Sequence[int], op_indices: Sequence[int | str]) -> dict:
    """{"topology": [12 ints], "ops": [12 op names]}; ops as indices or names."""
    for o in op_indices:
        if isinstance(o, str) and o not in OP_NAMES:
            raise ValueError(f"unknown op {o!r}; expected one of {OP_NAMES}")
    indices = [OP_NAMES.index(o) if isinstance(o, str) else o for o in op_indices]
    topology, indices = check_topology(topology), _check_ops(indices)
    return {"topology": list(topology), "ops": [OP_NAMES[o] for o in indices]}


def validate_genotype(genotype: dict) -> None:
    """The registry's check of a c2fnas genotype: topology and ops (spaces/registry.py)."""
    from_json(genotype)


def from_json(d: dict) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(topology, op indices) from `to_json`'s dict; ValueError naming the bad field."""
    if not isinstance(d, dict):
        raise ValueError(f"genotype must be a dict, got {type(d).__name__}")
    for field in ("topology", "ops"):
        if not isinstance(d.get(field), list):
            raise ValueError(f"genotype field {field!r} must be a list, got {d.get(field)!r}")
    try:
        topology = check_topology(d["topology"])
    except ValueError as e:
        raise ValueError(f"genotype field 'topology': {e}") from None
    names = d["ops"]
    if len(names) != NUM_CELLS:
        raise ValueError(f"genotype field 'ops' has {len(names)} entries, expected {NUM_CELLS}")
    for i, name in enumerate(names, 1):
        if name not in OP_NAMES:
            raise ValueError(
                f"genotype field 'ops': cell {i} has unknown op {name!r}; expected one of "
                f"{OP_NAMES}"
            )
    return topology, tuple(OP_NAMES.index(n) for n in names)
