"""Candidate ops: the "fast" (shifted) and "xla" impls agree in values and gradients."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from jaxnas.nn import ops
from jaxnas.spaces.scnas import space

# Even and odd sizes: stride 2 gives ceil(n / 2) for both, and the backward pass of a
# strided conv pads differently for each parity. Stride 1 pads alike for both parities.
SHAPES = {"even": (1, 8, 8, 6, 4), "odd": (1, 7, 6, 5, 4)}
CASES = [("even", 1), ("even", 2), ("odd", 2)]


def _all_ops(edge_params, x, cotangents, *, stride, impl):
    """{op: (y, d params, d x)} for every op, gradients of sum(y * cotangent)."""
    results = {}
    for name in space.OP_NAMES:

        def op(p, v, name=name):
            return ops.apply_op(name, p, v, stride=stride, impl=impl)

        y, vjp = jax.vjp(op, edge_params[name], x)
        results[name] = (y, *vjp(cotangents[name]))
    return results


class OpsTest(parameterized.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.results = {}
        key = jax.random.key(0)
        for shape_name, stride in CASES:
            shape = SHAPES[shape_name]
            key_x, key_p, key_ct = jax.random.split(jax.random.fold_in(key, stride), 3)
            x = jax.random.normal(key_x, shape)
            edge_params = ops.init_edge(key_p, shape[-1], stride)
            out_shape = ops.strided_shape(shape, stride)
            cts = {
                name: jax.random.normal(jax.random.fold_in(key_ct, i), out_shape)
                for i, name in enumerate(space.OP_NAMES)
            }

            def both(p, v, c, stride=stride):
                return {impl: _all_ops(p, v, c, stride=stride, impl=impl) for impl in ops.IMPLS}

            cls.results[shape_name, stride] = jax.device_get(jax.jit(both)(edge_params, x, cts))
            cls.results[shape_name, stride]["x"] = np.asarray(x)
            cls.results[shape_name, stride]["params"] = edge_params

    @parameterized.product(op=space.OP_NAMES, case=CASES)
    def test_fast_matches_xla(self, op, case):
        shape_name, stride = case
        fast = self.results[case]["fast"][op]
        xla = self.results[case]["xla"][op]
        chex.assert_shape(fast[0], ops.strided_shape(SHAPES[shape_name], stride))
        for part, a, b in zip(("output", "d_params", "d_input"), fast, xla):
            for leaf_a, leaf_b in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
                np.testing.assert_allclose(leaf_a, leaf_b, atol=1e-4, rtol=1e-4, err_msg=part)

    def test_instance_norm_vjp_matches_autodiff(self):
        key_x, key_s, key_b, key_c = jax.random.split(jax.random.key(3), 4)
        x = 3.0 + 2.0 * jax.random.normal(key_x, (2, 5, 4, 3, 6))
        params = {"scale": jax.random.normal(key_s, (6,)), "bias": jax.random.normal(key_b, (6,))}
        ct = jax.random.normal(key_c, x.shape)

        def reference(p, v):  # the plain formula, differentiated by jax
            mean = jnp.mean(v, axis=(1, 2, 3), keepdims=True)
            var = jnp.mean(jnp.square(v - mean), axis=(1, 2, 3), keepdims=True)
            return (v - mean) * jax.lax.rsqrt(var + ops.NORM_EPS) * p["scale"] + p["bias"]

        y, vjp = jax.vjp(ops.instance_norm, params, x)
        y_ref, vjp_ref = jax.vjp(reference, params, x)
        np.testing.assert_allclose(y, y_ref, atol=1e-5)
        for a, b in zip(jax.tree.leaves(vjp(ct)), jax.tree.leaves(vjp_ref(ct))):
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)

    @parameterized.product(c_in=(1, 2, 3), case=CASES)
    def test_few_channel_conv_matches_xla(self, c_in, case):
        # The stem's case: an image of 1-3 modalities into the slab conv.
        shape_name, stride = case
        shape = (*SHAPES[shape_name][:4], c_in)
        key_x, key_w = jax.random.split(jax.random.key(c_in))
        x, w = jax.random.normal(key_x, shape), jax.random.normal(key_w, (3, 3, 3, c_in, 5))

        def both(w, x):
            return [jax.value_and_grad(lambda w, x: jnp.sum(jnp.sin(ops.conv3(
                x, w, stride=stride, impl=impl))), argnums=(0, 1))(w, x) for impl in ops.IMPLS]

        fast, xla = jax.jit(both)(w, x)
        for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(xla)):
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)

    @parameterized.parameters(*CASES)
    def test_zero_op_is_zeros(self, shape_name, stride):
        y, _, dx = self.results[shape_name, stride]["fast"]["zero"]
        np.testing.assert_array_equal(y, 0.0)
        np.testing.assert_array_equal(dx, 0.0)

    @parameterized.parameters(*CASES)
    def test_identity(self, shape_name, stride):
        y = self.results[shape_name, stride]["fast"]["identity"][0]
        if stride == 1:
            np.testing.assert_array_equal(y, self.results[shape_name, stride]["x"])
        else:  # factorized reduce ends with InstanceNorm (scale 1, bias 0 at init)
            np.testing.assert_allclose(y.mean(axis=(1, 2, 3)), 0.0, atol=1e-5)

    @parameterized.parameters(*CASES)
    def test_max_pool_bounds_input(self, shape_name, stride):
        y = self.results[shape_name, stride]["fast"]["max_pool_3x3x3"][0]
        x = self.results[shape_name, stride]["x"]
        self.assertTrue(np.all(np.isfinite(y)))
        if stride == 1:
            self.assertTrue(np.all(y >= x))

    @parameterized.parameters(*ops.IMPLS)
    def test_avg_pool_ignores_padding(self, impl):
        x = jnp.full((1, 5, 4, 3, 2), 3.0)
        for stride in (1, 2):
            y = ops.avg_pool3(x, stride=stride, impl=impl)
            np.testing.assert_allclose(y, 3.0, rtol=1e-6)

    def test_upsample_fast_matches_resize(self):
        x = jax.random.normal(jax.random.key(3), (1, 4, 3, 2, 2))
        up = jax.jit(lambda v: {impl: ops.upsample2(v, impl=impl) for impl in ops.IMPLS})(x)
        chex.assert_shape(up["fast"], (1, 8, 6, 4, 2))
        np.testing.assert_allclose(up["fast"], up["xla"], atol=1e-5)

    @parameterized.parameters(("even", 1), ("odd", 2))
    def test_edge_switch_runs_the_indexed_op(self, shape_name, stride):
        results = self.results[shape_name, stride]
        run = jax.jit(lambda i, p, v: ops.apply_edge_op(i, p, v, stride=stride))
        for index, name in enumerate(space.OP_NAMES):
            np.testing.assert_allclose(
                run(index, results["params"], results["x"]),
                results["fast"][name][0],
                atol=1e-5,
                err_msg=name,
            )

    @parameterized.parameters(("even", 1), ("odd", 2))
    def test_edge_switch_gradients_match_the_op(self, shape_name, stride):
        # The merged separable branch (traced dilation, padding 4) and its hand-written
        # VJP against each op on its own (static dilation, xla impl's autodiff).
        results = self.results[shape_name, stride]
        grad = jax.jit(jax.grad(lambda p, v, i, ct: jnp.sum(
            ops.apply_edge_op(i, p, v, stride=stride) * ct), argnums=(0, 1)))
        for index, name in enumerate(space.OP_NAMES):
            if name not in ops.SEP_DILATION:
                continue
            ct = jax.random.normal(jax.random.key(index), results["xla"][name][0].shape)
            d_params, d_x = grad(results["params"], results["x"], index, ct)
            _, vjp = jax.vjp(lambda p, v: ops.apply_op(name, p, v, stride=stride, impl="xla"),
                             results["params"][name], results["x"])
            want_p, want_x = vjp(ct)
            np.testing.assert_allclose(d_x, want_x, atol=1e-4, rtol=1e-4, err_msg=name)
            for a, b in zip(jax.tree.leaves(d_params[name]), jax.tree.leaves(want_p)):
                np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4, err_msg=name)

    @parameterized.parameters(1, 2)
    def test_dilated_dense_conv_matches_xla(self, stride):
        x = jax.random.normal(jax.random.key(0), (1, 9, 8, 7, 3))
        w = jax.random.normal(jax.random.key(1), (3, 3, 3, 3, 4))

        def both(w, x):
            return [jax.value_and_grad(lambda w, x: jnp.sum(jnp.sin(ops.conv3(
                x, w, stride=stride, dilation=2, impl=impl))), argnums=(0, 1))(w, x)
                for impl in ops.IMPLS]

        fast, xla = jax.jit(both)(w, x)
        for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(xla)):
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)

    def test_unknown_names_raise(self):
        with self.assertRaises(ValueError):
            ops.op_spec("conv_5x5x5", 2)
        with self.assertRaises(ValueError):
            ops.max_pool3(jnp.zeros((1, 2, 2, 2, 1)), impl="cudnn")


if __name__ == "__main__":
    absltest.main()
