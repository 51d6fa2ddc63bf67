"""Tests for jaxnas.data.demo: MSD layout, consistent pairs, labels, determinism, no overwrite.

Builds use 6 mm spacing (about 30x40x33 voxels) and 3 cases, so each takes well under a second.
"""

import contextlib
import io
import json
import os
import shutil
import tempfile

import nibabel as nib
import numpy as np
from absl.testing import absltest
from scipy import ndimage

from jaxnas.data import demo

SPACING = 6.0
NUM_CASES = 3
MSD_KEYS = {
    "name",
    "description",
    "reference",
    "licence",
    "tensorImageSize",
    "modality",
    "labels",
    "numTraining",
    "numTest",
    "training",
    "test",
}


def _all_files(root):
    """Relative paths of all files under root, sorted."""
    found = []
    for folder, _, names in os.walk(root):
        found += [os.path.relpath(os.path.join(folder, n), root) for n in names]
    return sorted(found)


def _read(root, rel):
    with open(os.path.join(root, rel), "rb") as f:
        return f.read()


class BuildDemoTest(absltest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp()
        cls.dirs = {}
        for key, seed in (("a", 0), ("b", 0), ("c", 1)):
            cls.dirs[key] = os.path.join(cls.tmp, key)
            demo.build_demo(cls.dirs[key], num_cases=NUM_CASES, seed=seed, spacing=SPACING)
        with open(os.path.join(cls.dirs["a"], "dataset.json")) as f:
            cls.dataset = json.load(f)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)
        super().tearDownClass()

    def _cases(self):
        root = self.dirs["a"]
        for entry in self.dataset["training"]:
            yield (
                nib.load(os.path.join(root, entry["image"])),
                nib.load(os.path.join(root, entry["label"])),
            )

    def test_dataset_json_is_msd(self):
        ds = self.dataset
        self.assertEqual(set(ds), MSD_KEYS)
        self.assertEqual(ds["tensorImageSize"], "3D")
        self.assertEqual(ds["modality"], {"0": "T1"})
        self.assertEqual(ds["labels"], {"0": "background", "1": "grey matter", "2": "white matter"})
        self.assertEqual((ds["numTraining"], ds["numTest"], ds["test"]), (NUM_CASES, 0, []))
        self.assertLen(ds["training"], NUM_CASES)
        self.assertIn("ONE template", ds["description"])
        for i, entry in enumerate(ds["training"]):
            self.assertEqual(
                entry,
                {
                    "image": f"./imagesTr/demo_{i:03d}.nii.gz",
                    "label": f"./labelsTr/demo_{i:03d}.nii.gz",
                },
            )
            for path in entry.values():
                self.assertTrue(os.path.isfile(os.path.join(self.dirs["a"], path)))
        with open(os.path.join(self.dirs["a"], "README.md")) as f:
            readme = f.read()
        self.assertIn("same anatomy", readme)
        self.assertIn("floor", readme)

    def test_no_stray_files(self):
        expected = {"dataset.json", "README.md"} | {
            os.path.normpath(p) for e in self.dataset["training"] for p in e.values()
        }
        self.assertEqual(set(_all_files(self.dirs["a"])), expected)

    def test_pairs_share_shape_and_affine(self):
        lo, hi = (f * SPACING for f in demo.SPACING_JITTER)
        for image, label in self._cases():
            self.assertLen(image.shape, 3)
            self.assertEqual(image.shape, label.shape)
            np.testing.assert_array_equal(image.affine, label.affine)
            np.testing.assert_array_equal(image.affine[:3, :3], np.diag(np.diag(image.affine)[:3]))
            zooms = np.array(image.header.get_zooms())
            self.assertTrue(np.all((zooms >= lo - 1e-4) & (zooms <= hi + 1e-4)), zooms)
            self.assertEqual(image.get_data_dtype(), np.float32)
            self.assertEqual(label.get_data_dtype(), np.uint8)
            self.assertTrue(all(10 <= n <= 45 for n in image.shape), image.shape)

    def test_labels_and_background(self):
        for image, label in self._cases():
            x = image.get_fdata(dtype=np.float32)
            y = np.asarray(label.dataobj)
            self.assertEqual(set(np.unique(y).tolist()), {0, 1, 2})
            self.assertTrue(np.all(np.isfinite(x)))
            self.assertTrue(np.all(x[y > 0] != 0), "foreground must lie inside the nonzero image")
            self.assertGreater(np.mean(x == 0), 0.3)  # Background stays exactly 0.
            box = ndimage.find_objects((x != 0).astype(np.int32))[0]
            self.assertEqual(int(np.sum(y[box] > 0)), int(np.sum(y > 0)))

    def test_same_seed_is_byte_identical(self):
        files = _all_files(self.dirs["a"])
        self.assertEqual(files, _all_files(self.dirs["b"]))
        for rel in files:
            self.assertEqual(_read(self.dirs["a"], rel), _read(self.dirs["b"], rel), rel)

    def test_other_seed_differs(self):
        for entry in self.dataset["training"]:
            for rel in entry.values():
                self.assertNotEqual(_read(self.dirs["a"], rel), _read(self.dirs["c"], rel), rel)

    def test_refuses_to_overwrite(self):
        root = self.dirs["a"]
        before = {rel: _read(root, rel) for rel in _all_files(root)}
        with self.assertRaises(FileExistsError):
            demo.build_demo(root, num_cases=1, spacing=SPACING)
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            status = demo.main(["--out", root, "--num_cases", "1", "--spacing", str(SPACING)])
        self.assertNotEqual(status, 0)
        self.assertIn("exists", stderr.getvalue())
        self.assertEqual({rel: _read(root, rel) for rel in _all_files(root)}, before)

    def test_overwrite_replaces_and_removes_stale_cases(self):
        root = os.path.join(self.tmp, "overwrite")
        shutil.copytree(self.dirs["a"], root)
        demo.build_demo(root, num_cases=1, seed=0, spacing=SPACING, overwrite=True)
        with open(os.path.join(root, "dataset.json")) as f:
            self.assertEqual(json.load(f)["numTraining"], 1)
        self.assertEqual(sorted(os.listdir(os.path.join(root, "imagesTr"))), ["demo_000.nii.gz"])
        # Case 0 depends only on (seed, 0), not on num_cases.
        rel = "imagesTr/demo_000.nii.gz"
        self.assertEqual(_read(root, rel), _read(self.dirs["a"], rel))


