"""Reading MSD folders and the clear errors for each kind of bad input."""

import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile

import nibabel as nib
import numpy as np
from absl.testing import absltest

from jaxnas.data import cache
from jaxnas.data import msd
from tests import fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ReadDatasetTest(absltest.TestCase):

    def setUp(self):
        super().setUp()
        self.root = self.create_tempdir().full_path
        fixtures.write_tiny_msd(self.root)

    def test_reads_fields_and_resolves_paths(self):
        ds = msd.read_dataset(self.root)
        self.assertEqual(ds.modalities, ("mod0", "mod1"))
        self.assertEqual(ds.labels, {0: "background", 1: "outer", 2: "core"})
        self.assertEqual([c.case_id for c in ds.cases], ["case_000", "case_001", "case_002"])
        self.assertEqual(ds.cases[0].image_path,
                         os.path.join(self.root, "imagesTr", "case_000.nii.gz"))
        self.assertNotIn("._junk", " ".join(c.image_path for c in ds.cases))

    def test_loads_channels_last(self):
        ds = msd.read_dataset(self.root)
        image, label, header = msd.load_case(ds, ds.cases[0])
        self.assertEqual(image.shape, (12, 12, 8, 2))
        self.assertEqual(image.dtype, np.float32)
        self.assertEqual(label.dtype, np.uint8)
        self.assertEqual(header.spacing, (1.0, 1.0, 1.0))

    def test_nnunet_v2_label_and_channel_names(self):
        meta = json.load(open(os.path.join(self.root, "dataset.json")))
        meta.pop("modality")
        meta["channel_names"] = {"0": "T1", "1": "T2"}
        meta["labels"] = {"background": 0, "outer": 1, "core": 2}
        fixtures.write_json(os.path.join(self.root, "dataset.json"), meta)
        ds = msd.read_dataset(self.root)
        self.assertEqual(ds.labels[2], "core")
        self.assertEqual(ds.modalities, ("T1", "T2"))


class BadInputTest(absltest.TestCase):
    """Each bad input raises one DataError naming the file and the problem."""

    def setUp(self):
        super().setUp()
        self.root = self.create_tempdir().full_path
        self.meta = fixtures.write_tiny_msd(self.root)
        self.image1 = os.path.join(self.root, "imagesTr", "case_001.nii.gz")
        self.label1 = os.path.join(self.root, "labelsTr", "case_001.nii.gz")

    def assert_error(self, *fragments):
        with self.assertRaises(msd.DataError) as ctx:
            ds = msd.read_dataset(self.root)
            cache.prepare_dataset(ds, os.path.join(self.root, "cache"))
        for fragment in fragments:
            self.assertIn(fragment, str(ctx.exception))
        return str(ctx.exception)

    def rewrite_meta(self, **changes):
        meta = dict(self.meta, **changes)
        meta = {k: v for k, v in meta.items() if v is not None}
        fixtures.write_json(os.path.join(self.root, "dataset.json"), meta)

    def test_missing_dataset_json(self):
        os.remove(os.path.join(self.root, "dataset.json"))
        self.assert_error("dataset.json", "missing")

    def test_invalid_json(self):
        with open(os.path.join(self.root, "dataset.json"), "w") as f:
            f.write("{not json")
        self.assert_error("dataset.json", "not valid JSON")

    def test_missing_required_fields(self):
        for field in ("labels", "training", "modality"):
            with self.subTest(field=field):
                self.rewrite_meta(**{field: None})
                self.assert_error("dataset.json", f"'{field}'")

    def test_listed_file_missing(self):
        os.remove(self.label1)
        self.assert_error(self.label1, "missing")

    def test_not_nifti(self):
        with open(self.image1, "wb") as f:
            f.write(b"this is not an image at all" * 20)
        self.assert_error(self.image1, "not NIfTI")

    def test_truncated_gzip(self):
        data = open(self.image1, "rb").read()
        with open(self.image1, "wb") as f:
            f.write(data[: len(data) // 2])
        self.assert_error(self.image1, "truncated")

    def test_shape_mismatch(self):
        fixtures.write_nifti(self.label1, np.zeros((12, 12, 7), np.uint8))
        self.assert_error(self.label1, "shape")

    def test_affine_mismatch(self):
        label = np.asarray(nib.load(self.label1).dataobj)
        fixtures.write_nifti(self.label1, label, spacing=(1.0, 1.0, 2.0))
        self.assert_error(self.label1, "affine")

    def test_modality_count(self):
        self.rewrite_meta(modality={"0": "T1", "1": "T2", "2": "FLAIR"})
        self.assert_error("case_000.nii.gz", "has 2 modalities", "declares 3")

    def test_undeclared_label(self):
        label = np.asarray(nib.load(self.label1).dataobj).copy()
        label[0, 0, 0] = 7
        fixtures.write_nifti(self.label1, label)
        self.assert_error(self.label1, "[7]", "not declared")

    def test_nan_voxels(self):
        image = nib.load(self.image1).get_fdata(dtype=np.float32)
        image[3, 3, 3, 0] = np.nan
        fixtures.write_nifti(self.image1, image)
        self.assert_error(self.image1, "NaN")

    def test_all_zero_image(self):
        fixtures.write_nifti(self.image1, np.zeros((12, 12, 8, 2), np.float32))
        self.assert_error(self.image1, "all zero")

    def test_error_keeps_earlier_cache(self):
        ds = msd.read_dataset(self.root)
        cache.prepare_dataset(ds, os.path.join(self.root, "cache"))
        image = nib.load(self.image1).get_fdata(dtype=np.float32)
        image[0, 0, 0, 0] = np.inf
        fixtures.write_nifti(self.image1, image)
        self.assert_error(self.image1, "NaN/Inf")
        folder = os.listdir(os.path.join(self.root, "cache"))[0]
        self.assertTrue(os.path.exists(
            os.path.join(self.root, "cache", folder, "case_000_image.npy")))


class CommandLineErrorTest(absltest.TestCase):
    """The CLI prints one clear line and exits non-zero: no library traceback."""

    def run_cli(self, cwd, data_dir):
        workdir = tempfile.mkdtemp()
        env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
        result = subprocess.run(
            [sys.executable, "-m", "jaxnas.main", f"--data_dir={data_dir}",
             f"--workdir={workdir}"], cwd=cwd, env=env, capture_output=True, text=True,
            timeout=120)
        shutil.rmtree(workdir)
        return result

    def test_bad_data_dir_from_root_and_experiments(self):
        bad = self.create_tempdir().full_path
        fixtures.write_tiny_msd(bad)
        truncated = os.path.join(bad, "imagesTr", "case_002.nii.gz")
        with gzip.open(truncated, "rb") as f:
            head = f.read(400)
        with gzip.open(truncated, "wb") as f:
            f.write(head)
        for cwd in (ROOT, os.path.join(ROOT, "experiments")):
            with self.subTest(cwd=cwd):
                result = self.run_cli(cwd, bad)
                self.assertNotEqual(result.returncode, 0)
                self.assertIn("jaxnas: error:", result.stderr)
                self.assertIn(truncated, result.stderr)
                self.assertNotIn("Traceback", result.stderr)

    def test_missing_folder(self):
        result = self.run_cli(ROOT, "/nonexistent/task")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("/nonexistent/task: no such folder", result.stderr)
        self.assertNotIn("Traceback", result.stderr)


if __name__ == "__main__":
    absltest.main()
