"""RONASMIS (Bae et al. 2019): the macro search space and its shared-weight U-Net.

Arrays are channels-last, float32: image (b, x, y, z, in_channels) -> logits
(b, x, y, z, num_classes); x, y, z divisible by 8 (three downsamplings, four levels).
Convs, norms and activations are the primitives of jaxnas/ops.py; `impl` ("fast" CPU
forms, "xla" cuDNN forms) selects the code, never the params.

The base network (RONASMIS: "decoder 1x1x1 conv skip connections (DeepLabV3+), deep
supervision, instance normalisation, addition-based skip connections"): levels
l = 0..3 (resolution / 2**l) with c_l = width * 2**l channels.
- Stem: 3x3x3 Conv-IN (ops.apply_stem) to c_0 at level 0.
- Stages, in this order: encoder "enc0", "enc1", "enc2" (levels 0, 1, 2), "bottleneck"
  (level 3), decoder "dec2", "dec1", "dec0" (levels 2, 1, 0).
- Transitions (not searched): down (into enc1, enc2, bottleneck) = LeakyReLU-Conv3x3x3
  stride 2-IN (c_{l-1} -> c_l); up (into dec_l) = upsample2 then 1x1x1 conv
  (c_{l+1} -> c_l)-IN, the conv run on the coarse grid (equal: both linear).
- Searched, per stage: `op` (OP_NAMES) and `depth` (1 or 2 residual blocks of that op);
  a block is x + op(x) with
    conv_3x3x3       IN(Conv3x3x3(LeakyReLU(x)))
    conv_3x3x1       IN(Conv3x3x1(LeakyReLU(x)))                 (in-plane 2D conv)
    p3d_3x3x1_1x1x3  IN(Conv1x1x3(LeakyReLU(IN(Conv3x3x1(LeakyReLU(x))))))  (pseudo-3D)
    conv_3x3x3_d2    IN(Conv3x3x3 dilation 2(LeakyReLU(x)))
  Per decoder stage also `skip`: "add" sums IN(1x1x1 conv(e_l)) of the encoder output e_l
  of the same level into the upsampled input (addition, not concatenation); "none" not.
- Deep supervision: 1x1x1 heads with bias on LeakyReLU(d_l) after dec2 and dec1 (aux
  logits at 1/4 and 1/2 resolution), the main head after dec0.

`DECISIONS` is the ordered tuple of (name, options): per stage "<stage>/op",
"<stage>/depth", and for decoder stages "<stage>/skip" (17 decisions). A choice is an
int32 vector of len(DECISIONS) option indices; `choice_to_dict` gives the JSON form
{"enc0/op": "conv_3x3x3", "enc0/depth": 2, ..., "dec0/skip": "add"}.

Params. The shared (one-shot) params hold every option: each stage has two blocks, each
block the params of all 4 ops {op name: params}, each decoder stage a skip projection.
`apply_network` reads the choice two ways, with the same layer code (`_select`):
- traced (a jax array, e.g. under jit): ops by `lax.switch` (each branch checkpointed,
  so the backward pass keeps no residuals of the branches not taken), the second block
  and the skip by a two-way switch (a cond). One compile serves every child, and the
  params of whatever was not chosen get exactly zero gradient.
- static (numpy array or tuple of ints): Python selection; params may then be compact
  (`compact_params`: only the chosen op per block, one block at depth 1, no skip
  projection for "none"), the derived network.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float, Int

from jaxnas.baselines import uresnet
from jaxnas.nn import losses
from jaxnas.nn import ops

PyTree = Any
Volume = Float[Array, "b x y z c"]
Logits = Float[Array, "b x y z k"]
Choice = Int[Array, "t"] | np.ndarray | Sequence[int]

NUM_LEVELS = 4
OP_NAMES = ("conv_3x3x3", "conv_3x3x1", "p3d_3x3x1_1x1x3", "conv_3x3x3_d2")
DEPTHS = (1, 2)
SKIPS = ("add", "none")
ENCODER_STAGES = (("enc0", 0), ("enc1", 1), ("enc2", 2), ("bottleneck", 3))
DECODER_STAGES = (("dec2", 2), ("dec1", 1), ("dec0", 0))
STAGES = ENCODER_STAGES + DECODER_STAGES


def _decisions() -> tuple[tuple[str, tuple], ...]:
    out = []
    for stage, _ in STAGES:
        out += [(f"{stage}/op", OP_NAMES), (f"{stage}/depth", DEPTHS)]
        if stage.startswith("dec"):
            out.append((f"{stage}/skip", SKIPS))
    return tuple(out)


DECISIONS = _decisions()
VOCAB_SIZES = tuple(len(options) for _, options in DECISIONS)
_POSITION = {name: t for t, (name, _) in enumerate(DECISIONS)}
_CONV_DIMS = ("NDHWC", "DHWIO", "NDHWC")


def level_widths(width: int) -> tuple[int, ...]:
    """Channels c_l = width * 2**l of level l = 0..3."""
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    return tuple(width * 2**level for level in range(NUM_LEVELS))


# --- Choices ---


def choice_to_dict(choice: Choice) -> dict[str, str | int]:
    """{decision name: option value} (str or int: JSON-ready)."""
    choice = np.asarray(choice)
    if choice.shape != (len(DECISIONS),):
        raise ValueError(f"choice must have shape ({len(DECISIONS)},), got {choice.shape}")
    return {name: options[int(i)] for (name, options), i in zip(DECISIONS, choice)}


def validate_genotype(genotype: dict) -> None:
    """The registry's check of a ronasmis genotype: its "decisions" (spaces/registry.py)."""
    if not isinstance(genotype.get("decisions"), dict):
        raise ValueError('a ronasmis genotype needs "decisions": {name: option}')
    dict_to_choice(genotype["decisions"])


