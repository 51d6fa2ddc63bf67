"""Tests of jaxnas.losses on tiny volumes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized

from jaxnas.nn import losses

CLASSES = 3


def _labels():
    labels = np.zeros((2, 4, 4, 2), np.int32)
    labels[:, :2] = 1
    labels[:, 3:] = 2
    return jnp.asarray(labels)


def _logits_for(labels, scale=50.0):
    return scale * jax.nn.one_hot(labels, CLASSES)


class DiceTest(parameterized.TestCase):
    @parameterized.product(include_background=[True, False], batch_dice=[True, False])
    def test_perfect_is_zero(self, include_background, batch_dice):
        labels = _labels()
        loss = losses.soft_dice_loss(_logits_for(labels), labels,
                                     include_background=include_background, batch_dice=batch_dice)
        self.assertLess(float(loss), 1e-4)

    @parameterized.product(include_background=[True, False], batch_dice=[True, False])
    def test_disjoint_is_one(self, include_background, batch_dice):
        labels = _labels()
        wrong = (labels + 1) % CLASSES  # every voxel predicts another class
        loss = losses.soft_dice_loss(_logits_for(wrong), labels,
                                     include_background=include_background, batch_dice=batch_dice)
        self.assertGreater(float(loss), 0.999)

    def test_known_value(self):
        # One class-1 voxel of 4 predicted as class 1 with certainty, 3 as class 0.
        labels = jnp.array([1, 1, 1, 1], jnp.int32).reshape(1, 4, 1, 1)
        pred = jnp.array([1, 0, 0, 0], jnp.int32).reshape(1, 4, 1, 1)
        loss = losses.soft_dice_loss(100.0 * jax.nn.one_hot(pred, 2), labels,
                                     include_background=False)
        # Dice_1 = 2 * 1 / (1 + 4) = 0.4
        self.assertAlmostEqual(float(loss), 0.6, places=4)

    def test_uniform_prediction_and_gradient(self):
        labels = _labels()
        logits = jnp.zeros(labels.shape + (CLASSES,))
        loss, grad = jax.value_and_grad(losses.dice_ce)(logits, labels)
        self.assertTrue(0.0 < float(loss) < 1.0)
        self.assertTrue(np.all(np.isfinite(grad)))
        self.assertGreater(float(jnp.max(jnp.abs(grad))), 0.0)


class CrossEntropyTest(absltest.TestCase):
    def test_uniform_is_log_k_and_matches_integer_form(self):
        labels = _labels()
        logits = jax.random.normal(jax.random.key(0), labels.shape + (CLASSES,))
        ce = losses.cross_entropy(logits, labels)
        ref = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        np.testing.assert_allclose(ce, ref, rtol=1e-5)
        uniform = losses.cross_entropy(jnp.zeros_like(logits), labels)
        self.assertAlmostEqual(float(uniform), np.log(CLASSES), places=5)

    def test_dice_ce_sum_and_num_classes_check(self):
        labels = _labels()
        logits = jax.random.normal(jax.random.key(1), labels.shape + (CLASSES,))
        total = losses.dice_ce(logits, labels, num_classes=CLASSES, ce_weight=1.0)
        parts = losses.soft_dice_loss(logits, labels) + losses.cross_entropy(logits, labels)
        np.testing.assert_allclose(total, parts, rtol=1e-6)
        np.testing.assert_allclose(losses.dice_ce(logits, labels),
                                   losses.soft_dice_loss(logits, labels), rtol=1e-6)
        with self.assertRaisesRegex(ValueError, "num_classes"):
            losses.dice_ce(logits, labels, num_classes=4)


if __name__ == "__main__":
    absltest.main()
