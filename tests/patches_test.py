"""Patch sampling, (seed, step) determinism and case splits."""

import json
import os
import types

import numpy as np
from absl.testing import absltest

from jaxnas import inference
from jaxnas.data import msd
from jaxnas.data import patches


def _case(shape=(30, 28, 26), seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=shape + (1,)).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[3:6, 20:23, 4:6] = 1  # Small foreground far from the centre.
    fg = {1: np.argwhere(label == 1).astype(np.int32)}
    return types.SimpleNamespace(image=image, label=label, fg_locations=fg)


class PatchTest(absltest.TestCase):

    def test_shapes_and_dtypes(self):
        batch = patches.make_batch([_case()], seed=0, step=0, batch_size=3,
                                   patch_size=(16, 16, 8), fg_fraction=0.33)
        self.assertEqual(batch["image"].shape, (3, 16, 16, 8, 1))
        self.assertEqual(batch["label"].shape, (3, 16, 16, 8))
        self.assertEqual(batch["image"].dtype, np.float32)
        self.assertEqual(batch["label"].dtype, np.int32)

    def test_seed_step_determinism(self):
        cases = [_case(seed=0), _case(seed=1)]
        kwargs = dict(batch_size=2, patch_size=(8, 8, 8), fg_fraction=0.5)
        a = patches.make_batch(cases, seed=3, step=7, **kwargs)
        b = patches.make_batch(cases, seed=3, step=7, **kwargs)
        c = patches.make_batch(cases, seed=3, step=8, **kwargs)
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
        self.assertFalse(np.array_equal(a["image"], c["image"]))

    def test_intensity_augmentation(self):
        cases = [_case(seed=0), _case(seed=1)]
        kwargs = dict(seed=3, batch_size=2, patch_size=(8, 8, 8), fg_fraction=0.5)
        changed = 0
        for step in range(20):
            plain = patches.make_batch(cases, step=step, **kwargs)
            aug = patches.make_batch(cases, step=step, augment=True, **kwargs)
            again = patches.make_batch(cases, step=step, augment=True, **kwargs)
            np.testing.assert_array_equal(aug["image"], again["image"])  # (seed, step)
            self.assertEqual(aug["image"].dtype, np.float32)
            self.assertTrue(np.all(np.isfinite(aug["image"])))
            # The first patch is cut before any augmentation draw: same crop, same label.
            np.testing.assert_array_equal(aug["label"][0], plain["label"][0])
            changed += not np.array_equal(aug["image"][0], plain["image"][0])
        self.assertBetween(changed, 5, 20)  # each transform fires with p 0.15-0.3
        rng = np.random.default_rng(0)
        patch = np.linspace(-1, 1, 64, dtype=np.float32).reshape(4, 4, 4, 1)
        for _ in range(50):
            out = patches.augment_intensity(rng, patch)
            self.assertEqual(out.shape, patch.shape)
        np.testing.assert_array_equal(patch, np.linspace(-1, 1, 64).reshape(4, 4, 4, 1)
                                      .astype(np.float32))  # the input is not modified

    def test_spatial_augmentation(self):
        cases = [_case(seed=0), _case(seed=1)]
        kwargs = dict(seed=3, batch_size=2, patch_size=(12, 10, 8), fg_fraction=0.5)
        changed = 0
        for step in range(30):
            aug = patches.make_batch(cases, step=step, augment_spatial=True, **kwargs)
            again = patches.make_batch(cases, step=step, augment_spatial=True, **kwargs)
            np.testing.assert_array_equal(aug["image"], again["image"])  # (seed, step)
            np.testing.assert_array_equal(aug["label"], again["label"])
            self.assertEqual(aug["image"].shape, (2, 12, 10, 8, 1))
            self.assertTrue(set(np.unique(aug["label"])) <= {0, 1})  # nearest: no new labels
            plain = patches.make_batch(cases, step=step, **kwargs)
            # Patch 0 is cut before its transform is drawn: unchanged unless one fires.
            changed += not np.array_equal(aug["image"][0], plain["image"][0])
        self.assertBetween(changed, 4, 20)  # rotation or scaling: p 0.36 per patch
        # The identity transform resamples exactly the plain crop (linear at grid points).
        case, start = cases[0], np.array([3, 4, 5])
        image, label = patches.resample_patch(case.image, case.label, start, (12, 10, 8),
                                              np.eye(3))
        np.testing.assert_allclose(image, inference.extract_patch(case.image, start, (12, 10, 8)),
                                   atol=1e-5)
        np.testing.assert_array_equal(label, inference.extract_patch(case.label, start,
                                                                   (12, 10, 8)))
        # A 90-degree turn about z maps the crop onto itself turned (square x-y patch).
        turn = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        image, _ = patches.resample_patch(case.image, case.label, start, (10, 10, 8), turn)
        crop = inference.extract_patch(case.image, start, (10, 10, 8))
        np.testing.assert_allclose(image, np.rot90(crop, k=-1, axes=(0, 1)), atol=1e-5)

    def test_foreground_rate(self):
        # The foreground is tiny, so random crops rarely contain it: patches with
        # foreground come (almost) only from foreground-centred sampling.
        case = _case()

        def rate(fraction, batch_size):
            return np.mean([patches.make_batch(
                [case], seed=0, step=s, batch_size=batch_size, patch_size=(6, 6, 6),
                fg_fraction=fraction)["label"].reshape(batch_size, -1).any(-1)
                for s in range(400)])

        random_rate = rate(0.0, 1)
        self.assertLess(random_rate, 0.1)
        for fraction in (0.33, 1.0):
            for batch_size in (1, 2):
                expected = fraction + (1 - fraction) * random_rate
                self.assertAlmostEqual(rate(fraction, batch_size), expected, delta=0.06)

    def test_foreground_patch_contains_centre_voxel(self):
        rng = np.random.default_rng(0)
        case = _case()
        for _ in range(20):
            _, label = patches.sample_patch(rng, case.image, case.label, case.fg_locations,
                                            (8, 8, 8), foreground=True)
            self.assertTrue(label.any())

    def test_padding_when_volume_smaller(self):
        case = _case(shape=(5, 20, 3))
        case.label[:] = 0
        case.label[1, 2, 1] = 1
        case.fg_locations = {1: np.array([[1, 2, 1]], np.int32)}
        batch = patches.make_batch([case], seed=0, step=0, batch_size=2,
                                   patch_size=(8, 8, 8), fg_fraction=1.0)
        self.assertEqual(batch["image"].shape, (2, 8, 8, 8, 1))
        # Volume voxels all land in the patch: nonzero count is 5 * 8 * 3 per patch.
        self.assertEqual(int(np.count_nonzero(batch["image"][0])), 5 * 8 * 3)

    def test_extract_patch_matches_slicing(self):
        volume = np.arange(10 * 9 * 8).reshape(10, 9, 8)
        np.testing.assert_array_equal(inference.extract_patch(volume, (2, 1, 0), (4, 4, 4)),
                                      volume[2:6, 1:5, 0:4])