def dict_to_choice(d: dict) -> np.ndarray:
    """Inverse of choice_to_dict; ValueError naming a bad, missing or unknown decision."""
    unknown = sorted(set(d) - set(_POSITION))
    if unknown:
        raise ValueError(f"unknown decisions {unknown}; expected {[n for n, _ in DECISIONS]}")
    choice = []
    for name, options in DECISIONS:
        if name not in d:
            raise ValueError(f"missing decision {name!r}; allowed options {options}")
        value = d[name]
        # `True in (1, 2)` holds in Python: refuse bools explicitly.
        if isinstance(value, bool) or value not in options:
            raise ValueError(f"decision {name!r} = {value!r}; allowed options {options}")
        choice.append(options.index(value))
    return np.asarray(choice, np.int32)


def _static_choice(choice) -> tuple[int, ...] | None:
    """The choice as Python ints if it is static (numpy / sequence), else None."""
    if isinstance(choice, jax.Array):
        return None
    values = np.asarray(choice)
    if values.shape != (len(DECISIONS),) or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"choice must be {len(DECISIONS)} ints, got {values!r}")
    if np.any(values < 0) or np.any(values >= np.asarray(VOCAB_SIZES)):
        raise ValueError(f"choice {values.tolist()} out of range; vocab sizes {VOCAB_SIZES}")
    return tuple(int(v) for v in values)


def _select(index, branches: Sequence[Callable], *operands, remat: bool = False):
    """branches[index](*operands): Python indexing for a static int, lax.switch otherwise.

    The one place where the two uses of apply_network differ. `remat` wraps the traced
    branches in jax.checkpoint (ops.apply_edge_op: without it the switch's backward
    keeps zero-filled residuals of every branch).
    """
    if isinstance(index, int):
        return branches[index](*operands)
    if remat:
        branches = [jax.checkpoint(b) for b in branches]
    return lax.switch(jnp.asarray(index, jnp.int32), branches, *operands)


# --- Layers ---


def _lecun(c_in: int, c_out: int) -> ops.ParamSpec:
    """1x1x1 conv weight on an input that is not activated (residual streams)."""
    return ops.ParamSpec((c_in, c_out), "lecun", c_in)


def _conv_norm_spec(kernel: tuple[int, int, int], c_in: int, c_out: int) -> dict:
    return {"w": ops.he_spec((*kernel, c_in, c_out)), **ops.norm_spec(c_out)}


