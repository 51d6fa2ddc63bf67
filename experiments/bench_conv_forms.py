"""Benchmark: the 3x3x3 conv forms of ops.py against the 27-tap loop they replaced.

Dense convs: the old tap loop (27 (b x y z, i) @ (i, o) matmuls with a hand-written VJP,
kept below as the reference), the "fast" impl (one 2D conv over x-slabs) and the "xla"
impl (`lax.conv_general_dilated` in 3D). Depthwise: the old backward (each tap scattered
into a padded buffer) against the "fast" one (the forward loop with the flipped kernel).
Forward + backward of sum(y^2), batch 2, best of 5, shapes of the planned demo networks
(cells on the stride-2 grid: 32^3 x 4 channels down to 8^3 x 16) plus the stem.

    python experiments/bench_conv_forms.py

Prints a markdown table for BENCHMARKS.md. Not a test.
"""

import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=1")  # As main.py.

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

from jaxnas.nn import ops  # noqa: E402
from jaxnas.nn.ops import (Volume, _pad_same, _tap_start, _window, pointwise,  # noqa: E402
                           strided_shape)

# --- The tap loop of the previous ops.py (dense and depthwise), the old path ---


def _tap_product(window, w_t, depthwise: bool):
    return window * w_t if depthwise else pointwise(window, w_t)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _shifted_conv(x: Volume, w27, dilation, stride: int, pad: int, depthwise: bool) -> Volume:
    """3x3x3 conv with padding = dilation; w27 (27, c) depthwise or (27, i, o) dense.

    dilation may be a traced int32 scalar (<= pad): one program then serves the three
    dilated separable convs.
    """
    with jax.named_scope("depthwise_taps" if depthwise else "conv_taps"):
        xp = _pad_same(x, pad)
        out = strided_shape(x.shape, stride)[1:4]
        c_out = x.shape[-1] if depthwise else w27.shape[-1]

        def tap(t, y):
            window = _window(xp, _tap_start(t, dilation, pad), out, stride)
            return y + _tap_product(window, w27[t], depthwise)

        return lax.fori_loop(0, 27, tap, jnp.zeros((x.shape[0], *out, c_out), x.dtype))


def _shifted_conv_fwd(x, w27, dilation, stride, pad, depthwise):
    return _shifted_conv(x, w27, dilation, stride, pad, depthwise), (x, w27, dilation)


def _shifted_conv_bwd(stride, pad, depthwise, residuals, dy):
    with jax.named_scope("depthwise_taps_bwd" if depthwise else "conv_taps_bwd"):
        return _shifted_conv_bwd_body(stride, pad, depthwise, residuals, dy)


def _shifted_conv_bwd_body(stride, pad, depthwise, residuals, dy):
    x, w27, dilation = residuals
    xp = _pad_same(x, pad)
    out = dy.shape[1:4]
    # Tap t's dy (x) w[t]^T lands on the voxels its window read: every stride-th one.
    spread = [(0, 0, 0)] + [(0, 0, stride - 1)] * 3 + [(0, 0, 0)]

    def tap(t, carry):
        dxp, dw = carry
        start = (0, *_tap_start(t, dilation, pad), 0)
        if depthwise:
            back = dy * w27[t]
            dw_t = jnp.sum(_window(xp, start[1:4], out, stride) * dy, axis=(0, 1, 2, 3))
        else:
            back = pointwise(dy, w27[t].T)
            dw_t = jnp.einsum("bxyzi,bxyzo->io", _window(xp, start[1:4], out, stride), dy)
        back = lax.pad(back, jnp.zeros((), back.dtype), spread) if stride > 1 else back
        region = lax.dynamic_slice(dxp, start, back.shape)
        dxp = lax.dynamic_update_slice(dxp, region + back, start)
        return dxp, lax.dynamic_update_index_in_dim(dw, dw_t.astype(dw.dtype), t, 0)

    dxp, dw = lax.fori_loop(0, 27, tap, (jnp.zeros_like(xp), jnp.zeros_like(w27)))
    n = x.shape[1:4]
    dx = dxp[:, pad : pad + n[0], pad : pad + n[1], pad : pad + n[2]]
    return dx, dw, None


_shifted_conv.defvjp(_shifted_conv_fwd, _shifted_conv_bwd)


def old_dense(x, w, stride):
    return _shifted_conv(x, w.reshape(27, *w.shape[3:]), 1, stride, 1, False)


def old_depthwise(x, w, dilation):
    return _shifted_conv(x, w.reshape(27, w.shape[-1]), dilation, 1, dilation, True)


def seconds(fn, *args, repeats=5):
    grad = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a) ** 2), argnums=(0, 1)))
    jax.block_until_ready(grad(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.time()
        jax.block_until_ready(grad(*args))
        best = min(best, time.time() - start)
    return best


def main():
    key_x, key_w = jax.random.split(jax.random.key(0))
    print(f"jax {jax.__version__} {jax.devices()[0].device_kind}, fwd + bwd ms, batch 2\n")
    print("| conv | shape | old tap loop | fast (now) | xla 3D | old / fast |")
    print("|---|---|---|---|---|---|")
    for size, c_in, c_out, stride in [(64, 1, 16, 2), (64, 1, 16, 1), (32, 4, 4, 1),
                                      (32, 4, 4, 2), (16, 8, 8, 1), (8, 16, 16, 1),
                                      (32, 16, 16, 1)]:
        x = jax.random.normal(key_x, (2, size, size, size, c_in))
        w = jax.random.normal(key_w, (3, 3, 3, c_in, c_out))
        old = seconds(functools.partial(old_dense, stride=stride), x, w)
        fast = seconds(lambda x, w: ops.conv3(x, w, stride=stride, impl="fast"), x, w)
        xla = seconds(lambda x, w: ops.conv3(x, w, stride=stride, impl="xla"), x, w)
        print(f"| dense stride {stride} | {size}^3, {c_in} -> {c_out} | {old * 1e3:.1f} | "
              f"{fast * 1e3:.1f} | {xla * 1e3:.1f} | {old / fast:.2f} |", flush=True)
    for size, c, dilation in [(32, 4, 2), (16, 8, 3), (8, 16, 4), (32, 16, 2)]:
        x = jax.random.normal(key_x, (2, size, size, size, c))
        w = jax.random.normal(key_w, (3, 3, 3, 1, c))
        old = seconds(functools.partial(old_depthwise, dilation=dilation), x, w)
        fast = seconds(lambda x, w: ops.depthwise_conv3(x, w, dilation=dilation, impl="fast"),
                       x, w)
        xla = seconds(lambda x, w: ops.depthwise_conv3(x, w, dilation=dilation, impl="xla"),
                      x, w)
        print(f"| depthwise d{dilation} | {size}^3 x {c} | {old * 1e3:.1f} | {fast * 1e3:.1f} | "
              f"{xla * 1e3:.1f} | {old / fast:.2f} |", flush=True)


if __name__ == "__main__":
    main()
