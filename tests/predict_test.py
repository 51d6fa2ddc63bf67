"""Prediction NIfTI in / NIfTI out: grids, headers, channel layouts, errors, no overwrite."""

import os

import nibabel as nib
import numpy as np
from absl.testing import absltest

from jaxnas import prediction
from jaxnas.data import preprocess
from jaxnas.data.msd import DataError
from jaxnas.io import pictures
from jaxnas.modes import predict

SHAPE = (20, 18, 14)
SPACING = (1.0, 1.5, 2.5)
HEAD = (slice(3, 17), slice(2, 15), slice(2, 12))  # The nonzero region.


def _rotation(a, b):
    ca, sa, cb, sb = np.cos(a), np.sin(a), np.cos(b), np.sin(b)
    rz = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cb, -sb], [0, sb, cb]])
    return rz @ rx


AFFINE = np.eye(4)
AFFINE[:3, :3] = _rotation(0.3, -0.2) @ np.diag(SPACING)
AFFINE[:3, 3] = (-12.5, 30.25, 7.0)

PLAN = {"target_spacing": [1.25, 1.25, 1.25], "image_order": 3, "num_channels": 1,
        "num_classes": 3, "patch_size": [8, 8, 8], "overlap": 0.5, "gaussian": True,
        "mirror": False, "batch_size": 4,
        "labels": {"0": "background", "1": "outer", "2": "core"}}


def make_case(seed=0):
    """(image (x, y, z) float32, label (x, y, z) uint8): a head with a two-class lesion."""
    rng = np.random.default_rng(seed)
    image = np.zeros(SHAPE, np.float32)
    label = np.zeros(SHAPE, np.uint8)
    image[HEAD] = 100.0 + rng.normal(0.0, 2.0, size=image[HEAD].shape)
    label[6:14, 5:12, 4:9] = 1
    label[8:12, 7:10, 5:8] = 2
    image[label == 1] += 100.0
    image[label == 2] += 200.0
    return image, label


def write_nifti(path, array, *, dtype=np.float32, slope=None):
    img = nib.Nifti1Image(np.asarray(array).astype(dtype), AFFINE)
    img.header.set_qform(AFFINE, code=1)  # scanner
    img.header.set_sform(AFFINE, code=2)  # aligned
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = b"jaxnas predict test"
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
    nib.save(img, path)
    return path


def one_hot(classes, k):
    return np.eye(k, dtype=np.float32)[classes]


def threshold_predictor(image, label, plan):
    """A predict_fn that finds `label` from normalised intensities of channel 0.

    Thresholds lie midway between the classes' median z-scores in the preprocessed image;
    zeros (outside the head, padding) are background.
    """
    image_pp, label_pp, _ = preprocess.preprocess_case(
        image, label, SPACING, plan["target_spacing"], image_order=plan["image_order"])
    ch = image_pp[..., 0]
    inside = np.any(image_pp != 0, axis=-1)
    z = [np.median(ch[(label_pp == k) & inside]) for k in range(3)]
    t1, t2 = (z[0] + z[1]) / 2, (z[1] + z[2]) / 2
    assert 0 < t1 < t2, (z, t1, t2)

    def predict_fn(x):
        ch = np.asarray(x)[..., 0]
        return one_hot(np.where(ch > t1, 1 + (ch > t2), 0), 3)

    return predict_fn


def dice(a, b):
    return 2.0 * np.sum(a & b) / max(1, np.sum(a) + np.sum(b))


