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

    def test_ct_channel_uses_the_datasets_statistics(self):
        # Two CT cases with the same tissue (40 HU) and different amounts of air: the tissue
        # must come out equal in both (a per-case z-score would not give that), clipped
        # to the statistics' range, with no zeroing outside a nonzero mask.
        stats = {"clip": [-100.0, 300.0], "mean": 50.0, "std": 20.0}
        rng = np.random.default_rng(5)
        outs = []
        for air in (0.2, 0.7):
            ct = np.where(rng.random((10, 10, 10)) < air, -1000.0, 40.0)
            ct[0, 0, 0], ct[1, 0, 0] = 0.0, 500.0  # water, and above the clip range
            mr = rng.normal(100, 10, (10, 10, 10))
            mr[:2] = 0.0
            image = np.stack([ct, mr], -1).astype(np.float32)
            mask = np.any(image != 0, -1)
            out = preprocess.normalize(image, mask, [stats, None])
            self.assertAlmostEqual(float(out[0, 0, 0, 0]), -2.5)
            self.assertAlmostEqual(float(out[1, 0, 0, 0]), 12.5)  # (300 - 50) / 20
            self.assertAlmostEqual(float(out[..., 0].min()), -7.5)  # (-100 - 50) / 20
            np.testing.assert_allclose(out[..., 1], preprocess.zscore_nonzero(image, mask)[..., 1])
            outs.append(out[..., 0][ct == 40.0])
        np.testing.assert_allclose(outs[0][0], -0.5)
        np.testing.assert_allclose(outs[1], outs[0][0])
        with self.assertRaisesRegex(ValueError, "for 1 channels, the image has 2"):
            preprocess.normalize(image, mask, [stats])

    def test_intensity_stats_are_foreground_percentiles(self):
        samples = np.arange(1001.0)
        stats = preprocess.intensity_stats(samples)
        np.testing.assert_allclose(stats["clip"], [5.0, 995.0])
        self.assertAlmostEqual(stats["mean"], 500.0)
        self.assertAlmostEqual(stats["std"], float(samples.std()))
        image = np.stack([np.arange(27.0).reshape(3, 3, 3)] * 2, -1)
        label = np.zeros((3, 3, 3), np.uint8)
        label[1] = 2
        fg = preprocess.foreground_intensities(image, label, samples=5)
        self.assertEqual(fg.shape, (5, 2))
        self.assertTrue(np.all((fg >= 9) & (fg < 18)))
        with self.assertRaisesRegex(ValueError, "no foreground"):
            preprocess.intensity_stats(np.zeros(0))
        self.assertTrue(preprocess.is_ct(" ct") and not preprocess.is_ct("CTA"))

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


class CtCacheTest(absltest.TestCase):

    def setUp(self):
        super().setUp()
        self.root = self.create_tempdir().full_path
        fixtures.write_tiny_msd(self.root, modalities=["CT", "T2"])
        self.ds = msd.read_dataset(self.root)
        self.cache_dir = os.path.join(self.root, "cache")

    def test_ct_statistics_from_the_foreground_are_kept_and_used(self):
        cases, folder, spacing = cache.prepare_dataset(self.ds, self.cache_dir)
        intensity = cache.intensity_of(folder)
        self.assertIsNone(intensity[1])
        fg = np.concatenate([msd.load_case(self.ds, c)[0][msd.load_case(self.ds, c)[1] > 0, 0]
                             for c in self.ds.cases])
        self.assertAlmostEqual(intensity[0]["mean"], float(fg.mean()), places=3)
        self.assertAlmostEqual(intensity[0]["std"], float(fg.std()), places=3)
        stats_file = os.path.join(self.cache_dir, "Tiny-intensity.json")
        mtime = os.stat(stats_file).st_mtime_ns
        _, folder2, _ = cache.prepare_dataset(self.ds, self.cache_dir)
        self.assertEqual(folder2, folder)
        self.assertEqual(os.stat(stats_file).st_mtime_ns, mtime)  # not recomputed
        # Prediction with the run's plan preprocesses exactly as training did.
        from jaxnas import prediction
        image, _, _ = msd.load_case(self.ds, self.ds.cases[1])
        plan = {"target_spacing": spacing, "num_channels": 2, "num_classes": 3,
                "patch_size": [8, 8, 8], "intensity": intensity}
        image_pp, _ = prediction.preprocess_for_inference(image, (1, 1, 1), plan)
        np.testing.assert_allclose(image_pp, cases[1].image, atol=1e-6)
        without, _ = prediction.preprocess_for_inference(image, (1, 1, 1),
                                                         {**plan, "intensity": None})
        self.assertGreater(float(np.abs(without[..., 0] - cases[1].image[..., 0]).max()), 0.1)
        with self.assertRaisesRegex(msd.DataError, "intensity has 1 channels"):
            prediction.check_plan({**plan, "intensity": intensity[:1]})


if __name__ == "__main__":
    absltest.main()
