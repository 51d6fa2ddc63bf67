"""Sliding-window inference reproduces an identity predictor exactly."""

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


if __name__ == "__main__":
    absltest.main()
