"""Preprocessing maths and the cache's reuse and invalidation rules."""

import os

import numpy as np
from absl.testing import absltest

from jaxnas.data import cache
from jaxnas.data import msd
from jaxnas.data import preprocess
from tests import fixtures


class PreprocessTest(absltest.TestCase):

    def test_resampling_keeps_physical_extent(self):
        rng = np.random.default_rng(0)
        image = rng.random((20, 17, 9, 1)).astype(np.float32)
        spacing, target = (1.0, 1.3, 3.0), (1.5, 1.5, 1.5)
        shape = preprocess.resampled_shape(image.shape[:3], spacing, target)
        out = preprocess.resample_image(image, shape, order=3)
        self.assertEqual(out.shape, shape + (1,))
        for n, s, m, t in zip(image.shape, spacing, out.shape, target):
            self.assertLessEqual(abs(n * s - m * t), t / 2 + 1e-6)

    def test_resampling_keeps_centre_of_mass(self):
        label = np.zeros((20, 20, 10), np.uint8)
        label[4:9, 10:15, 2:5] = 1
        new_shape = preprocess.resampled_shape(label.shape, (1, 1, 2), (0.5, 2, 1))
        out = preprocess.resample_label(label, new_shape)
        scale = np.array(label.shape) / np.array(new_shape)
        before = np.argwhere(label == 1).mean(0) + 0.5
        after = (np.argwhere(out == 1).mean(0) + 0.5) * scale
        np.testing.assert_allclose(after, before, atol=0.6)

    def test_label_resampling_invents_no_class(self):
        rng = np.random.default_rng(1)
        label = rng.choice(np.array([0, 2, 5], np.uint8), size=(9, 9, 9))
        out = preprocess.resample_label(label, (13, 7, 11))
        self.assertLessEqual(set(np.unique(out).tolist()), {0, 2, 5})

    def test_zscore_inside_mask(self):
        rng = np.random.default_rng(2)
        image = rng.normal(40, 7, (10, 10, 10, 2)).astype(np.float32)
        mask = np.zeros((10, 10, 10), bool)
        mask[2:8, 1:9, 3:10] = True
        out = preprocess.zscore_nonzero(image, mask)
        for c in range(2):
            self.assertAlmostEqual(float(out[..., c][mask].mean()), 0.0, places=5)
            self.assertAlmostEqual(float(out[..., c][mask].std()), 1.0, places=4)
        self.assertEqual(float(np.abs(out[~mask]).max()), 0.0)

    def test_crop_to_nonzero(self):
        image = np.zeros((10, 11, 12, 2), np.float32)
        image[2:5, 3:4, 6:11, 1] = 1.0
        self.assertEqual(preprocess.nonzero_bbox(image), ((2, 5), (3, 4), (6, 11)))

    def test_preprocess_case_meta(self):
        image, label = fixtures.make_case(np.random.default_rng(3), (12, 12, 8), 1)
        out, lab, meta = preprocess.preprocess_case(image, label, (1, 1, 2), (1, 1, 1))
        self.assertEqual(meta["crop_box"], [[2, 10], [2, 10], [2, 6]])
        self.assertEqual(out.shape, (8, 8, 8, 1))
        self.assertEqual(lab.shape, (8, 8, 8))


class CacheTest(absltest.TestCase):

    def setUp(self):
        super().setUp()
        self.root = self.create_tempdir().full_path
        fixtures.write_tiny_msd(self.root, spacings=[(1, 1, 1), (1, 1, 2), (1, 1, 2)])
        self.ds = msd.read_dataset(self.root)
        self.cache_dir = os.path.join(self.root, "cache")

    def test_median_spacing_default(self):
        _, _, spacing = cache.prepare_dataset(self.ds, self.cache_dir)
        self.assertEqual(spacing, (1.0, 1.0, 2.0))

    def test_second_run_reuses(self):
        cases, folder, _ = cache.prepare_dataset(self.ds, self.cache_dir)
        mtime = os.stat(os.path.join(folder, "case_000_image.npy")).st_mtime_ns
        again, folder2, _ = cache.prepare_dataset(self.ds, self.cache_dir)
        self.assertEqual(folder, folder2)
        self.assertEqual(os.stat(os.path.join(folder, "case_000_image.npy")).st_mtime_ns, mtime)
        self.assertIsInstance(again[0].image, np.memmap)
        np.testing.assert_array_equal(again[1].label, cases[1].label)

    def test_changed_settings_use_another_folder(self):
        _, folder_a, _ = cache.prepare_dataset(self.ds, self.cache_dir)
        _, folder_b, _ = cache.prepare_dataset(self.ds, self.cache_dir, spacing=(2, 2, 2))
        _, folder_c, _ = cache.prepare_dataset(self.ds, self.cache_dir, image_order=1)
        self.assertLen({folder_a, folder_b, folder_c}, 3)

    def test_interrupted_case_is_recomputed(self):
        _, folder, _ = cache.prepare_dataset(self.ds, self.cache_dir)
        # An interruption between the arrays and the metadata leaves no .json: untrusted.
        os.remove(os.path.join(folder, "case_001.json"))
        with open(os.path.join(folder, "case_001_image.npy"), "wb") as f:
            f.write(b"half")
        cases, _, _ = cache.prepare_dataset(self.ds, self.cache_dir)
        self.assertEqual(cases[1].image.shape[-1], 2)
        self.assertTrue(os.path.exists(os.path.join(folder, "case_001.json")))

    def test_changed_source_is_recomputed(self):
        cases, folder, _ = cache.prepare_dataset(self.ds, self.cache_dir)
        image, label = fixtures.make_case(np.random.default_rng(9))
        path = self.ds.cases[0].image_path
        fixtures.write_nifti(path, image * 3.0 + 1000.0)
        os.utime(path, ns=(1, 1))  # Make sure the fingerprint changes even on coarse clocks.
        again, _, _ = cache.prepare_dataset(self.ds, self.cache_dir)
        self.assertFalse(np.array_equal(again[0].image, cases[0].image))

    def test_foreground_locations_cached(self):
        cases, _, _ = cache.prepare_dataset(self.ds, self.cache_dir)
        for case in cases:
            present = sorted(set(np.unique(case.label).tolist()) - {0})
            self.assertEqual(sorted(case.fg_locations), present)
            for value, coords in case.fg_locations.items():
                self.assertTrue(np.all(case.label[tuple(coords.T)] == value))


if __name__ == "__main__":
    absltest.main()
