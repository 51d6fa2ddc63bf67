"""MONAI's `UNet` (the residual-unit U-Net of Kerfoot et al. 2018) as pure functions.

The hand-designed network medical-imaging users train first, ported so that jaxnas can
train, evaluate and time it like its own networks (`--architecture=unet`), and so that
a comparison with MONAI runs the same architecture on both sides.

Arrays are channels-last, float32: image (b, x, y, z, in_channels) -> logits
(b, x, y, z, num_classes); x, y, z divisible by 16 (four stride-2 levels).

The structure of `monai.networks.nets.UNet(spatial_dims=3, channels=(c, 2c, 4c, 8c, 16c),
strides=(2, 2, 2, 2), num_res_units=2, norm=INSTANCE)`, MONAI's defaults otherwise
(kernel 3, PReLU with one slope per layer, instance norm without affine params, biased
convs, no dropout):
- unit(x) = PReLU(IN(conv3(x) + b)), MONAI's "NDA" order.
- Residual unit (in -> out, stride s, n subunits): unit^n(x) + shortcut(x), the first
  unit strided; shortcut = identity when s = 1 and in = out, a 1x1x1 biased conv when only
  the channels change, a 3x3x3 stride-s biased conv when s = 2. With `last_conv_only` the
  last unit is a plain conv3 + b.
- Encoder: down_l = residual unit (c_{l-1} -> c_l, stride 2, 2 subunits), l = 0..3, so
  level l runs at 1 / 2**(l+1) of the input grid; the bottom is a residual unit
  (c_3 -> c_4, stride 1, 2 subunits) on the same grid as down_3.
- Decoder, l = 3..0: u = concat[down_l output, the level below's output];
  up_l = PReLU(IN(convT(u) + b)) (3x3x3 transposed conv, stride 2, PyTorch's padding 1,
  output padding 1: the grid doubles) then a residual unit (1 subunit, identity shortcut);
  up_l maps to c_{l-1} channels, and the top one (l = 0) to num_classes, where its
  residual unit is `last_conv_only`: logits = y + conv3(y) + b with y the normalised,
  activated transposed-conv output (MONAI's design, kept as is).

At width 16, 1 channel in, 3 classes: 4,807,482 parameters, MONAI 1.x's count for the
same call; experiments/check_unet_port.py runs both on the same weights and compares the
logits. The transposed conv's "fast" form (CPU) is one matmul: the 8 copies of the coarse
input shifted by 0 or 1 voxel per axis, against an (8 c_in, 8 c_out) matrix that gives
each of the 8 output parities (even or odd per axis) its 1 to 8 of the 27 taps, then
depth-to-space. A conv of the zero-inserted input would read 8x the voxels.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float

from jaxnas.nn import ops

Volume = Float[Array, "b x y z c"]

NUM_LEVELS = 5  # channels (c, 2c, 4c, 8c, 16c): four stride-2 levels and a bottom
DIVISOR = 2 ** (NUM_LEVELS - 1)
DEFAULT_WIDTH = 16  # MONAI recipe: channels 16-256
RES_UNITS = 2  # num_res_units
PRELU_INIT = 0.25  # torch.nn.PReLU's initial slope; params store the offset from it


def level_widths(width: int) -> tuple[int, ...]:
    """MONAI's `channels`: width * 2**l for l = 0..4."""
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    return tuple(width * 2**level for level in range(NUM_LEVELS))


# --- Units ---


def _conv_spec(c_in: int, c_out: int, k: int = 3) -> dict:
    return {"w": ops.he_spec((k, k, k, c_in, c_out) if k == 3 else (c_in, c_out)),
            "b": ops.ParamSpec((c_out,), "zeros")}


def _unit_spec(c_in: int, c_out: int) -> dict:
    """conv3 + bias, then IN (no params) and PReLU (one slope)."""
    return {**_conv_spec(c_in, c_out), "prelu": ops.ParamSpec((1,), "zeros")}


def _prelu(x: Volume, offset) -> Volume:
    slope = PRELU_INIT + offset
    return jnp.where(x >= 0, x, slope * x)


def _norm_act(params: dict, y: Volume) -> Volume:
    c = y.shape[-1]
    y = ops.instance_norm({"scale": jnp.ones((c,), y.dtype), "bias": jnp.zeros((c,), y.dtype)},
                          y)
    return _prelu(y, params["prelu"])