class SplitTest(absltest.TestCase):

    def test_kfold_disjoint_and_covering(self):
        ids = [f"c{i}" for i in range(11)]
        splits = patches.kfold_splits(ids, 5, seed=0)
        vals = [v for fold in splits for v in fold["val"]]
        self.assertCountEqual(vals, ids)
        for fold in splits:
            self.assertEmpty(set(fold["train"]) & set(fold["val"]))
            self.assertCountEqual(fold["train"] + fold["val"], ids)
        self.assertEqual(splits, patches.kfold_splits(list(reversed(ids)), 5, seed=0))

    def test_bilevel_split(self):
        theta, alpha = patches.bilevel_split([f"c{i}" for i in range(7)], seed=0)
        self.assertEmpty(set(theta) & set(alpha))
        self.assertLen(theta + alpha, 7)
        self.assertGreaterEqual(min(len(theta), len(alpha)), 3)

    def test_splits_file_saved_then_reused(self):
        workdir = self.create_tempdir().full_path
        path = os.path.join(workdir, "splits.json")
        ids = [f"c{i}" for i in range(6)]
        first = patches.load_or_make_splits(path, ids, 3, seed=0)
        self.assertEqual(json.load(open(path)), first)
        self.assertEqual(patches.load_or_make_splits(path, ids, 3, seed=99), first)

    def test_too_few_cases_for_the_folds_is_one_clear_error(self):
        workdir = self.create_tempdir().full_path
        ids = [f"c{i}" for i in range(4)]
        with self.assertRaises(msd.DataError) as ctx:
            patches.load_or_make_splits(os.path.join(workdir, "splits.json"), ids, 5)
        self.assertIn("4 training cases", str(ctx.exception))
        self.assertIn("--num_folds", str(ctx.exception))
        # 3 cases still make a search: 3 folds of 2 training cases (1 Theta, 1 alpha).
        three = patches.load_or_make_splits(os.path.join(workdir, "s3.json"), ids[:3], 3)
        theta, alpha = patches.bilevel_split(three[0]["train"])
        self.assertLen(theta, 1)
        self.assertLen(alpha, 1)

    def test_bad_user_splits_file(self):
        workdir = self.create_tempdir().full_path
        user = os.path.join(workdir, "mine.json")
        with open(user, "w") as f:
            json.dump([{"train": ["c0", "zz"], "val": ["c1"]}], f)
        with self.assertRaises(msd.DataError) as ctx:
            patches.load_or_make_splits(os.path.join(workdir, "splits.json"),
                                        ["c0", "c1"], 2, user_file=user)
        self.assertIn(user, str(ctx.exception))
        self.assertIn("zz", str(ctx.exception))


if __name__ == "__main__":
    absltest.main()
