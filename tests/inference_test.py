"""Sliding-window inference reproduces an identity predictor exactly; mirroring TTA."""

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from jaxnas import inference


class SlidingWindowTest(parameterized.TestCase):

    @parameterized.parameters(((20, 17, 9),), ((5, 6, 3),), ((8, 8, 8),), ((31, 8, 13),))
    def test_identity_reproduces_input(self, shape):
        volume = np.random.default_rng(0).normal(size=shape + (3,)).astype(np.float32)
        for gaussian in (False, True):
            out = inference.sliding_window_predict(
                lambda x: x, volume, window=(8, 8, 8), num_classes=3, batch_size=3,
                gaussian=gaussian)
            np.testing.assert_allclose(out, volume, atol=1e-5)

    def test_windows_cover_with_overlap(self):
        starts = inference.window_starts((20, 8, 5), (8, 8, 8), 0.5)
        self.assertEqual(sorted({s[0] for s in starts}), [0, 4, 8, 12])
        self.assertEqual({s[1] for s in starts}, {0})
        self.assertEqual({s[2] for s in starts}, {0})

    def test_gaussian_weights_positive_peak_centre(self):
        w = inference.gaussian_weights((9, 8, 7))
        self.assertGreater(w.min(), 0)
        self.assertEqual(np.unravel_index(w.argmax(), w.shape), (4, 4, 3))

    def test_one_batch_shape(self):
        seen = set()

        def predict(x):
            seen.add(x.shape)
            return x[..., :1]

        inference.sliding_window_predict(predict, np.ones((19, 10, 10, 2), np.float32),
                                         window=(8, 8, 8), num_classes=1, batch_size=4)
        self.assertLen(seen, 1)


def _ramp_x(x):
    """Scores = the window's x index (not flip-equivariant), one class."""
    ramp = np.arange(x.shape[1], dtype=np.float32)[None, :, None, None, None]
    return np.broadcast_to(ramp, x.shape[:4] + (1,))


class MirrorTest(parameterized.TestCase):

    def test_all_eight_flips(self):
        flips = inference.mirror_flips((0, 1, 2))
        self.assertLen(flips, 8)
        self.assertEqual(flips[0], ())
        self.assertLen(set(flips), 8)
        self.assertEqual(inference.mirror_flips((2,)), [(), (2,)])
        with self.assertRaises(ValueError):
            inference.mirror_flips((3,))

    @parameterized.parameters(((20, 17, 9),), ((5, 6, 3),), ((9, 7, 13),), ((8, 8, 8),))
    def test_identity_reproduces_input_mirrored(self, shape):
        volume = np.random.default_rng(1).normal(size=shape + (2,)).astype(np.float32)
        for gaussian in (False, True):
            kwargs = dict(window=(8, 8, 8), num_classes=2, batch_size=2, gaussian=gaussian)
            plain = inference.sliding_window_predict(lambda x: x, volume, **kwargs)
            mirrored = inference.sliding_window_predict(lambda x: x, volume, mirror=True,
                                                        **kwargs)
            np.testing.assert_allclose(mirrored, volume, atol=1e-5)
            np.testing.assert_allclose(mirrored, plain, atol=1e-5)

    def test_ramp_is_averaged_with_its_mirror(self):
        volume = np.ones((8, 6, 4, 1), np.float32)  # One window exactly.
        kwargs = dict(window=(8, 6, 4), num_classes=1)
        ramp = np.arange(8, dtype=np.float32)[:, None, None, None] * np.ones((8, 6, 4, 1))
        plain = inference.sliding_window_predict(_ramp_x, volume, **kwargs)
        np.testing.assert_allclose(plain, ramp)
        expected = 0.5 * (ramp + ramp[::-1])  # 3.5 everywhere.
        for axes in ((0, 1, 2), (0,), (0, 2)):
            out = inference.sliding_window_predict(_ramp_x, volume, mirror=True,
                                                   mirror_axes=axes, **kwargs)
            np.testing.assert_allclose(out, expected, atol=1e-6, err_msg=str(axes))
        # Flips along y and z leave an x ramp alone (checks the batch axis is not flipped).
        out = inference.sliding_window_predict(_ramp_x, volume, mirror=True,
                                               mirror_axes=(1, 2), **kwargs)
        np.testing.assert_allclose(out, ramp, atol=1e-6)

    def test_input_dependent_scores_are_flipped_back(self):
        rng = np.random.default_rng(2)
        volume = rng.normal(size=(8, 6, 4, 1)).astype(np.float32)
        predict = lambda x: x * _ramp_x(x)  # noqa: E731
        out = inference.sliding_window_predict(predict, volume, window=(8, 6, 4),
                                               num_classes=1, mirror=True)
        ramp = np.arange(8, dtype=np.float32)[:, None, None, None]
        np.testing.assert_allclose(out, volume * 0.5 * (ramp + ramp[::-1]), atol=1e-5)

    def test_calls_per_batch_and_one_batch_shape(self):
        calls = []

        def predict(x):
            calls.append(x.shape)
            return x[..., :1]

        volume = np.ones((19, 10, 10, 2), np.float32)
        inference.sliding_window_predict(predict, volume, window=(8, 8, 8), num_classes=1,
                                         batch_size=4)
        plain = len(calls)
        calls.clear()
        inference.sliding_window_predict(predict, volume, window=(8, 8, 8), num_classes=1,
                                         batch_size=4, mirror=True)
        self.assertLen(calls, 8 * plain)
        calls.clear()
        inference.sliding_window_predict(predict, volume, window=(8, 8, 8), num_classes=1,
                                         batch_size=4, mirror=True, mirror_axes=(0,))
        self.assertLen(calls, 2 * plain)
        self.assertLen(set(calls), 1)


if __name__ == "__main__":
    absltest.main()
