"""The 8 candidate ops of the SCNAS search space as pure functions, in two implementations.

Arrays are channels-last `(b, x, y, z, c)`, float32. Every op maps c channels to c
channels (cells map their inputs to width c first). With `stride=2` (reduction cells,
edges leaving s0/s1) every spatial axis of size n becomes ceil(n / 2): convs and pools pad
`dilation` (1 for pools) voxels on each side, PyTorch style, so window centres sit on the
even voxels 0, 2, 4, ... for odd and even n alike (TF 'SAME' would shift them for even n).

Ops (space.OP_NAMES): `conv_3x3x3` = LeakyReLU-Conv-InstanceNorm; `sep_conv_3x3x3_d{2,3,4}`
= LeakyReLU-depthwise 3x3x3 (dilated)-pointwise 1x1x1-InstanceNorm; 3x3x3 max and average
pools (no parameters); `identity` (stride 2: a factorized 1x1x1 stride-2 conv + IN, DARTS);
`zero` (zeros of the strided shape). Params are dicts of arrays, `{}` for parameter-free ops.

`impl` selects the code, never the parameters (both read the same pytree):
- "xla": `lax.conv_general_dilated` / `lax.reduce_window` / `jax.image.resize`, the forms
  cuDNN runs well (GPUs).
- "fast": the XLA:CPU forms: dense 3x3x3 convs as one 2D `conv_general_dilated` over
  x-slabs (Eigen's 2D kernels; its 3D ones are 2-5x slower), depthwise ones as a
  `fori_loop` over 27 shifted taps with a hand-written VJP (dilation is free; the grouped
  and dilated `conv_general_dilated` run 10-100x slower here, see
  experiments/bench_ops.py); max pool as a separable 3+3+3 shifted max; average pool as a
  separable shifted sum. Upsampling is `jax.image.resize` in both (faster on CPUs too).
Average pools divide by the number of voxels inside the volume (count_include_pad=False,
PyTorch's option; Keras' 'same' average pool) in both impls; the counts are numpy
constants per axis (a `reduce_window` over ones costs seconds of constant folding).

Edges hold the params of all 8 ops; `apply_edge_op` runs one of them with `lax.switch` on a
traced index, each branch in `jax.checkpoint` so the backward pass keeps no residuals of
the 7 branches not taken (DESIGN.md section 3). With "fast", the three separable convs
share one branch whose dilation is traced (less code to compile).

The ops run under `jax.named_scope`s (conv_taps, instance_norm, ...): XLA keeps them in
every fused op's name, and experiments/profile_step.py groups a profile by them.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float, Int

from jaxnas.spaces.scnas import space

PyTree = Any
Volume = Float[Array, "b x y z c"]

IMPLS = ("fast", "xla")
LEAKY_SLOPE = 0.01  # PyTorch / nnU-Net LeakyReLU default.
NORM_EPS = 1e-5  # PyTorch InstanceNorm3d default.
SEP_DILATION = {"sep_conv_3x3x3_d2": 2, "sep_conv_3x3x3_d3": 3, "sep_conv_3x3x3_d4": 4}
_DIMS = ("NDHWC", "DHWIO", "NDHWC")


# --- Parameter initialisation: static specs, then one draw per init call ---
#
# Init functions come in pairs: `*_spec(...)` returns a pytree of ParamSpec (shapes and
# rules, no randomness) and `init_*(key, ...)` = init_params(key, spec). init_params draws
# ONE flat N(0, 1) vector from the key and cuts it into the leaves in tree order. Why:
# per-leaf draws cost one XLA compile per distinct shape (threefry on a 5-D shape ~1 s on
# this CPU, ~1300 leaves, 7-10 s for a network, 244 s when jitted); a 1-D draw compiles
# in ~0.1 s. Eager calls cut the vector on the host; traced calls (jit, eval_shape) cut
# it with jnp: the same values either way.


class ParamSpec(NamedTuple):
    """One parameter leaf: shape and rule. "he": N(0, 2 / fan_in) (convs after a
    LeakyReLU), "lecun": N(0, 1 / fan_in), "ones", "zeros"."""

    shape: tuple[int, ...]
    rule: str
    fan_in: int = 1


_GAIN = {"he": 2.0, "lecun": 1.0}


def _is_spec(node) -> bool:
    return isinstance(node, ParamSpec)


def he_spec(shape: tuple[int, ...]) -> ParamSpec:
    """He-normal weight whose last axis is the output: fan_in = prod(shape[:-1])."""
    return ParamSpec(tuple(shape), "he", int(np.prod(shape[:-1])))


def stack_specs(trees: list) -> PyTree:
    """Specs of len(trees) equal-structured trees stacked on a new leading axis."""
    return jax.tree.map(
        lambda spec, *_: spec._replace(shape=(len(trees), *spec.shape)),
        trees[0],
        *trees[1:],
        is_leaf=_is_spec,
    )


def num_spec_params(specs: PyTree) -> int:
    return int(sum(np.prod(s.shape) for s in jax.tree.leaves(specs, is_leaf=_is_spec)))


def init_params(key: jax.Array, specs: PyTree) -> PyTree:
    """Materialises a spec tree: float32 arrays, random leaves from one draw of `key`."""
    leaves, treedef = jax.tree.flatten(specs, is_leaf=_is_spec)
    sizes = [int(np.prod(s.shape)) if s.rule in _GAIN else 0 for s in leaves]
    flat = jax.random.normal(key, (sum(sizes),), jnp.float32)
    if not isinstance(flat, jax.core.Tracer):
        flat = np.asarray(flat)  # cut on the host: no compile per leaf shape
    arrays, offset = [], 0
    for spec, size in zip(leaves, sizes):
        if spec.rule in _GAIN:
            std = np.float32(np.sqrt(_GAIN[spec.rule] / spec.fan_in))
            value = flat[offset : offset + size].reshape(spec.shape) * std
            offset += size
        elif spec.rule in ("ones", "zeros"):
            value = (np.ones if spec.rule == "ones" else np.zeros)(spec.shape, np.float32)
        else:
            raise ValueError(f"unknown init rule {spec.rule!r}")
        arrays.append(jnp.asarray(value))
    return jax.tree.unflatten(treedef, arrays)


def _check_impl(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def strided_shape(shape: tuple[int, ...], stride: int) -> tuple[int, ...]:
    """(b, x, y, z, c) -> (b, ceil(x / s), ceil(y / s), ceil(z / s), c)."""
    return (shape[0], *(-(-n // stride) for n in shape[1:4]), shape[4])


@jax.named_scope("leaky_relu")
def leaky_relu(x: Volume) -> Volume:
    return jax.nn.leaky_relu(x, LEAKY_SLOPE)


# --- Normalisation and 1x1x1 convs (shared by both impls: a matmul is a matmul) ---


def norm_spec(c: int) -> dict:
    return {"scale": ParamSpec((c,), "ones"), "bias": ParamSpec((c,), "zeros")}


@jax.named_scope("instance_norm")
def instance_norm(params: dict, x: Volume) -> Volume:
    """Affine InstanceNorm: per example and channel over x, y, z; reads params scale, bias."""
    return _instance_norm(x, params["scale"], params["bias"])


_SPACE = (1, 2, 3)


def _instance_norm_fwd(x, scale, bias):
    mean = jnp.mean(x, axis=_SPACE, keepdims=True)
    xc = x - mean
    rstd = lax.rsqrt(jnp.mean(jnp.square(xc), axis=_SPACE, keepdims=True) + NORM_EPS)
    xhat = xc * rstd
    return xhat * scale + bias, (xhat, rstd, scale)


def _instance_norm_bwd(residuals, dy):
    # The closed form (two reductions over the volume) instead of autodiff's chain through
    # mean, centring, variance and rsqrt: the profile of a derived-network step had the
    # autodiff backward as its largest op kind (17%, experiments/profile_step.py).
    with jax.named_scope("instance_norm_bwd"):
        xhat, rstd, scale = residuals
        g = dy * scale
        dx = rstd * (g - jnp.mean(g, axis=_SPACE, keepdims=True)
                     - xhat * jnp.mean(g * xhat, axis=_SPACE, keepdims=True))
        return dx, jnp.sum(dy * xhat, axis=(0, *_SPACE)), jnp.sum(dy, axis=(0, *_SPACE))


@jax.custom_vjp
def _instance_norm(x, scale, bias):
    return _instance_norm_fwd(x, scale, bias)[0]


_instance_norm.defvjp(_instance_norm_fwd, _instance_norm_bwd)


@jax.named_scope("pointwise_conv")
def pointwise(x: Volume, w: Float[Array, "i o"]) -> Volume:
    """1x1x1 conv without bias."""
    return jnp.dot(x, w, preferred_element_type=x.dtype)


def relu_conv_norm_spec(c_in: int, c_out: int) -> dict:
    """Params of the 1x1x1 LeakyReLU-Conv-IN preprocessing of a cell input (DARTS)."""
    return {"w": he_spec((c_in, c_out)), **norm_spec(c_out)}


def apply_relu_conv_norm(params: dict, x: Volume) -> Volume:
    """1x1x1 LeakyReLU-Conv-InstanceNorm: (b, x, y, z, c_in) -> (b, x, y, z, c_out)."""
    return instance_norm(params, pointwise(leaky_relu(x), params["w"]))


def factorized_reduce_spec(c_in: int, c_out: int) -> dict:
    """Params of `apply_factorized_reduce`; c_out = 1 keeps only the unshifted path."""
    half = c_out // 2
    specs = {"w_even": he_spec((c_in, c_out - half)), **norm_spec(c_out)}
    if half:
        specs["w_odd"] = he_spec((c_in, half))
    return specs


@jax.named_scope("factorized_reduce")
def apply_factorized_reduce(params: dict, x: Volume) -> Volume:
    """DARTS FactorizedReduce in 3D: LeakyReLU, two 1x1x1 stride-2 convs, concat, IN.

    One conv sees the even voxels, the other the odd ones (shifted by one voxel on every
    axis), so together they see every voxel. (b, x, y, z, c_in) -> (b, ceil(x/2), ..., c_out).
    """
    x = leaky_relu(x)
    out = strided_shape(x.shape, 2)
    y = pointwise(x[:, ::2, ::2, ::2], params["w_even"])
    if "w_odd" in params:
        odd = x[:, 1::2, 1::2, 1::2]
        # An odd-sized axis has one odd voxel fewer than outputs: zero-pad its end.
        odd = jnp.pad(
            odd, [(0, 0)] + [(0, o - n) for o, n in zip(out[1:4], odd.shape[1:4])] + [(0, 0)]
        )
        y = jnp.concatenate([y, pointwise(odd, params["w_odd"])], axis=-1)
    return instance_norm(params, y)


# --- Depthwise 3x3x3 convs as 27 shifted products ("fast") ---
#
# A depthwise 3x3x3 conv is a loop over its 27 taps t: y += window_t(x_padded) * w[t]
# (per channel). A `fori_loop` (not 27 unrolled taps) compiles 3x faster, and measured
# faster too on XLA:CPU at 32^3 x 16 channels, fwd + bwd: 9 vs 27 ms. The VJP is written
# by hand so that the backward pass is a loop too and keeps no per-tap residuals: dw[t]
# is sum(window_t * dy), dx the same loop over dy with the flipped kernel (stride 1).


# Three taps per loop iteration (fori_loop's unroll): 27 -> 9 iterations, each one fusion.
# Derived 64^3 width-16 step 1.16 vs 1.48 s, search iteration 48^3 1.65 vs 1.81 s, compile
# +9 s / +2 s (experiments/profile_step.py, 2026-12-04, Intel). 9 taps: no faster, 2x compile.
TAP_UNROLL = 3


def _pad_same(x: Volume, p: int) -> Volume:
    return jnp.pad(x, ((0, 0), (p, p), (p, p), (p, p), (0, 0)))


def _tap_start(t, dilation, pad: int) -> tuple:
    """(x, y, z) start of tap t (row-major in 0..26) in a volume padded by `pad`."""
    base = pad - dilation  # padding is `dilation` whatever `pad` is
    return tuple(base + digit * dilation for digit in (t // 9, (t // 3) % 3, t % 3))


def _window(xp: Volume, start, out: tuple[int, ...], stride: int) -> Volume:
    """xp[:, start + stride * o] for o over the output grid `out` (3 sizes); start traced."""
    size = (xp.shape[0], *(stride * (n - 1) + 1 for n in out), xp.shape[4])
    window = lax.dynamic_slice(xp, (0, *start, 0), size)
    return window[:, ::stride, ::stride, ::stride] if stride > 1 else window


def _taps(x: Volume, w27, dilation, stride: int, pad: int) -> Volume:
    """sum over the 27 taps t of window_t(x padded by `pad`) * w27[t] (per channel)."""
    xp = _pad_same(x, pad)
    out = strided_shape(x.shape, stride)[1:4]

    def tap(t, y):
        return y + _window(xp, _tap_start(t, dilation, pad), out, stride) * w27[t]

    return lax.fori_loop(0, 27, tap, jnp.zeros((x.shape[0], *out, x.shape[-1]), x.dtype),
                         unroll=TAP_UNROLL)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _depthwise_taps(x: Volume, w27, dilation, stride: int, pad: int) -> Volume:
    """Depthwise 3x3x3 conv with padding = dilation; w27 (27, c).

    dilation may be a traced int32 scalar (<= pad): one program then serves the three
    dilated separable convs.
    """
    with jax.named_scope("depthwise_taps"):
        return _taps(x, w27, dilation, stride, pad)


def _depthwise_taps_fwd(x, w27, dilation, stride, pad):
    return _depthwise_taps(x, w27, dilation, stride, pad), (x, w27, dilation)


def _depthwise_taps_bwd(stride, pad, residuals, dy):
    with jax.named_scope("depthwise_taps_bwd"):
        x, w27, dilation = residuals
        xp = _pad_same(x, pad)
        out = dy.shape[1:4]

        def dw_tap(t, dw):
            window = _window(xp, _tap_start(t, dilation, pad), out, stride)
            return lax.dynamic_update_index_in_dim(
                dw, jnp.sum(window * dy, axis=(0, 1, 2, 3)).astype(dw.dtype), t, 0)

        dw = lax.fori_loop(0, 27, dw_tap, jnp.zeros_like(w27), unroll=TAP_UNROLL)
        if stride == 1:
            # The transpose of a same-padded correlation is the correlation with the
            # flipped kernel (tap t <-> 26 - t): the forward loop again, 4x cheaper than
            # scattering each tap back into a padded buffer (experiments/profile_step.py).
            return _taps(dy, w27[::-1], dilation, 1, pad), dw, None
        # Stride 2: tap t's dy * w[t] lands on every other voxel of the window it read.
        spread = [(0, 0, 0)] + [(0, 0, stride - 1)] * 3 + [(0, 0, 0)]

        def dx_tap(t, dxp):
            start = (0, *_tap_start(t, dilation, pad), 0)
            back = lax.pad(dy * w27[t], jnp.zeros((), dy.dtype), spread)
            region = lax.dynamic_slice(dxp, start, back.shape)
            return lax.dynamic_update_slice(dxp, region + back, start)

        dxp = lax.fori_loop(0, 27, dx_tap, jnp.zeros_like(xp))
        n = x.shape[1:4]
        return dxp[:, pad : pad + n[0], pad : pad + n[1], pad : pad + n[2]], dw, None


_depthwise_taps.defvjp(_depthwise_taps_fwd, _depthwise_taps_bwd)


# --- Dense 3x3x3 convs as one 2D conv over x-slabs ("fast") ---
#
# XLA:CPU runs 2D convolutions through Eigen's tuned spatial kernels, its 3D ones far
# slower. A 3x3x3 conv is a 3x3 conv over (y, z) of the input's three x-shifts stacked on
# the channels, with (batch, x) folded into the batch: one library call forward and two
# backward, against 27 small matmuls per direction in the tap loop it replaced. Measured
# fwd + bwd, batch 2 (experiments/bench_conv_forms.py): 2-7x faster at the cell shapes
# (32^3 x 4 channels 9.0 vs 28.8 ms, 16^3 x 8 1.2 vs 8.7), 4x for the stride-2 stem.
# Depthwise convs stay tap loops: as grouped 2D convs they ran 20-100x slower.


@jax.named_scope("conv_slabs")
def _slab_conv(x: Volume, w, *, stride: int, dilation: int) -> Volume:
    """Dense conv3 (padding = dilation, PyTorch-style stride) as one 2D conv."""
    b, n, _, _, c = x.shape
    out = -(-n // stride)
    span = stride * (out - 1) + 1
    xp = jnp.pad(x, ((0, 0), (dilation, dilation), (0, 0), (0, 0), (0, 0)))
    slab = jnp.concatenate([xp[:, t * dilation : t * dilation + span : stride]
                            for t in range(3)], axis=-1)  # (b, out, y, z, 3c): tap-major
    kernel = w.transpose(1, 2, 0, 3, 4).reshape(3, 3, 3 * c, w.shape[-1])  # (y, z, 3c, o)
    y = lax.conv_general_dilated(
        slab.reshape(b * out, *slab.shape[2:]), kernel, (stride, stride),
        [(dilation, dilation)] * 2, rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.reshape(b, out, *y.shape[1:])


def conv3(
    x: Volume,
    w: Float[Array, "3 3 3 i o"],
    *,
    stride: int = 1,
    dilation: int = 1,
    impl: str = "fast",
) -> Volume:
    """Dense 3x3x3 conv, no bias, padding = dilation: (b, x, y, z, i) -> strided (.., o)."""
    _check_impl(impl)
    if impl == "fast":
        return _slab_conv(x, w, stride=stride, dilation=dilation)
    return lax.conv_general_dilated(
        x,
        w,
        (stride,) * 3,
        [(dilation, dilation)] * 3,
        rhs_dilation=(dilation,) * 3,
        dimension_numbers=_DIMS,
    )


def depthwise_conv3(
    x: Volume,
    w: Float[Array, "3 3 3 1 c"],
    *,
    stride: int = 1,
    dilation: int = 1,
    impl: str = "fast",
) -> Volume:
    """Depthwise 3x3x3 conv, no bias, padding = dilation; w in the grouped-conv layout."""
    _check_impl(impl)
    if impl == "fast":
        return _depthwise_taps(x, w.reshape(27, w.shape[-1]), dilation, stride, dilation)
    return lax.conv_general_dilated(
        x,
        w,
        (stride,) * 3,
        [(dilation, dilation)] * 3,
        rhs_dilation=(dilation,) * 3,
        dimension_numbers=_DIMS,
        feature_group_count=x.shape[-1],
    )


# --- Pools ---


def _pool_axis(x: Volume, axis: int, stride: int, combine, fill: float) -> Volume:
    """Size-3 window along one axis, padding 1, as 3 strided slices combined pairwise."""
    out = -(-x.shape[axis] // stride)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (1, 1)
    xp = jnp.pad(x, pad, constant_values=fill)
    parts = [lax.slice_in_dim(xp, k, k + stride * (out - 1) + 1, stride, axis) for k in range(3)]
    return combine(combine(parts[0], parts[1]), parts[2])


def _pool_separable(x: Volume, stride: int, combine, fill: float) -> Volume:
    for axis in (1, 2, 3):
        x = _pool_axis(x, axis, stride, combine, fill)
    return x


def _reduce_window(x: Volume, stride: int, init: float, computation) -> Volume:
    return lax.reduce_window(
        x,
        np.array(init, x.dtype),
        computation,
        (1, 3, 3, 3, 1),
        (1, stride, stride, stride, 1),
        ((0, 0), (1, 1), (1, 1), (1, 1), (0, 0)),
    )


def _divide_by_window_counts(total: Volume, shape: tuple[int, ...], stride: int) -> Volume:
    """total / (voxels inside the volume per 3x3x3 window), one axis at a time.

    The counts are tiny per-axis numpy constants: a full (x, y, z) constant would be kept
    once per scan step as a residual of the checkpointed switch branch.
    """
    for axis, n in zip((1, 2, 3), shape[1:4]):
        centre = np.arange(-(-n // stride)) * stride
        counts = (np.minimum(centre + 2, n) - np.maximum(centre - 1, 0)).astype(np.float32)
        total = total / counts.reshape([-1 if a == axis else 1 for a in range(5)])
    return total


@jax.named_scope("max_pool")
def max_pool3(x: Volume, *, stride: int = 1, impl: str = "fast") -> Volume:
    """3x3x3 max pool, padding 1 (padded voxels never win).

    Both impls use the separable form (max is exact, so the values equal reduce_window's):
    the gradient of `lax.reduce_window` max (select_and_scatter) is wrong when the volume
    is sharded along x (XLA 0.10.2, sharding.py), and the separable form is elementwise.
    """
    _check_impl(impl)
    return _pool_separable(x, stride, jnp.maximum, -jnp.inf)


@jax.named_scope("avg_pool")
def avg_pool3(x: Volume, *, stride: int = 1, impl: str = "fast") -> Volume:
    """3x3x3 average pool over the voxels inside the volume (count_include_pad=False)."""
    _check_impl(impl)
    if impl == "fast":
        total = _pool_separable(x, stride, jnp.add, 0.0)
    else:
        total = _reduce_window(x, stride, 0.0, lax.add)
    return _divide_by_window_counts(total, x.shape, stride)


# --- Upsampling (expansion cells) ---


@jax.named_scope("upsample")
def upsample2(x: Volume, *, impl: str = "fast") -> Volume:
    """Trilinear upsampling by 2: (b, x, y, z, c) -> (b, 2x, 2y, 2z, c), both impls.

    jax.image.resize, also on CPUs: fwd + bwd 2-4x faster there than the 2-tap separable
    sums "fast" used before, same values within 5e-7 (jax 0.10.2; WORKSPACE.md).
    """
    _check_impl(impl)
    b, *spatial, c = x.shape
    return jax.image.resize(x, (b, *(2 * n for n in spatial), c), method="trilinear")


# --- The candidate ops ---


def op_spec(name: str, c: int, stride: int = 1) -> dict:
    """Param specs of op `name` (space.OP_NAMES) with c channels in and out; `{}` if none."""
    if name == "conv_3x3x3":
        return {"w": he_spec((3, 3, 3, c, c)), **norm_spec(c)}
    if name in SEP_DILATION:
        # Depthwise kernel in the grouped-conv layout (3, 3, 3, 1, c): fan_in 27.
        return {"dw": he_spec((3, 3, 3, 1, c)), "pw": he_spec((c, c)), **norm_spec(c)}
    if name == "identity" and stride == 2:
        return factorized_reduce_spec(c, c)
    if name in space.OP_NAMES:
        return {}
    raise ValueError(f"unknown op {name!r}; expected one of {space.OP_NAMES}")


def apply_op(name: str, params: dict, x: Volume, *, stride: int = 1, impl: str = "fast") -> Volume:
    """Runs op `name`: (b, x, y, z, c) -> (b, ceil(x / stride), ..., c)."""
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    if name == "conv_3x3x3":
        return instance_norm(params, conv3(leaky_relu(x), params["w"], stride=stride, impl=impl))
    if name in SEP_DILATION:
        h = depthwise_conv3(
            leaky_relu(x), params["dw"], stride=stride, dilation=SEP_DILATION[name], impl=impl
        )
        return instance_norm(params, pointwise(h, params["pw"]))
    if name == "max_pool_3x3x3":
        return max_pool3(x, stride=stride, impl=impl)
    if name == "avg_pool_3x3x3":
        return avg_pool3(x, stride=stride, impl=impl)
    if name == "identity":
        return x if stride == 1 else apply_factorized_reduce(params, x)
    if name == "zero":
        return jnp.zeros(strided_shape(x.shape, stride), x.dtype)
    raise ValueError(f"unknown op {name!r}; expected one of {space.OP_NAMES}")


# --- One edge: the params of all 8 ops, one of them run by lax.switch ---


def edge_spec(c: int, stride: int = 1) -> dict:
    """{op name: param specs} for every op of space.OP_NAMES on an edge of width c."""
    return {name: op_spec(name, c, stride) for name in space.OP_NAMES}


def init_edge(key: jax.Array, c: int, stride: int = 1) -> dict:
    """{op name: params} for every op of space.OP_NAMES on an edge of width c."""
    return init_params(key, edge_spec(c, stride))


def _named_op(name: str, stride: int, impl: str):
    def run(edge_params, x, index, weight):
        del index  # only the merged separable branch needs it
        return weight * apply_op(name, edge_params[name], x, stride=stride, impl=impl)

    return run


def _any_sep_conv(stride: int):
    """One "fast" branch for the three dilated separable convs: dilation is traced.

    Their params are stacked and indexed by the op index. Compiling one op instead of
    three cut a cell's compile time by 25-30% (measured, normal and reduction cells).
    """
    names = tuple(SEP_DILATION)
    first = space.OP_NAMES.index(names[0])

    def run(edge_params, x, index, weight):
        k = jnp.clip(index - first, 0, len(names) - 1)
        stacked = jax.tree.map(lambda *a: jnp.stack(a), *(edge_params[n] for n in names))
        params = jax.tree.map(lambda a: lax.dynamic_index_in_dim(a, k, keepdims=False), stacked)
        dilation = jnp.asarray([SEP_DILATION[n] for n in names], jnp.int32)[k]
        w27 = params["dw"].reshape(27, x.shape[-1])
        # Padding is always max dilation here, so one program fits every dilation.
        h = _depthwise_taps(leaky_relu(x), w27, dilation, stride, max(SEP_DILATION.values()))
        return weight * instance_norm(params, pointwise(h, params["pw"]))

    return run


@functools.cache
def _branches(stride: int, impl: str) -> tuple[tuple, np.ndarray]:
    """(switch branches, op index -> branch number); "fast" merges the separable convs."""
    branches, branch_of = [], []
    for name in space.OP_NAMES:
        if impl == "fast" and name in SEP_DILATION:
            if name != next(iter(SEP_DILATION)):
                branch_of.append(branch_of[-1])
                continue
            fn = _any_sep_conv(stride)
        else:
            fn = _named_op(name, stride, impl)
        branch_of.append(len(branches))
        # Every branch in jax.checkpoint: without it the backward pass of a switch keeps
        # the (zero-filled) residuals of every branch (DESIGN.md section 3: 90 MiB per switch).
        # The weight is applied inside, so the op output is rematerialised too rather than
        # kept for the weight's gradient (measured: a normal cell's XLA temp memory at
        # 32^3 x 8 channels went from 84 to 57 MiB).
        branches.append(jax.checkpoint(fn))
    return tuple(branches), np.asarray(branch_of, np.int32)


def apply_edge_op(
    index: Int[Array, ""],
    edge_params: dict,
    x: Volume,
    *,
    stride: int = 1,
    impl: str = "fast",
    weight: Float[Array, ""] | float = 1.0,
) -> Volume:
    """weight * op number `index` (traced int32, space.OP_NAMES order) of an edge on x.

    One compiled program serves every index; only the chosen op runs. The params of the
    ops not chosen get exactly zero gradient. `weight` (a traced scalar, e.g. an op
    weight of SCNAS Algorithm 2) is differentiable.
    """
    _check_impl(impl)
    branches, branch_of = _branches(stride, impl)
    index = jnp.asarray(index, jnp.int32)
    weight = jnp.asarray(weight, x.dtype)
    return lax.switch(jnp.asarray(branch_of)[index], branches, edge_params, x, index, weight)


def apply_edge_all(
    weights: Float[Array, "8"], edge_params: dict, x: Volume, *, stride: int = 1, impl: str = "fast"
) -> Volume:
    """sum_o weights[o] * op_o(x) over all 8 ops (DARTS mixed op; runs all of them)."""
    y = None
    for o, name in enumerate(space.OP_NAMES):
        if name == "zero":  # contributes weights[o] * 0 to the value and to every gradient
            continue
        term = weights[o] * apply_op(name, edge_params[name], x, stride=stride, impl=impl)
        y = term if y is None else y + term
    return y


# --- Stem ---


def stem_spec(c_in: int, c_out: int) -> dict:
    """Params of the stem: 3x3x3 conv (no bias) + InstanceNorm."""
    return {"w": he_spec((3, 3, 3, c_in, c_out)), **norm_spec(c_out)}


def apply_stem(params: dict, x: Volume, *, stride: int = 1, impl: str = "fast") -> Volume:
    """Stem: Conv 3x3x3-IN on the raw image (no activation first: the input is intensities).

    stride 2 puts every cell on a grid half as fine (8x fewer voxels), as MONAI's UNet
    does with its first strided conv; network.py then adds a full-resolution refinement.
    """
    return instance_norm(params, conv3(x, params["w"], stride=stride, impl=impl))