class PureCoreTest(absltest.TestCase):

    def test_preprocess_image_matches_training(self):
        image, label = make_case()
        image = image[..., None]
        want_image, _, want_meta = preprocess.preprocess_case(image, label, SPACING,
                                                              PLAN["target_spacing"])
        got_image, got_meta = prediction.preprocess_for_inference(image, SPACING, PLAN)
        np.testing.assert_array_equal(got_image, want_image)
        self.assertEqual(got_meta, dict(want_meta, original_shape=list(SHAPE)))

    def test_restore_is_exact_without_resampling(self):
        image, label = make_case()
        plan = dict(PLAN, target_spacing=list(SPACING))
        _, label_pp, meta = preprocess.preprocess_case(image[..., None], label, SPACING,
                                                       SPACING)
        meta["original_shape"] = list(SHAPE)
        probs = prediction.restore_to_original(one_hot(label_pp, 3), meta)
        np.testing.assert_array_equal(probs.argmax(-1), label)
        fn = threshold_predictor(image[..., None], label, plan)
        labels, _ = prediction.predict_case(fn, image[..., None], SPACING, plan)
        np.testing.assert_array_equal(labels, label)

    def test_restore_undoes_crop_and_resampling(self):
        image, label = make_case()
        _, label_pp, meta = preprocess.preprocess_case(image[..., None], label, SPACING,
                                                       PLAN["target_spacing"])
        self.assertNotEqual(meta["shape"], meta["cropped_shape"])
        meta["original_shape"] = list(SHAPE)
        restored = prediction.restore_to_original(one_hot(label_pp, 3), meta).argmax(-1)
        self.assertEqual(restored.shape, SHAPE)
        self.assertGreater(dice(restored > 0, label > 0), 0.95)
        for k in (1, 2):
            self.assertGreater(dice(restored == k, label == k), 0.9, k)

    def test_predict_case_overlays_label(self):
        image, label = make_case()
        fn = threshold_predictor(image[..., None], label, PLAN)
        for mirror in (False, True):
            labels, probs = prediction.predict_case(fn, image[..., None], SPACING,
                                                 dict(PLAN, mirror=mirror))
            self.assertEqual(labels.shape, SHAPE)
            self.assertEqual(labels.dtype, np.uint8)
            self.assertEqual(probs.shape, SHAPE + (3,))
            self.assertEqual(probs.dtype, np.float32)
            np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
            self.assertGreater(dice(labels > 0, label > 0), 0.95)
            self.assertGreater(dice(labels == 2, label == 2), 0.9)
            # Outside the crop box: background with probability 1.
            outside = np.ones(SHAPE, bool)
            outside[HEAD] = False
            np.testing.assert_array_equal(probs[outside][:, 0], 1.0)

    def test_window_flags_override_the_plan(self):
        plan = predict.override_plan(PLAN, {"overlap": 0.25, "mirror": True, "batch_size": 2})
        self.assertEqual((plan["overlap"], plan["mirror"], plan["batch_size"]), (0.25, True, 2))
        self.assertTrue(plan["gaussian"])  # not overridden: the plan's value stays
        with self.assertRaisesRegex(ValueError, "--eval_overlap"):
            predict.override_plan(PLAN, {"overlap": 1.5})
        with self.assertRaisesRegex(ValueError, "--eval_batch_size"):
            predict.override_plan(PLAN, {"batch_size": 0})

    def test_plan_errors(self):
        with self.assertRaisesRegex(DataError, "patch_size"):
            prediction.check_plan({k: v for k, v in PLAN.items() if k != "patch_size"})


