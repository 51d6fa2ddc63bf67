"""Tests of jaxnas.metrics (host-side numpy Dice)."""

import numpy as np
from absl.testing import absltest

from jaxnas import metrics


class DiceTest(absltest.TestCase):
    def test_known_values(self):
        label = np.array([0, 0, 1, 1, 1, 2, 2, 0])
        pred = np.array([0, 1, 1, 1, 0, 2, 0, 0])
        dice = metrics.dice_per_class(pred, label, 3)
        # class 0: tp 2, fp 2, fn 1 -> 4/7; class 1: tp 2, fp 1, fn 1 -> 4/6; class 2: 2/3.
        np.testing.assert_allclose(dice, [4 / 7, 4 / 6, 2 / 3])

    def test_empty_class(self):
        label = np.zeros((2, 3, 3), np.int32)
        label[0, 0, 0] = 1
        dice = metrics.dice_per_class(label, label, 3)
        self.assertEqual(dice[0], 1.0)
        self.assertEqual(dice[1], 1.0)
        self.assertTrue(np.isnan(dice[2]))  # absent in both: undefined, left out of the mean
        self.assertEqual(metrics.dice_per_class(label, label, 3, empty=1.0)[2], 1.0)

    def test_missed_and_spurious_class_score_zero(self):
        label = np.array([0, 1, 0, 0])
        pred = np.array([0, 0, 0, 2])
        np.testing.assert_allclose(metrics.dice_per_class(pred, label, 3)[1:], [0.0, 0.0])

    def test_confusion_sums_over_cases(self):
        rng = np.random.default_rng(0)
        a, b = rng.integers(0, 3, (2, 5, 5, 5)), rng.integers(0, 3, (2, 5, 5, 5))
        whole = metrics.confusion_matrix(a, b, 3)
        parts = metrics.confusion_matrix(a[0], b[0], 3) + metrics.confusion_matrix(a[1], b[1], 3)
        np.testing.assert_array_equal(whole, parts)
        self.assertEqual(whole.sum(), a.size)
        with self.assertRaisesRegex(ValueError, "outside"):
            metrics.confusion_matrix(a, b, 2)


if __name__ == "__main__":
    absltest.main()
