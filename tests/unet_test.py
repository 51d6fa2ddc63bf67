"""MONAI's UNet ported (jaxnas/baselines/unet.py): the transposed conv against its
definition, "fast" == "xla", a training step, parameter and multiply-add counts."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest

from jaxnas import models
from jaxnas.baselines import unet
from jaxnas.nn import losses
from jaxnas.spaces.scnas import network
from tests import fixtures

SHAPE = (1, 16, 16, 32, 2)
WIDTH, NUM_CLASSES = 2, 3


def _conv_transpose_reference(x, w):
    """PyTorch's ConvTranspose3d(k 3, stride 2, padding 1, output_padding 1) by its
    definition: out[2i - 1 + k] += x[i] w[k] per axis, cropped to 2n."""
    b, nx, ny, nz, _ = x.shape
    out = np.zeros((b, 2 * nx + 1, 2 * ny + 1, 2 * nz + 1, w.shape[-1]))
    for kx in range(3):
        for ky in range(3):
            for kz in range(3):
                term = np.einsum("bxyzi,io->bxyzo", x, w[kx, ky, kz])
                # Output o = 2 i - 1 + k, shifted by 1 so that o = -1 lands at index 0.
                out[:, kx:kx + 2 * nx:2, ky:ky + 2 * ny:2, kz:kz + 2 * nz:2] += term
    return out[:, 1:2 * nx + 1, 1:2 * ny + 1, 1:2 * nz + 1]


class ConvTransposeTest(absltest.TestCase):
    def test_both_forms_equal_the_definition(self):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(2, 3, 4, 5, 3)).astype(np.float32)
        w = rng.normal(size=(3, 3, 3, 3, 4)).astype(np.float32)
        want = _conv_transpose_reference(x, w)
        for impl in ("fast", "xla"):
            got = unet.conv_transpose2(jnp.asarray(x), jnp.asarray(w), impl=impl)
            chex.assert_shape(got, (2, 6, 8, 10, 4))
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4, err_msg=impl)


class UNetTest(absltest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.params = unet.init_unet(jax.random.key(0), in_channels=SHAPE[-1],
                                    num_classes=NUM_CLASSES, width=WIDTH)
        key_x, key_y = jax.random.split(jax.random.key(1))
        cls.image = jax.random.normal(key_x, SHAPE)
        cls.labels = jax.random.randint(key_y, SHAPE[:4], 0, NUM_CLASSES)

    def test_training_step_changes_every_param_and_forms_agree(self):
        optimizer = optax.adam(1e-3)

        def step(params, opt_state):
            def loss_fn(p):
                logits = unet.apply_unet(p, self.image, impl="xla")
                return losses.dice_ce(logits, self.labels, num_classes=NUM_CLASSES), logits

            (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return loss, logits, optax.apply_updates(params, updates)

        loss, logits, new = jax.jit(step)(self.params, optimizer.init(self.params))
        chex.assert_shape(logits, (*SHAPE[:4], NUM_CLASSES))
        chex.assert_tree_all_finite((loss, new))
        changed = [np.any(np.asarray(a) != np.asarray(b))
                   for a, b in zip(jax.tree.leaves(self.params), jax.tree.leaves(new))]
        self.assertTrue(all(changed), f"{changed.count(False)} params unchanged")
        self.assertGreater(len(changed), 40)  # convs, biases and PReLU slopes
        fast = jax.jit(lambda p, x: unet.apply_unet(p, x, impl="fast"))(self.params, self.image)
        np.testing.assert_allclose(fast, logits, atol=1e-4, rtol=1e-4)

    def test_bad_patch_size_raises(self):
        with self.assertRaisesRegex(ValueError, "divisible by 16"):
            unet.apply_unet(self.params, jnp.zeros((1, 8, 16, 16, SHAPE[-1])))

    def test_counts(self):
        self.assertEqual(network.num_params(self.params), unet.unet_cost(
            in_channels=SHAPE[-1], num_classes=NUM_CLASSES, width=WIDTH,
            patch_size=SHAPE[1:4])["params"])
        # The MONAI recipe's network (1 channel in, 3 classes, channels 16-256).
        recipe = jax.eval_shape(lambda k: unet.init_unet(k, in_channels=1, num_classes=3),
                                jax.random.key(0))
        self.assertEqual(network.num_params(recipe), 4_807_482)
        jaxpr = jax.make_jaxpr(lambda p, x: unet.apply_unet(p, x, impl="xla"))(
            self.params, self.image)
        want = unet.unet_cost(in_channels=SHAPE[-1], num_classes=NUM_CLASSES, width=WIDTH,
                              patch_size=SHAPE[1:4])["gflops"] * 1e9
        self.assertAlmostEqual(fixtures.conv_macs_in_jaxpr(jaxpr.jaxpr) / want, 1.0, places=6)

    def test_model_of_architecture_unet(self):
        description = models.describe("unet", in_channels=SHAPE[-1],
                                      num_classes=NUM_CLASSES, width=WIDTH)
        model = models.build(description, impl="xla", ce_weight=1.0)
        params = jax.eval_shape(model.init, jax.random.key(0))
        self.assertEqual(jax.tree.structure(params), jax.tree.structure(self.params))
        batch = {"image": self.image, "label": self.labels}
        loss = jax.eval_shape(model.loss, params, batch)
        chex.assert_shape(loss, ())
        self.assertEqual(model.cost(SHAPE[1:4])["params"], network.num_params(self.params))


if __name__ == "__main__":
    absltest.main()
