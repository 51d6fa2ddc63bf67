"""The SCNAS paper's hand-designed baseline: a 3D residual U-Net with attention gates and
multiple segmentation maps ("3D U-ResNet"), as pure functions.

Arrays are channels-last, float32: image (b, x, y, z, in_channels) -> logits
(b, x, y, z, num_classes); x, y, z divisible by 8 (three downsamplings, four levels).
Conv, norm and activation are the primitives of jaxnas/ops.py, so `impl` ("fast" CPU
forms, "xla" cuDNN forms) selects the code exactly as for the supernet, never the params.

What the paper says (SCNAS, MIDL 2019, section 4): a 3D U-ResNet (residual blocks in a 3D
U-Net, Milletari 2016) with multiple segmentation maps (Kayalibay et al. 2017) and
attention gates (Oktay et al. 2018), 32 output channels in the first block, channels
doubled / halved by each of the three down- / upsamplings; 7.6M params and 881 "GFLOPs"
on the brain tumour task (4 modalities, 4 classes, 128^3 patches). Everything else below
is our choice (one residual block per level on both sides, concatenated skips, where the
gate and the 1x1x1 convs sit); with it the parameter count lands near the paper's 7.6M.

Levels l = 0..3 (resolution / 2**l) have c_l = width * 2**l channels (32, 64, 128, 256).
A residual block is out = shortcut(x) + IN(conv3(lrelu(IN(conv3(lrelu(x)))))), where
shortcut is the identity when the channels match and a 1x1x1 conv (no norm) otherwise.
- Encoder: stem 3x3x3 Conv-IN (ops.apply_stem) -> block (c_0); per level l = 1..3 a
  LeakyReLU-Conv3 stride 2-IN (c_{l-1} -> c_l) -> block (c_l). One block per level.
- Decoder, levels 2, 1, 0, starting from the bottleneck d_3 = encoder output at level 3:
  u = 1x1x1 conv (c_{l+1} -> c_l) of upsample2(d_{l+1}), computed as upsample2 of the
  1x1x1 conv (equal: both are linear, on different axes; 8x fewer multiply-adds);
  skip e_l gated by an attention gate whose gating signal is d_{l+1};
  d_l = block(concat[gated e_l, u]) (2 c_l -> c_l, projection shortcut).
- Attention gate (Oktay's additive "grid" gate, computed on the gating grid):
  q = ReLU(W_x e + W_g g + b), alpha = sigmoid(w_psi q + b_psi), one channel, upsampled
  trilinearly (ops.upsample2) to e's grid; output alpha * e. W_x is Oktay's 2x2x2
  stride-2 conv (a 1x1x1 conv on the 8 voxels of each 2x2x2 block), W_g and w_psi are
  1x1x1 convs; inner width c_l / 2 (Oktay's code). Oktay's output 1x1x1 conv + BN on the
  gated skip is left out (the concat feeds a conv anyway).
- Multiple segmentation maps (Kayalibay): at each decoder level s_l = 1x1x1 conv with bias
  of LeakyReLU(d_l) to num_classes; m_2 = s_2, m_l = s_l + upsample2(m_{l+1}); the logits
  are m_0, so they combine all three levels. With return_aux the maps m_2 (1/4
  resolution) and m_1 (1/2) come back too, for deep supervision (`deep_supervision_loss`).

Size at width 32, 4 channels in, 4 classes: 7,805,103 parameters (paper: 7.6M); at
width 16: 1,953,375. Multiply-adds of the convolutions per 128^3 patch (`uresnet_macs`,
the convention of jaxnas/cost.py): 565.6e9 at width 32 (paper: 881 "GFLOPs" for its
U-ResNet, whose exact blocks and FLOP convention it does not give), 105.4e9 at
128 x 128 x 24 (the prostate patch; 2 channels in, 3 classes).
"""

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from jaxnas.nn import ops

PyTree = Any
Volume = Float[Array, "b x y z c"]
Logits = Float[Array, "b x y z k"]
Labels = Int[Array, "b x y z"]