class FilesTest(absltest.TestCase):

    def setUp(self):
        super().setUp()
        self.root = self.create_tempdir().full_path
        self.inputs = os.path.join(self.root, "in")
        self.out = os.path.join(self.root, "out")
        os.makedirs(self.inputs)
        self.image, self.label = make_case()
        self.fn = threshold_predictor(self.image[..., None], self.label, PLAN)

    def path(self, name, folder=None):
        return os.path.join(folder or self.inputs, name)

    def test_output_has_input_grid_and_header(self):
        # int16 with scaling: the labels written must not inherit the input's scaling.
        src = write_nifti(self.path("scan.nii.gz"), self.image / 2, dtype=np.int16, slope=2.0)
        labels_dir = os.path.join(self.root, "gt")
        os.makedirs(labels_dir)
        write_nifti(self.path("scan.nii.gz", labels_dir), self.label, dtype=np.uint8)
        written = predict.predict_files(self.fn, self.inputs, self.out, PLAN,
                                        save_probabilities=True, pictures=True,
                                        label_path=labels_dir)
        self.assertEqual(sorted(os.path.basename(p) for p in written),
                         ["scan.nii.gz", "scan.png", "scan_probs.nii.gz"])
        self.assertGreater(os.path.getsize(self.path("scan.png", self.out)), 1000)
        self.assertEqual([n for n in os.listdir(self.out) if n.startswith(".")], [])
        inp = nib.load(src)
        out = nib.load(self.path("scan.nii.gz", self.out))
        self.assertEqual(out.shape, SHAPE)
        self.assertEqual(out.get_data_dtype(), np.uint8)
        for get in (lambda i: i.affine, lambda i: i.get_qform(), lambda i: i.get_sform()):
            self.assertTrue(np.array_equal(get(out), get(inp)))
        for key in ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d",
                    "qoffset_x", "srow_x", "srow_y", "srow_z", "xyzt_units", "descrip"):
            np.testing.assert_array_equal(out.header[key], inp.header[key], err_msg=key)
        self.assertEqual(out.header.get_zooms(), inp.header.get_zooms())
        labels = np.asarray(out.dataobj)
        self.assertEqual(labels.dtype, np.uint8)
        self.assertLessEqual(set(np.unique(labels).tolist()), {0, 1, 2})
        self.assertGreater(dice(labels > 0, self.label > 0), 0.95)
        # Probabilities: k channels summing to 1, same grid.
        probs = nib.load(self.path("scan_probs.nii.gz", self.out))
        self.assertEqual(probs.shape, SHAPE + (3,))
        self.assertTrue(np.array_equal(probs.affine, inp.affine))
        p = probs.get_fdata(dtype=np.float32)
        np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(p.argmax(-1), labels)

    def test_4d_and_channel_files_agree(self):
        rng = np.random.default_rng(5)
        second = np.where(self.image > 0, 0.5 * self.image + rng.normal(0, 5, SHAPE), 0)
        stack = np.stack([self.image, second], axis=-1).astype(np.float32)
        plan = dict(PLAN, num_channels=2)
        dir4d, dirch = os.path.join(self.root, "4d"), os.path.join(self.root, "ch")
        os.makedirs(dir4d)
        os.makedirs(dirch)
        write_nifti(self.path("case_7.nii.gz", dir4d), stack)
        for c in range(2):
            write_nifti(self.path(f"case_7_{c:04d}.nii.gz", dirch), stack[..., c])
        self.assertEqual(predict.find_inputs(dirch, 2),
                         [("case_7", [self.path(f"case_7_{c:04d}.nii.gz", dirch)
                                      for c in range(2)])])
        # A single channel file brings its siblings.
        self.assertEqual(predict.find_inputs(self.path("case_7_0001.nii.gz", dirch), 2),
                         predict.find_inputs(dirch, 2))
        a, info_a = predict.load_input(predict.find_inputs(dir4d, 2)[0][1], 2)
        b, info_b = predict.load_input(predict.find_inputs(dirch, 2)[0][1], 2)
        np.testing.assert_array_equal(a, b)
        self.assertEqual(info_a.spacing, info_b.spacing)
        out4d, outch = os.path.join(self.root, "o4d"), os.path.join(self.root, "och")
        predict.predict_files(self.fn, dir4d, out4d, plan, pictures=False,
                              save_probabilities=True)
        predict.predict_files(self.fn, dirch, outch, plan, pictures=False,
                              save_probabilities=True)
        for name in ("case_7.nii.gz", "case_7_probs.nii.gz"):
            x, y = nib.load(self.path(name, out4d)), nib.load(self.path(name, outch))
            np.testing.assert_array_equal(np.asarray(x.dataobj), np.asarray(y.dataobj))
            self.assertTrue(np.array_equal(x.affine, y.affine))
            self.assertEqual(x.shape[:3], SHAPE)
        self.assertEqual(nib.load(self.path("case_7.nii.gz", out4d)).header["dim"][0], 3)

    def test_folder_grouping_and_hidden_files(self):
        write_nifti(self.path("b.nii.gz"), self.image)
        write_nifti(self.path("amos_0001.nii.gz"), self.image)  # No amos_0000: own case.
        write_nifti(self.path("c_0000.nii"), self.image)
        with open(self.path("._b.nii.gz"), "wb") as f:
            f.write(b"\x00\x05\x16\x07 macOS side-car")
        with open(self.path("notes.txt"), "w") as f:
            f.write("not an image")
        cases = predict.find_inputs(self.inputs, 1)
        self.assertEqual([c for c, _ in cases], ["amos_0001", "b", "c"])
        self.assertEqual(cases[2][1], [self.path("c_0000.nii")])

    def test_picture_without_label(self):
        path = os.path.join(self.root, "p.png")
        pictures.save_case_picture(path, self.image, self.label, None, 3, spacing=SPACING)
        self.assertGreater(os.path.getsize(path), 1000)
        self.assertEqual(pictures.foreground_centre(self.label), (10, 8, 6))

    def assert_error(self, fragment, fn, *args):
        with self.assertRaises(DataError) as ctx:
            fn(*args)
        self.assertIn(fragment, str(ctx.exception))
        return str(ctx.exception)

    def test_bad_inputs_name_the_file(self):
        missing = self.path("nope.nii.gz")
        self.assert_error(missing, predict.find_inputs, missing, 1)
        empty = os.path.join(self.root, "empty")
        os.makedirs(empty)
        with open(os.path.join(empty, "._x.nii.gz"), "wb") as f:
            f.write(b"junk")
        self.assert_error(empty, predict.find_inputs, empty, 1)
        txt = os.path.join(self.root, "x.txt")
        open(txt, "w").close()
        self.assert_error(txt, predict.find_inputs, txt, 1)

        def folder(name, files):
            d = os.path.join(self.root, name)
            os.makedirs(d)
            for fname, array in files.items():
                write_nifti(os.path.join(d, fname), array)
            return d

        # A case lacks a channel file.
        d = folder("lack", {"p_0000.nii.gz": self.image})
        self.assert_error(os.path.join(d, "p_0001.nii.gz"), predict.find_inputs, d, 2)
        # A channel beyond the model's.
        d = folder("extra", {f"p_000{c}.nii.gz": self.image for c in range(3)})
        self.assert_error(os.path.join(d, "p_0002.nii.gz"), predict.find_inputs, d, 2)
        # A 4D file with the wrong channel count; a 3D file where 2 channels are needed.
        d = folder("wrong4d", {"q.nii.gz": np.stack([self.image] * 3, -1)})
        msg = self.assert_error(os.path.join(d, "q.nii.gz"), predict.find_inputs, d, 2)
        self.assertIn("3 modalities", msg)
        d = folder("threed", {"r.nii.gz": self.image})
        self.assert_error(os.path.join(d, "r.nii.gz"), predict.find_inputs, d, 2)
        self.assert_error(os.path.join(d, "r.nii.gz"), predict.load_input,
                          [os.path.join(d, "r.nii.gz")], 2)
        self.assert_error(os.path.join(d, "gone.nii.gz"), predict.load_input,
                          [os.path.join(d, "gone.nii.gz")], 1)
        # Channel files on different grids.
        d = folder("shape", {"s_0000.nii.gz": self.image, "s_0001.nii.gz": self.image[:-1]})
        self.assert_error(os.path.join(d, "s_0001.nii.gz"), predict.find_inputs, d, 2)
        d = folder("affine", {"t_0000.nii.gz": self.image})
        img = nib.Nifti1Image(self.image, AFFINE @ np.diag([1, 1, 1.1, 1]))
        nib.save(img, os.path.join(d, "t_0001.nii.gz"))
        self.assert_error(os.path.join(d, "t_0001.nii.gz"), predict.find_inputs, d, 2)
        self.assert_error(os.path.join(d, "t_0001.nii.gz"), predict.load_input,
                          [os.path.join(d, "t_0000.nii.gz"), os.path.join(d, "t_0001.nii.gz")],
                          2)
        # Not NIfTI inside.
        d = os.path.join(self.root, "garbage")
        os.makedirs(d)
        with open(os.path.join(d, "g.nii.gz"), "wb") as f:
            f.write(b"not gzip at all")
        self.assert_error(os.path.join(d, "g.nii.gz"), predict.find_inputs, d, 1)
        # Voxel problems, found when loading.
        nan = self.image.copy()
        nan[5, 5, 5] = np.nan
        d = folder("nan", {"n.nii.gz": nan})
        msg = self.assert_error(os.path.join(d, "n.nii.gz"), predict.load_input,
                                [os.path.join(d, "n.nii.gz")], 1)
        self.assertIn("NaN", msg)
        d = folder("zero", {"z_0000.nii.gz": self.image, "z_0001.nii.gz": 0 * self.image})
        msg = self.assert_error(os.path.join(d, "z_0001.nii.gz"), predict.load_input,
                                predict.find_inputs(d, 2)[0][1], 2)
        self.assertIn("all zero", msg)
        # Header errors stop predict_files before anything is written.
        d = folder("mixed", {"a.nii.gz": self.image,
                             "b.nii.gz": np.stack([self.image] * 2, -1)})
        out = os.path.join(self.root, "mixed_out")
        self.assert_error(os.path.join(d, "b.nii.gz"), predict.predict_files, self.fn, d, out,
                          PLAN)
        self.assertFalse(os.path.exists(out))

    def test_existing_output_is_not_overwritten(self):
        write_nifti(self.path("scan.nii.gz"), self.image)
        os.makedirs(self.out)
        target = self.path("scan.nii.gz", self.out)
        with open(target, "wb") as f:
            f.write(b"keep me")
        msg = self.assert_error(target, predict.predict_files, self.fn, self.inputs, self.out,
                                PLAN)
        self.assertIn("--output", msg)
        with open(target, "rb") as f:
            self.assertEqual(f.read(), b"keep me")
        self.assertEqual(os.listdir(self.out), ["scan.nii.gz"])
        # Writing into the input folder is refused too.
        self.assert_error("input folder", predict.predict_files, self.fn, self.inputs,
                          self.inputs, PLAN)
        # Asked for explicitly, it is replaced.
        written = predict.predict_files(self.fn, self.inputs, self.out, PLAN, pictures=False,
                                        overwrite=True)
        self.assertEqual(written, [target])
        self.assertEqual(nib.load(target).shape, SHAPE)


if __name__ == "__main__":
    absltest.main()