def _anisotropic_conv(x: Volume, w: Float[Array, "kx ky kz i o"]) -> Volume:
    """Conv with an odd kernel (3x3x1, 1x1x3), padding keeping the size; both impls."""
    padding = [(k // 2, k // 2) for k in w.shape[:3]]
    return lax.conv_general_dilated(x, w, (1, 1, 1), padding, dimension_numbers=_CONV_DIMS)


def op_spec(name: str, c: int) -> dict:
    """Param specs of block op `name` (OP_NAMES), c channels in and out."""
    if name in ("conv_3x3x3", "conv_3x3x3_d2"):
        return _conv_norm_spec((3, 3, 3), c, c)
    if name == "conv_3x3x1":
        return _conv_norm_spec((3, 3, 1), c, c)
    if name == "p3d_3x3x1_1x1x3":
        return {"conv1": _conv_norm_spec((3, 3, 1), c, c),
                "conv2": _conv_norm_spec((1, 1, 3), c, c)}
    raise ValueError(f"unknown op {name!r}; expected one of {OP_NAMES}")


def apply_op(name: str, params: dict, x: Volume, *, impl: str = "fast") -> Volume:
    """The residual branch of a block: (b, x, y, z, c) -> same shape."""
    h = ops.leaky_relu(x)
    if name == "conv_3x3x3":
        return ops.instance_norm(params, ops.conv3(h, params["w"], impl=impl))
    if name == "conv_3x3x3_d2":
        return ops.instance_norm(params, ops.conv3(h, params["w"], dilation=2, impl=impl))
    if name == "conv_3x3x1":
        return ops.instance_norm(params, _anisotropic_conv(h, params["w"]))
    if name == "p3d_3x3x1_1x1x3":
        h = ops.instance_norm(params["conv1"], _anisotropic_conv(h, params["conv1"]["w"]))
        h = _anisotropic_conv(ops.leaky_relu(h), params["conv2"]["w"])
        return ops.instance_norm(params["conv2"], h)
    raise ValueError(f"unknown op {name!r}; expected one of {OP_NAMES}")


@functools.cache
def _op_branches(impl: str) -> tuple[Callable, ...]:
    """(block params {op name: params}, x) -> op(x), one function per OP_NAMES entry."""
    return tuple(
        functools.partial(lambda name, p, x: apply_op(name, p[name], x, impl=impl), name)
        for name in OP_NAMES
    )


def _apply_stage_blocks(blocks: list, x: Volume, op, depth, *, impl: str) -> Volume:
    """1 or 2 residual blocks x + op(x); op, depth are option indices (static or traced)."""
    branches = _op_branches(impl)
    x = x + _select(op, branches, blocks[0], x, remat=True)
    # blocks[1] is only read when the second block runs (compact params may lack it).
    second = lambda v: v + _select(op, branches, blocks[1], v, remat=True)  # noqa: E731
    return _select(depth, (lambda v: v, second), x)


def _head_spec(c: int, num_classes: int) -> dict:
    return {"w": ops.ParamSpec((c, num_classes), "lecun", c),
            "b": ops.ParamSpec((num_classes,), "zeros")}


def _apply_head(params: dict, d: Volume) -> Logits:
    return ops.pointwise(ops.leaky_relu(d), params["w"]) + params["b"]


# --- The network ---


def network_spec(*, in_channels: int, num_classes: int, width: int) -> dict:
    """Shared param specs: every stage {"down"?, "up"?, "skip"?, "blocks": [2 x {op: ...}],
    "head"?} with every option's params (see the module docstring)."""
    c = level_widths(width)
    blocks = lambda level: [  # noqa: E731
        {name: op_spec(name, c[level]) for name in OP_NAMES} for _ in range(max(DEPTHS))
    ]
    spec = {"stem": ops.stem_spec(in_channels, c[0])}
    for stage, level in ENCODER_STAGES:
        down = {"down": _conv_norm_spec((3, 3, 3), c[level - 1], c[level])} if level else {}
        spec[stage] = {**down, "blocks": blocks(level)}
    for stage, level in DECODER_STAGES:
        spec[stage] = {
            "up": {"w": _lecun(c[level + 1], c[level]), **ops.norm_spec(c[level])},
            "skip": {"w": _lecun(c[level], c[level]), **ops.norm_spec(c[level])},
            "blocks": blocks(level),
            "head": _head_spec(c[level], num_classes),
        }
    return spec


def init_network(key: jax.Array, *, in_channels: int, num_classes: int, width: int) -> dict:
    """Shared params (one draw of `key`, ops.init_params); see network_spec."""
    return ops.init_params(
        key, network_spec(in_channels=in_channels, num_classes=num_classes, width=width)
    )


def compact_params(shared_params: PyTree, choice: Choice) -> PyTree:
    """The derived network's params for a static choice: exactly what apply_network reads.

    Works on spec trees too: ops.num_spec_params(compact_params(network_spec(...), choice))
    is the derived network's parameter count.
    """
    values = _static_choice(choice)
    if values is None:
        raise ValueError("compact_params needs a static (numpy / int sequence) choice")
    out = {"stem": shared_params["stem"]}
    for stage, _ in STAGES:
        src = shared_params[stage]
        name = OP_NAMES[values[_POSITION[f"{stage}/op"]]]
        depth = DEPTHS[values[_POSITION[f"{stage}/depth"]]]
        dst = {k: v for k, v in src.items() if k not in ("blocks", "skip")}
        dst["blocks"] = [{name: block[name]} for block in src["blocks"][:depth]]
        if f"{stage}/skip" in _POSITION and SKIPS[values[_POSITION[f"{stage}/skip"]]] == "add":
            dst["skip"] = src["skip"]
        out[stage] = dst
    return out


def _check_input(image: Volume) -> None:
    factor = 2 ** (NUM_LEVELS - 1)
    if image.ndim != 5 or any(n % factor for n in image.shape[1:4]):
        raise ValueError(
            f"image must be (b, x, y, z, c) with x, y, z divisible by {factor}, got {image.shape}"
        )


def apply_network(
    params: PyTree, image: Volume, choice: Choice, *, impl: str = "fast", return_aux: bool = False
) -> Logits | tuple[Logits, list[Logits]]:
    """The child network `choice` of the shared network (or a derived network).

    Args:
      params: shared (init_network) params; with a static choice also compact_params.
      image: (b, x, y, z, in_channels), x, y, z divisible by 8.
      choice: int32 (len(DECISIONS),) option indices. A jax array (traced or not) selects
        with lax.switch: one compile for every child. A numpy array / int sequence
        selects in Python: only the chosen ops are traced.
      impl: "fast" (XLA:CPU) or "xla" (GPUs); see ops.py.
      return_aux: also return the deep-supervision logits.

    Returns:
      logits (b, x, y, z, num_classes); with return_aux, (logits, [1/4 resolution, 1/2
      resolution]) from the heads after dec2 and dec1, coarse first.
    """
    _check_input(image)
    static = _static_choice(choice)
    if static is None:
        choice = jnp.asarray(choice, jnp.int32)
        if choice.shape != (len(DECISIONS),):
            raise ValueError(f"choice must have shape ({len(DECISIONS)},), got {choice.shape}")
    values = choice if static is None else static  # jax scalars or Python ints: _select
    pick = lambda name: values[_POSITION[name]]  # noqa: E731

    x = ops.apply_stem(params["stem"], image, impl=impl)
    skips = {}
    for stage, level in ENCODER_STAGES:
        p = params[stage]
        if level:
            x = ops.instance_norm(
                p["down"], ops.conv3(ops.leaky_relu(x), p["down"]["w"], stride=2, impl=impl)
            )
        x = _apply_stage_blocks(p["blocks"], x, pick(f"{stage}/op"), pick(f"{stage}/depth"),
                                impl=impl)
        skips[level] = x

    aux = []
    for stage, level in DECODER_STAGES:
        p = params[stage]
        x = ops.instance_norm(p["up"], ops.upsample2(ops.pointwise(x, p["up"]["w"]), impl=impl))
        # Called at once (this iteration's p and e); p["skip"] is only read for "add".
        def add(u, p=p, e=skips[level]):
            return u + ops.instance_norm(p["skip"], ops.pointwise(e, p["skip"]["w"]))

        x = _select(pick(f"{stage}/skip"), (add, lambda u: u), x)
        x = _apply_stage_blocks(p["blocks"], x, pick(f"{stage}/op"), pick(f"{stage}/depth"),
                                impl=impl)
        if level and return_aux:
            aux.append(_apply_head(p["head"], x))
    logits = _apply_head(params["dec0"]["head"], x)
    return (logits, aux) if return_aux else logits


def ds_loss(
    params: PyTree,
    batch: dict,
    choice: Choice,
    *,
    num_classes: int,
    ce_weight: float = 0.0,
    impl: str = "fast",
) -> Float[Array, ""]:
    """Deep-supervision Dice(+CE) loss of child `choice` on {"image", "label"}."""
    logits, aux = apply_network(params, batch["image"], choice, impl=impl, return_aux=True)
    loss_fn = functools.partial(losses.dice_ce, num_classes=num_classes, ce_weight=ce_weight)
    return uresnet.deep_supervision_loss(loss_fn, logits, aux, batch["label"])


# --- Analytic cost ---


_OP_TAPS = {"conv_3x3x3": 27, "conv_3x3x1": 9, "p3d_3x3x1_1x1x3": 9 + 3, "conv_3x3x3_d2": 27}


def network_macs(
    choice: Choice, *, in_channels: int, num_classes: int, width: int, patch_size
) -> float:
    """Multiply-adds of the convolutions (1x1x1 included) of the derived network, one patch.

    Convention of uresnet.uresnet_macs / cost.py: norms, activations, upsampling and sums
    not counted; each conv on the grid it runs on. Inference cost: the aux heads (training
    only) are left out, the main head is in.
    """
    values = _static_choice(choice)
    if values is None:
        values = _static_choice(np.asarray(choice))
    get = lambda name: DECISIONS[_POSITION[name]][1][values[_POSITION[name]]]  # noqa: E731
    c = level_widths(width)
    voxels = [float(np.prod(patch_size)) / 8**level for level in range(NUM_LEVELS)]
    total = 27 * in_channels * c[0] * voxels[0]  # stem
    for stage, level in STAGES:
        if stage.startswith("dec"):
            total += c[level + 1] * c[level] * voxels[level + 1]  # up, on the coarse grid
            if get(f"{stage}/skip") == "add":
                total += c[level] ** 2 * voxels[level]
        elif level:
            total += 27 * c[level - 1] * c[level] * voxels[level]  # stride-2 conv
        taps = _OP_TAPS[get(f"{stage}/op")]
        total += get(f"{stage}/depth") * taps * c[level] ** 2 * voxels[level]
    return total + c[0] * num_classes * voxels[0]  # main head
