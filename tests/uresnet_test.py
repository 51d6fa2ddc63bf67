"""The 3D U-ResNet baseline: shapes, a training step, the attention gate, "fast" == "xla",
parameter and multiply-add counts (the latter against the convs XLA is actually given).

The training step is compiled with impl="xla" (compiles faster here); the "fast" forward
pass is compiled once and compared with its logits.
"""

import functools

import chex
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest

from jaxnas.baselines import uresnet
from jaxnas.nn import losses
from jaxnas.nn import ops
from jaxnas.spaces.scnas import network
from tests import fixtures

SHAPE = (1, 16, 16, 16, 2)
WIDTH, NUM_CLASSES = 4, 3
OPTIMIZER = optax.adam(1e-3)


def _train_step(params, opt_state, image, labels):
    def loss_fn(p):
        logits, aux = uresnet.apply_uresnet(p, image, impl="xla", return_aux=True)
        loss = uresnet.deep_supervision_loss(losses.dice_ce, logits, aux, labels)
        return loss, (logits, aux)

    (loss, (logits, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = OPTIMIZER.update(grads, opt_state, params)
    return loss, logits, aux, grads, optax.apply_updates(params, updates)


class UResNetTest(absltest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.params = uresnet.init_uresnet(
            jax.random.key(0), in_channels=SHAPE[-1], num_classes=NUM_CLASSES, width=WIDTH
        )
        key_x, key_y = jax.random.split(jax.random.key(1))
        cls.image = jax.random.normal(key_x, SHAPE)
        cls.labels = jax.random.randint(key_y, SHAPE[:4], 0, NUM_CLASSES)
        opt_state = OPTIMIZER.init(cls.params)
        cls.result = jax.jit(_train_step)(cls.params, opt_state, cls.image, cls.labels)

    def test_output_shapes(self):
        _, logits, aux, _, _ = self.result
        chex.assert_shape(logits, (*SHAPE[:4], NUM_CLASSES))
        self.assertLen(aux, 2)  # levels 2 and 1, coarse first
        chex.assert_shape(aux[0], (1, 4, 4, 4, NUM_CLASSES))
        chex.assert_shape(aux[1], (1, 8, 8, 8, NUM_CLASSES))
        plain = jax.eval_shape(lambda p, x: uresnet.apply_uresnet(p, x), self.params, self.image)
        chex.assert_shape(plain, (*SHAPE[:4], NUM_CLASSES))

    def test_training_step_changes_every_param(self):
        loss, logits, aux, grads, new_params = self.result
        chex.assert_tree_all_finite((loss, logits, aux, grads, new_params))
        self.assertGreater(float(loss), 0.0)
        paths_old = jax.tree_util.tree_leaves_with_path(self.params)
        paths_new = jax.tree_util.tree_leaves_with_path(new_params)
        self.assertLen(paths_new, len(paths_old))
        convs = 0
        for (path, old), (_, new) in zip(paths_old, paths_new):
            name = jax.tree_util.keystr(path)
            self.assertTrue(np.any(np.asarray(old) != np.asarray(new)), f"{name} unchanged")
            convs += name.endswith("['w']") or "['w_" in name
        self.assertGreater(convs, 20)  # the check really visited the conv weights

    def test_fast_equals_xla(self):
        _, logits_xla, aux_xla, _, _ = self.result
        fast = jax.jit(
            functools.partial(uresnet.apply_uresnet, impl="fast", return_aux=True)
        )
        logits_fast, aux_fast = fast(self.params, self.image)
        np.testing.assert_allclose(logits_fast, logits_xla, atol=1e-4, rtol=1e-4)
        for a, b in zip(aux_fast, aux_xla):
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)

    def test_bad_patch_size_raises(self):
        with self.assertRaisesRegex(ValueError, "divisible by 8"):
            uresnet.apply_uresnet(self.params, jnp.zeros((1, 12, 16, 16, SHAPE[-1])))


class AttentionGateTest(absltest.TestCase):
    def test_gate_in_unit_interval(self):
        c_skip, c_gating = 4, 8
        spec = uresnet.attention_gate_spec(c_skip, c_gating)
        params = ops.init_params(jax.random.key(2), spec)
        # Large inputs and a bias push the sigmoid into saturation at both ends.
        params["b_psi"] = jnp.full((1,), 3.0)
        key_s, key_g = jax.random.split(jax.random.key(3))
        skip = 30.0 * jax.random.normal(key_s, (2, 8, 8, 6, c_skip))
        gating = 30.0 * jax.random.normal(key_g, (2, 4, 4, 3, c_gating))
        for impl in ops.IMPLS:
            gated, alpha = uresnet.apply_attention_gate(params, skip, gating, impl=impl)
            chex.assert_shape(alpha, (2, 8, 8, 6, 1))
            alpha = np.asarray(alpha)
            self.assertGreaterEqual(alpha.min(), 0.0)
            self.assertLessEqual(alpha.max(), 1.0)
            self.assertGreater(alpha.max() - alpha.min(), 0.5)  # not a constant gate
            np.testing.assert_allclose(gated, skip * alpha, rtol=1e-6)
        with self.assertRaisesRegex(ValueError, "half grid"):
            uresnet.apply_attention_gate(params, skip, gating[:, :2], impl="xla")


class DeepSupervisionLossTest(absltest.TestCase):
    def test_weights_and_label_downsampling(self):
        labels = jnp.arange(8**3).reshape(1, 8, 8, 8) % 5
        maps = [jnp.full((1, n, n, n, 2), float(n)) for n in (8, 2, 4)]

        def loss_fn(logits, lab):  # records which labels each map was given
            return jnp.mean(logits) + 1000.0 * jnp.mean(lab.astype(jnp.float32))

        got = uresnet.deep_supervision_loss(loss_fn, maps[0], maps[1:], labels)
        # Weights 1, 1/4, 1/2 for full, quarter, half resolution, normalised.
        parts = [loss_fn(m, labels[:, ::f, ::f, ::f]) for m, f in zip(maps, (1, 4, 2))]
        want = (1.0 * parts[0] + 0.25 * parts[1] + 0.5 * parts[2]) / 1.75
        np.testing.assert_allclose(got, want, rtol=1e-6)
        given = uresnet.deep_supervision_loss(loss_fn, maps[0], maps[1:], labels, [2, 0, 0])
        np.testing.assert_allclose(given, parts[0], rtol=1e-6)
        with self.assertRaisesRegex(ValueError, "downsampled"):
            uresnet.deep_supervision_loss(loss_fn, maps[0], [maps[0][:, :3]], labels)


class CostTest(absltest.TestCase):
    def test_parameter_counts(self):
        spec = uresnet.uresnet_spec(in_channels=SHAPE[-1], num_classes=NUM_CLASSES, width=WIDTH)
        params = uresnet.init_uresnet(
            jax.random.key(0), in_channels=SHAPE[-1], num_classes=NUM_CLASSES, width=WIDTH
        )
        self.assertEqual(network.num_params(params), ops.num_spec_params(spec))
        cost = uresnet.uresnet_cost(
            in_channels=SHAPE[-1], num_classes=NUM_CLASSES, width=WIDTH, patch_size=SHAPE[1:4]
        )
        self.assertEqual(cost["params"], network.num_params(params))
        # The paper's configuration (brain tumour: 4 modalities, 4 classes, width 32).
        paper = jax.eval_shape(
            lambda k: uresnet.init_uresnet(k, in_channels=4, num_classes=4), jax.random.key(0)
        )
        self.assertEqual(network.num_params(paper), 7_805_103)
        self.assertEqual(uresnet.uresnet_cost(in_channels=4, num_classes=4, patch_size=(8,) * 3)
                         ["params"], 7_805_103)

    def test_macs_match_the_traced_convs(self):
        shape = (1, 16, 8, 24, 3)  # anisotropic: a transposed axis would be caught
        params = jax.eval_shape(
            lambda k: uresnet.init_uresnet(k, in_channels=3, num_classes=5, width=6),
            jax.random.key(0),
        )
        jaxpr = jax.make_jaxpr(
            lambda p, x: uresnet.apply_uresnet(p, x, impl="xla", return_aux=True)
        )(params, jax.ShapeDtypeStruct(shape, jnp.float32))
        self.assertEqual(
            uresnet.uresnet_macs(in_channels=3, num_classes=5, width=6, patch_size=shape[1:4]),
            fixtures.conv_macs_in_jaxpr(jaxpr.jaxpr),
        )

    def test_macs_grow_8x_when_patch_doubles(self):
        kwargs = dict(in_channels=4, num_classes=4, width=32)
        small = uresnet.uresnet_macs(patch_size=(64, 64, 16), **kwargs)
        large = uresnet.uresnet_macs(patch_size=(128, 128, 32), **kwargs)
        self.assertAlmostEqual(large / small, 8.0, places=12)
        cost = uresnet.uresnet_cost(patch_size=(128, 128, 32), **kwargs)
        self.assertAlmostEqual(cost["gflops"], large / 1e9)
        self.assertEqual(cost["patch_size"], [128, 128, 32])


if __name__ == "__main__":
    absltest.main()