def _conv(params: dict, x: Volume, *, stride: int = 1, impl: str) -> Volume:
    w = params["w"]
    y = ops.pointwise(x, w) if w.ndim == 2 else ops.conv3(x, w, stride=stride, impl=impl)
    return y + params["b"]


def residual_unit_spec(c_in: int, c_out: int, *, stride: int, subunits: int,
                       last_conv_only: bool = False) -> dict:
    units = []
    for i in range(subunits):
        conv_only = last_conv_only and i == subunits - 1
        units.append(_conv_spec(c_out if i else c_in, c_out) if conv_only
                     else _unit_spec(c_out if i else c_in, c_out))
    spec = {"units": units}
    if stride != 1 or c_in != c_out:
        spec["shortcut"] = _conv_spec(c_in, c_out, 3 if stride != 1 else 1)
    return spec


def apply_residual_unit(params: dict, x: Volume, *, stride: int, impl: str) -> Volume:
    shortcut = (_conv(params["shortcut"], x, stride=stride, impl=impl)
                if "shortcut" in params else x)
    h = x
    for i, unit in enumerate(params["units"]):
        h = _conv(unit, h, stride=stride if i == 0 else 1, impl=impl)
        if "prelu" in unit:  # not the last_conv_only unit
            h = _norm_act(unit, h)
    return h + shortcut


# --- Transposed conv: 3x3x3, stride 2, padding 1, output padding 1 (PyTorch's) ---

# Along one axis output 2m + r reads input m + s through tap k = _TAP[r][s] (-1: none):
# out[o] = sum_i x[i] w[o - 2 i + 1], so r = 0 takes k = 1 from i = m; r = 1 takes
# k = 2 from i = m and k = 0 from i = m + 1.
_TAP = ((1, -1), (2, 0))


def _parity_taps() -> tuple[np.ndarray, np.ndarray]:
    """(tap index into the 27 taps, used mask) per (shift s, parity r), both (8, 8)."""
    index, used = np.zeros((8, 8), np.int32), np.zeros((8, 8), bool)
    for s in range(8):
        sx, sy, sz = (s >> 2) & 1, (s >> 1) & 1, s & 1
        for r in range(8):
            rx, ry, rz = (r >> 2) & 1, (r >> 1) & 1, r & 1
            k = (_TAP[rx][sx], _TAP[ry][sy], _TAP[rz][sz])
            if min(k) >= 0:
                index[s, r], used[s, r] = 9 * k[0] + 3 * k[1] + k[2], True
    return index, used


_PARITY_INDEX, _PARITY_USED = _parity_taps()


@jax.named_scope("conv_transpose")
def conv_transpose2(x: Volume, w: Float[Array, "3 3 3 i o"], *, impl: str = "fast") -> Volume:
    """PyTorch's ConvTranspose3d(kernel 3, stride 2, padding 1, output_padding 1), no bias:
    (b, X, Y, Z, i) -> (b, 2X, 2Y, 2Z, o); w[kx, ky, kz, i, o] is torch's weight[i, o, k..]."""
    b, nx, ny, nz, c_in = x.shape
    c_out = w.shape[-1]
    if impl == "xla":  # a conv of the dilated input with the flipped kernel
        return lax.conv_general_dilated(
            x, w[::-1, ::-1, ::-1], (1, 1, 1), [(1, 2)] * 3, lhs_dilation=(2, 2, 2),
            dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    ops._check_impl(impl)
    xp = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 1), (0, 0)))
    shifts = [((s >> 2) & 1, (s >> 1) & 1, s & 1) for s in range(8)]
    shifted = jnp.concatenate([xp[:, sx:sx + nx, sy:sy + ny, sz:sz + nz]
                               for sx, sy, sz in shifts], axis=-1)  # (b, X, Y, Z, 8 i)
    w27 = w.reshape(27, c_in, c_out)
    w8 = jnp.where(_PARITY_USED[:, :, None, None], w27[_PARITY_INDEX], 0.0)  # (s, r, i, o)
    w8 = w8.transpose(0, 2, 1, 3).reshape(8 * c_in, 8 * c_out)
    y = jnp.dot(shifted, w8, preferred_element_type=x.dtype)  # (b, X, Y, Z, 8 o)
    y = y.reshape(b, nx, ny, nz, 2, 2, 2, c_out).transpose(0, 1, 4, 2, 5, 3, 6, 7)
    return y.reshape(b, 2 * nx, 2 * ny, 2 * nz, c_out)