class HemispheresTaskTest(absltest.TestCase):
    """The spatial task: the tissue cases with grey matter split at the template midline."""

    def test_same_cases_split_by_side(self):
        root = self.create_tempdir().full_path
        tissue, spatial = os.path.join(root, "t"), os.path.join(root, "s")
        demo.build_demo(tissue, num_cases=2, spacing=SPACING)
        demo.build_demo(spatial, num_cases=2, spacing=SPACING, task="hemispheres")
        with open(os.path.join(spatial, "dataset.json")) as f:
            dataset = json.load(f)
        self.assertEqual(dataset["labels"], demo.SPATIAL_LABELS)
        for entry in dataset["training"]:
            a = np.asarray(nib.load(os.path.join(tissue, entry["label"])).dataobj)
            b = np.asarray(nib.load(os.path.join(spatial, entry["label"])).dataobj)
            np.testing.assert_array_equal(  # same images, same transforms
                nib.load(os.path.join(tissue, entry["image"])).get_fdata(),
                nib.load(os.path.join(spatial, entry["image"])).get_fdata())
            np.testing.assert_array_equal(a == 1, (b == 1) | (b == 2))  # GM split in two
            np.testing.assert_array_equal(a == 2, b == 3)
            # The two sides are both present and lie on opposite halves of the x axis.
            xs = [np.nonzero(b == k)[0].mean() for k in (1, 2)]
            self.assertGreater(abs(xs[0] - xs[1]), a.shape[0] / 6)
        floor = demo.median_floor_dice(
            nib.load(os.path.join(spatial, entry["image"])).get_fdata(), b, 4)
        self.assertLess(max(floor[1], floor[2]), 0.7)  # intensity cannot tell the sides
        with self.assertRaises(ValueError):
            demo.build_demo(os.path.join(root, "x"), num_cases=1, task="lobes")


class PureFunctionsTest(absltest.TestCase):
    def test_smooth_field_matches_zoom(self):
        coarse = np.random.default_rng(0).normal(size=(6, 5, 4))
        got = demo.smooth_field(coarse, (17, 11, 9))
        want = ndimage.zoom(coarse, (17 / 6, 11 / 5, 9 / 4), order=3)
        np.testing.assert_allclose(got, want, atol=1e-10)

    def test_random_deformation_is_seeded_and_bounded(self):
        shape = (12, 10, 8)
        a = demo.random_deformation(np.random.default_rng((3, 1)), shape)
        b = demo.random_deformation(np.random.default_rng((3, 1)), shape)
        np.testing.assert_array_equal(a, b)
        self.assertEqual(a.shape, (3, *shape))
        self.assertLess(np.abs(a).max(), 10.0)  # mm; coarse values are clipped to 6 mm.

    def test_identity_warp_reads_the_template(self):
        affine = np.diag([2.0, 2.0, 2.0, 1.0])
        volume = np.random.default_rng(0).random((6, 5, 4)).astype(np.float32)
        coords = demo.sampling_coordinates(
            volume.shape, affine, affine, np.eye(3), np.zeros(3), np.zeros((3, *volume.shape))
        )
        np.testing.assert_allclose(demo.warp(volume, coords), volume, atol=1e-6)

    def test_labels_from_probs(self):
        gm = np.array([0.1, 0.6, 0.3, 0.9])
        wm = np.array([0.1, 0.3, 0.6, 0.0])
        mask = np.array([True, True, True, False])
        np.testing.assert_array_equal(demo.labels_from_probs(gm, wm, mask), [0, 1, 2, 0])

    def test_intensity_augment_keeps_background_zero(self):
        image = np.zeros((8, 8, 8), np.float32)
        image[2:6, 2:6, 2:6] = 100.0
        mask = image > 0
        out = demo.intensity_augment(np.random.default_rng(0), image, mask)
        self.assertEqual(out.dtype, np.float32)
        self.assertTrue(np.all(out[~mask] == 0) and np.all(out[mask] > 0))

    def test_median_floor_is_perfect_on_separable_intensities(self):
        label = np.repeat(np.array([0, 1, 2], np.uint8), 10)
        image = np.where(label == 0, 5.0, np.where(label == 1, 50.0, 90.0)).astype(np.float32)
        np.testing.assert_allclose(demo.median_floor_dice(image, label), [1.0, 1.0, 1.0])


if __name__ == "__main__":
    absltest.main()