NUM_LEVELS = 4  # full resolution and three downsamplings by 2
DEFAULT_WIDTH = 32  # the paper's channels in the first block
DECODER_LEVELS = tuple(range(NUM_LEVELS - 2, -1, -1))  # (2, 1, 0): decoder order


def level_widths(width: int) -> tuple[int, ...]:
    """Channels c_l = width * 2**l of level l = 0..3."""
    if width < 2:
        raise ValueError(f"width must be >= 2 (the gates use width / 2), got {width}")
    return tuple(width * 2**level for level in range(NUM_LEVELS))


def _gate_width(c: int) -> int:
    return max(c // 2, 1)


# --- Building blocks ---


def _conv_norm_spec(c_in: int, c_out: int) -> dict:
    return {"w": ops.he_spec((3, 3, 3, c_in, c_out)), **ops.norm_spec(c_out)}


def _relu_conv3_norm(params: dict, x: Volume, *, stride: int = 1, impl: str) -> Volume:
    """LeakyReLU-Conv3x3x3-InstanceNorm (the paper's conv unit)."""
    return ops.instance_norm(params, ops.conv3(ops.leaky_relu(x), params["w"], stride=stride,
                                                impl=impl))


def _lecun(c_in: int, c_out: int) -> ops.ParamSpec:
    """1x1x1 conv weight on an input that is not activated (normalised maps)."""
    return ops.ParamSpec((c_in, c_out), "lecun", c_in)


def residual_block_spec(c_in: int, c_out: int) -> dict:
    specs = {"conv1": _conv_norm_spec(c_in, c_out), "conv2": _conv_norm_spec(c_out, c_out)}
    if c_in != c_out:
        specs["proj"] = {"w": _lecun(c_in, c_out)}
    return specs


def apply_residual_block(params: dict, x: Volume, *, impl: str = "fast") -> Volume:
    """shortcut(x) + (LeakyReLU-Conv3-IN)^2 (x); shortcut = 1x1x1 conv when channels change."""
    h = _relu_conv3_norm(params["conv2"], _relu_conv3_norm(params["conv1"], x, impl=impl),
                         impl=impl)
    shortcut = ops.pointwise(x, params["proj"]["w"]) if "proj" in params else x
    return shortcut + h


def attention_gate_spec(c_skip: int, c_gating: int) -> dict:
    c_int = _gate_width(c_skip)
    return {
        "w_x": _lecun(8 * c_skip, c_int),  # 2x2x2 stride-2 conv, (dx, dy, dz, c) flattened
        "w_g": _lecun(c_gating, c_int),
        "b": ops.ParamSpec((c_int,), "zeros"),
        "w_psi": ops.he_spec((c_int, 1)),  # after the ReLU
        "b_psi": ops.ParamSpec((1,), "zeros"),
    }


def _space_to_depth(x: Volume) -> Volume:
    """(b, 2X, 2Y, 2Z, c) -> (b, X, Y, Z, 8c): each 2x2x2 block's voxels as channels."""
    b, nx, ny, nz, c = x.shape
    x = x.reshape(b, nx // 2, 2, ny // 2, 2, nz // 2, 2, c)
    return x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, nx // 2, ny // 2, nz // 2, 8 * c)


def apply_attention_gate(
    params: dict, skip: Volume, gating: Volume, *, impl: str = "fast"
) -> tuple[Volume, Float[Array, "b x y z 1"]]:
    """Additive attention gate (Oktay et al. 2018): returns (alpha * skip, alpha).

    Args:
      skip: encoder feature e (b, x, y, z, c), x, y, z even.
      gating: the coarser decoder feature g (b, x/2, y/2, z/2, c_g).

    alpha (b, x, y, z, 1) in [0, 1]: a sigmoid on the gating grid, upsampled trilinearly
    (convex weights keep it in [0, 1]).
    """
    if gating.shape[1:4] != tuple(n // 2 for n in skip.shape[1:4]) or any(
        n % 2 for n in skip.shape[1:4]
    ):
        raise ValueError(f"gating {gating.shape} must be on the half grid of skip {skip.shape}")
    theta = ops.pointwise(_space_to_depth(skip), params["w_x"])
    phi = ops.pointwise(gating, params["w_g"])
    q = jax.nn.relu(theta + phi + params["b"])
    psi = jax.nn.sigmoid(ops.pointwise(q, params["w_psi"]) + params["b_psi"])
    alpha = ops.upsample2(psi, impl=impl)
    return skip * alpha, alpha


def _head_spec(c: int, num_classes: int) -> dict:
    return {"w": ops.ParamSpec((c, num_classes), "lecun", c),
            "b": ops.ParamSpec((num_classes,), "zeros")}


# --- The network ---


def uresnet_spec(*, in_channels: int, num_classes: int, width: int = DEFAULT_WIDTH) -> dict:
    """Param specs of the U-ResNet (see `init_uresnet`)."""
    c = level_widths(width)
    return {
        "stem": ops.stem_spec(in_channels, c[0]),
        # encoder[l]: level l; "down" (stride-2 conv into level l) for l >= 1.
        "encoder": [
            {**({"down": _conv_norm_spec(c[l - 1], c[l])} if l else {}),
             "block": residual_block_spec(c[l], c[l])}
            for l in range(NUM_LEVELS)
        ],
        # decoder[i]: level DECODER_LEVELS[i] (2, 1, 0).
        "decoder": [
            {
                "up": {"w": _lecun(c[l + 1], c[l])},
                "gate": attention_gate_spec(c[l], c[l + 1]),
                "block": residual_block_spec(2 * c[l], c[l]),
                "head": _head_spec(c[l], num_classes),
            }
            for l in DECODER_LEVELS
        ],
    }


def init_uresnet(
    key: jax.Array, *, in_channels: int, num_classes: int, width: int = DEFAULT_WIDTH
) -> dict:
    """U-ResNet params: {"stem", "encoder": [4 levels], "decoder": [levels 2, 1, 0]}.

    Args:
      key: PRNG key (one draw, ops.init_params).
      in_channels: image channels (modalities).
      num_classes: logits channels (background included).
      width: channels of level 0 (paper: 32); level l has width * 2**l.
    """
    return ops.init_params(
        key, uresnet_spec(in_channels=in_channels, num_classes=num_classes, width=width)
    )


def _check_input(image: Volume) -> None:
    factor = 2 ** (NUM_LEVELS - 1)
    if image.ndim != 5 or any(n % factor for n in image.shape[1:4]):
        raise ValueError(
            f"image must be (b, x, y, z, c) with x, y, z divisible by {factor}, got {image.shape}"
        )


def apply_uresnet(
    params: dict, image: Volume, *, impl: str = "fast", return_aux: bool = False
) -> Logits | tuple[Logits, list[Logits]]:
    """The U-ResNet forward pass.

    Args:
      params: from `init_uresnet`.
      image: (b, x, y, z, in_channels), x, y, z divisible by 8.
      impl: "fast" (XLA:CPU) or "xla" (GPUs); see ops.py.
      return_aux: also return the coarser segmentation maps.

    Returns:
      logits (b, x, y, z, num_classes); with return_aux, (logits, [m_2 at 1/4 resolution,
      m_1 at 1/2 resolution]): the summed maps of the coarser decoder levels, coarse first.
    """
    _check_input(image)
    x = ops.apply_stem(params["stem"], image, impl=impl)
    skips = []
    for level, enc in enumerate(params["encoder"]):
        if level:
            x = _relu_conv3_norm(enc["down"], x, stride=2, impl=impl)
        x = apply_residual_block(enc["block"], x, impl=impl)
        skips.append(x)

    d, maps, aux = skips[-1], None, []
    for level, dec in zip(DECODER_LEVELS, params["decoder"]):
        # 1x1x1 conv then upsampling == upsampling then conv (both linear), on 1/8 the voxels.
        u = ops.upsample2(ops.pointwise(d, dec["up"]["w"]), impl=impl)
        gated, _ = apply_attention_gate(dec["gate"], skips[level], d, impl=impl)
        d = apply_residual_block(dec["block"], jnp.concatenate([gated, u], axis=-1), impl=impl)
        s = ops.pointwise(ops.leaky_relu(d), dec["head"]["w"]) + dec["head"]["b"]
        maps = s if maps is None else s + ops.upsample2(maps, impl=impl)
        if level:
            aux.append(maps)
    return (maps, aux) if return_aux else maps


# --- Deep supervision ---


def deep_supervision_loss(
    loss_fn: Callable[[Logits, Labels], Float[Array, ""]],
    logits: Logits,
    aux: Sequence[Logits],
    labels: Labels,
    weights: Sequence[float] | None = None,
) -> Float[Array, ""]:
    """sum_i w_i loss_fn(map_i, labels_i) over maps (logits, *aux), weights summing to 1.

    labels_i = labels[:, ::f, ::f, ::f] (nearest, strided) where f = 2**level is the
    map's downsampling factor. Default weights 2**-level (nnU-Net: 1, 1/2, 1/4 for full,
    half and quarter resolution), normalised; given weights (one per map, in the order
    logits, *aux) are normalised too. loss_fn(logits, labels) as in jaxnas/losses.py
    (bind its keywords with functools.partial).
    """
    maps = [logits, *aux]
    factors = []
    for m in maps:
        f = labels.shape[1] // m.shape[1]
        grid = tuple(-(-n // f) for n in labels.shape[1:4]) if f >= 1 else None
        if f < 1 or f & (f - 1) or tuple(m.shape[1:4]) != grid:
            raise ValueError(f"map {m.shape} is not labels {labels.shape} downsampled by 2**k")
        factors.append(f)
    if weights is None:
        weights = [1.0 / f for f in factors]
    if len(weights) != len(maps):
        raise ValueError(f"{len(weights)} weights for {len(maps)} maps")
    total_weight = float(sum(weights))
    loss = 0.0
    for m, f, w in zip(maps, factors, weights):
        if w:
            loss = loss + (w / total_weight) * loss_fn(m, labels[:, ::f, ::f, ::f])
    return jnp.asarray(loss, jnp.float32)


# --- Analytic cost ---


def uresnet_macs(*, in_channels: int, num_classes: int, width: int, patch_size) -> float:
    """Multiply-adds of the convolutions (1x1x1 included) of one forward pass on one patch.

    Same convention as jaxnas/cost.py: norms, activations, upsampling and the sums of the
    segmentation maps are not counted. Each conv is counted on the grid it runs on.
    """
    c = level_widths(width)
    voxels = [float(np.prod(patch_size)) / 8**level for level in range(NUM_LEVELS)]
    total = 27 * in_channels * c[0] * voxels[0]  # stem
    for level in range(NUM_LEVELS):
        if level:
            total += 27 * c[level - 1] * c[level] * voxels[level]  # stride-2 conv
        total += 2 * 27 * c[level] ** 2 * voxels[level]  # residual block
    for level in DECODER_LEVELS:
        coarse, fine, c_int = voxels[level + 1], voxels[level], _gate_width(c[level])
        total += c[level + 1] * c[level] * coarse  # up conv, on the coarse grid
        total += (8 * c[level] + c[level + 1] + 1) * c_int * coarse  # gate: W_x, W_g, w_psi
        total += 27 * (2 * c[level]) * c[level] * fine + 27 * c[level] ** 2 * fine  # block
        total += 2 * c[level] * c[level] * fine  # projection shortcut
        total += c[level] * num_classes * fine  # segmentation head
    return total


def uresnet_cost(*, in_channels: int, num_classes: int, width: int = DEFAULT_WIDTH,
                 patch_size) -> dict:
    """{"params", "gflops": 1e9 multiply-adds, "patch_size"}, like cost.derived_cost."""
    spec = uresnet_spec(in_channels=in_channels, num_classes=num_classes, width=width)
    return {
        "params": ops.num_spec_params(spec),
        "gflops": uresnet_macs(in_channels=in_channels, num_classes=num_classes, width=width,
                               patch_size=patch_size) / 1e9,
        "patch_size": list(patch_size),
    }