# --- The network ---


def unet_spec(*, in_channels: int, num_classes: int, width: int = DEFAULT_WIDTH) -> dict:
    """Param specs of the UNet (see `init_unet`)."""
    c = level_widths(width)
    down = [residual_unit_spec(in_channels if l == 0 else c[l - 1], c[l], stride=2,
                               subunits=RES_UNITS) for l in range(NUM_LEVELS - 1)]
    bottom = residual_unit_spec(c[-2], c[-1], stride=1, subunits=RES_UNITS)
    up = []
    for l in range(NUM_LEVELS - 1):  # up[l] undoes down[l]
        c_in = c[l] + (c[l + 1] if l == NUM_LEVELS - 2 else c[l])
        c_out = num_classes if l == 0 else c[l - 1]
        up.append({"transpose": _unit_spec(c_in, c_out),
                   "unit": residual_unit_spec(c_out, c_out, stride=1, subunits=1,
                                              last_conv_only=l == 0)})
    return {"down": down, "bottom": bottom, "up": up}


def init_unet(key: jax.Array, *, in_channels: int, num_classes: int,
              width: int = DEFAULT_WIDTH) -> dict:
    """UNet params: {"down": [4 residual units], "bottom", "up": [4, top first]}.

    Args:
      key: PRNG key (one draw, ops.init_params).
      in_channels: image channels (modalities).
      num_classes: logits channels (background included).
      width: channels of the first level (MONAI recipe: 16); level l has width * 2**l.
    """
    return ops.init_params(key, unet_spec(in_channels=in_channels, num_classes=num_classes,
                                          width=width))


def apply_unet(params: dict, image: Volume, *, impl: str = "fast") -> Volume:
    """The UNet forward pass: image (b, x, y, z, c), x, y, z divisible by 16 -> logits."""
    if image.ndim != 5 or any(n % DIVISOR for n in image.shape[1:4]):
        raise ValueError(f"image must be (b, x, y, z, c) with x, y, z divisible by {DIVISOR}, "
                         f"got {image.shape}")
    skips, x = [], image
    for unit in params["down"]:
        x = apply_residual_unit(unit, x, stride=2, impl=impl)
        skips.append(x)
    x = apply_residual_unit(params["bottom"], x, stride=1, impl=impl)
    for level in range(NUM_LEVELS - 2, -1, -1):
        up = params["up"][level]
        u = jnp.concatenate([skips[level], x], axis=-1)
        y = conv_transpose2(u, up["transpose"]["w"], impl=impl) + up["transpose"]["b"]
        x = apply_residual_unit(up["unit"], _norm_act(up["transpose"], y), stride=1, impl=impl)
    return x


# --- Analytic cost ---


def unet_macs(*, in_channels: int, num_classes: int, width: int, patch_size) -> float:
    """Multiply-adds of the convolutions of one forward pass on one patch (cost.py's
    convention; a transposed conv counts its 27 taps per input voxel)."""
    c = level_widths(width)
    grid = [float(np.prod(patch_size)) / 8 ** (l + 1) for l in range(NUM_LEVELS - 1)]
    total = 0.0
    for l in range(NUM_LEVELS - 1):
        c_prev = in_channels if l == 0 else c[l - 1]
        total += (2 * 27 * c_prev * c[l] + 27 * c[l] ** 2) * grid[l]  # 2 units + shortcut
    total += (27 * c[-2] * c[-1] + 27 * c[-1] ** 2 + c[-2] * c[-1]) * grid[-1]  # bottom
    for l in range(NUM_LEVELS - 1):
        c_in = c[l] + (c[l + 1] if l == NUM_LEVELS - 2 else c[l])
        c_out = num_classes if l == 0 else c[l - 1]
        total += 27 * c_in * c_out * grid[l] + 27 * c_out**2 * grid[l] * 8
    return total


def unet_cost(*, in_channels: int, num_classes: int, width: int = DEFAULT_WIDTH,
              patch_size) -> dict:
    """{"params", "gflops": 1e9 multiply-adds, "patch_size"}, like cost.derived_cost."""
    spec = unet_spec(in_channels=in_channels, num_classes=num_classes, width=width)
    return {"params": ops.num_spec_params(spec),
            "gflops": unet_macs(in_channels=in_channels, num_classes=num_classes, width=width,
                                patch_size=patch_size) / 1e9,
            "patch_size": list(patch_size)}
