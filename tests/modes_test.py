"""train / evaluate / predict modes end to end on a tiny synthetic MSD task, and models.py."""

import dataclasses
import glob
import json
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
from absl.testing import absltest

from jaxnas import config as config_lib
from jaxnas import models
from jaxnas.io import artifacts
from jaxnas.modes import evaluate as evaluate_mode
from jaxnas.modes import predict as predict_mode
from jaxnas.modes import train as train_mode
from jaxnas.spaces import genotype as genotype_lib
from jaxnas.spaces.scnas import network
from tests import fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(data_dir, cache_dir, architecture, num_folds=2):
    config = config_lib.tiny()
    data = dataclasses.replace(config.data, data_dir=data_dir, cache_dir=cache_dir,
                               num_folds=num_folds)
    # tiny() trains with impl "xla": half the compile of the CPU "fast" forms (a 16^3
    # derived network's training step 23 against 43 s); the forms are tested in ops_test.
    assert config.search.impl == "xla"
    return dataclasses.replace(config, data=data, architecture=architecture)


class ModelsTest(absltest.TestCase):

    def test_random_genotype_is_seeded_and_uniform(self):
        a, b, c = (genotype_lib.random_genotype(s) for s in (3, 3, 4))
        self.assertEqual(a, b)
        index_a, index_c = (genotype_lib.genotype_to_indices(g) for g in (a, c))
        self.assertFalse(np.array_equal(index_a, index_c))
        self.assertGreater(len(np.unique(index_a)), 4)  # Draws from the whole op list.
        np.testing.assert_allclose(a["cells"]["reduction"][0]["probs"], 1 / 8, atol=1e-6)

    def test_describe_each_architecture(self):
        kw = dict(in_channels=1, num_classes=3, width=4)
        self.assertEqual(models.describe("uresnet", **kw)["kind"], "uresnet")
        self.assertEqual(models.describe("unet", **kw)["kind"], "unet")
        random = models.describe("random:7", **kw)
        self.assertEqual(random["source"], "random:7")
        path = os.path.join(self.create_tempdir().full_path, "genotype.json")
        genotype_lib.save_genotype(path, random["genotype"])
        from_file = models.describe(path, **kw)
        self.assertEqual(from_file["genotype"]["cells"], random["genotype"]["cells"])
        with self.assertRaisesRegex(ValueError, "genotype.json"):
            with open(path, "w") as f:
                f.write("{}")
            models.describe(path, **kw)

    def test_eval_program_compiled_ahead_serves_the_evaluation(self):
        # phases.compile_eval_program: the sliding window afterwards compiles nothing.
        from jaxnas import evaluation, phases  # noqa: PLC0415 (only this test needs them)
        from jaxnas.data import cache  # noqa: PLC0415
        config = config_lib.tiny()
        config = dataclasses.replace(
            config, data=dataclasses.replace(config.data, patch_size=(16, 16, 16)),
            eval=dataclasses.replace(config.eval, batch_size=2))
        model = models.build(models.describe("uresnet", in_channels=1, num_classes=3,
                                             width=4))
        params = model.init(jax.random.key(0))
        program = models._probabilities(model)
        before = program._cache_size()
        phases.compile_eval_program(config, model, params, channels=1)
        self.assertEqual(program._cache_size(), before + 1)
        rng = np.random.default_rng(0)
        case = cache.PreparedCase("c0", rng.normal(size=(20, 24, 18, 1)).astype(np.float32),
                                  rng.integers(0, 3, (20, 24, 18)).astype(np.int16), {}, {})
        evaluation.evaluate_cases(models.probabilities_fn(model, params), [case],
                                  num_classes=3, config=config)
        self.assertEqual(program._cache_size(), before + 1)

    def test_fixed_network_is_smaller_than_supernet(self):
        description = models.describe("random:1", in_channels=1, num_classes=3, width=8)
        fixed = models.build(description).cost((32, 32, 32))["params"]
        supernet = network.num_params(jax.eval_shape(
            lambda: network.init_network(jax.random.key(0), in_channels=1, num_classes=3,
                                         width=8)))
        self.assertLess(fixed, supernet / 3)

    def test_node_scale_reaches_the_derived_network(self):
        # Stride 1: no full-resolution stage, whose cost does not scale with node_scale.
        kw = dict(in_channels=1, num_classes=3, width=8, stem_stride=1)
        costs = [models.build(models.describe("random:1", node_scale=ns, **kw)).cost((32,) * 3)
                 for ns in (0.25, 0.5)]
        self.assertGreater(costs[1]["params"], 2 * costs[0]["params"])  # ~4x: c^2 terms
        self.assertGreater(costs[1]["gflops"], 2 * costs[0]["gflops"])

    def test_width_growth_reaches_the_derived_network_and_old_models_load_as_doubling(self):
        self.assertEqual(network.node_widths(16, 0.25, 3), (4, 12, 36, 108))
        kw = dict(in_channels=1, num_classes=3, width=8, stem_stride=1)
        doubling = models.describe("random:1", **kw)
        tripling = models.describe("random:1", width_growth=3, **kw)
        self.assertEqual(tripling["width_growth"], 3)
        costs = [models.build(d).cost((32,) * 3) for d in (doubling, tripling)]
        # Coarse levels hold most parameters: x3 per level gives several times as many.
        self.assertGreater(costs[1]["params"], 3 * costs[0]["params"])
        saved_before = {k: v for k, v in doubling.items() if k != "width_growth"}
        self.assertEqual(models.build(saved_before).cost((32,) * 3), costs[0])

    def test_deep_supervision_heads_train_and_old_models_load_without_them(self):
        kw = dict(in_channels=1, num_classes=3, width=8, stem_stride=2)
        plain = models.describe("random:1", **kw)
        saved_before = {k: v for k, v in plain.items() if k != "deep_supervision"}
        for description in (plain, saved_before):
            self.assertNotIn("aux", jax.eval_shape(models.build(description).init,
                                                   jax.random.key(0)))
        # impl xla: the same network, compiled in a fraction of the CPU-fast forms' time.
        supervised = models.build(models.describe("random:1", deep_supervision=True, **kw),
                                  impl="xla")
        params = supervised.init(jax.random.key(0))
        self.assertEqual(sorted(params["aux"]), [str(i) for i in network.aux_cells()])
        batch = {"image": jax.random.normal(jax.random.key(1), (1, 32, 32, 32, 1)),
                 "label": jax.random.randint(jax.random.key(2), (1, 32, 32, 32), 0, 3)}
        logits, aux = jax.eval_shape(lambda p, x: supervised.apply(p, x, return_aux=True),
                                     params, batch["image"])
        self.assertEqual(logits.shape, (1, 32, 32, 32, 3))
        # Heads on the 1/8 and 1/4 grids (the stride-2 stem's cells at levels 2 and 1).
        self.assertEqual(sorted(a.shape[1] for a in aux), [4, 8])
        # The aux heads are in the loss: their params get gradients.
        loss, grads = jax.jit(jax.value_and_grad(supervised.loss))(params, batch)
        self.assertTrue(bool(jnp.isfinite(loss)))
        for i in network.aux_cells():
            self.assertGreater(float(jnp.abs(grads["aux"][str(i)]["w"]).sum()), 0.0)

    def test_validate_architecture(self):
        config = _config("task", "", "no/such/genotype.json")
        with self.assertRaisesRegex(ValueError, "no such genotype file"):
            config_lib.validate(config)
        with self.assertRaisesRegex(ValueError, "needs --architecture"):
            config_lib.validate(dataclasses.replace(config, mode="train", architecture=""))

    def test_aggregate_and_markdown(self):
        folds = [{"fold": k, "labels": ["bg", "a"], "val_cases": [str(k)],
                  "dice_per_class": {"bg": 0.9, "a": v}, "dice_mean_foreground": v}
                 for k, v in enumerate((0.5, 0.7))]
        result = evaluate_mode.aggregate(folds)
        self.assertAlmostEqual(result["dice_mean"]["a"], 0.6)
        self.assertAlmostEqual(result["dice_std"]["a"], 0.1)
        result.update(derived={"params": 2e6, "gflops": 1.5}, wall_seconds=120)
        self.assertEqual(evaluate_mode.markdown_row("x", result),
                         "| x | 0.600 ± 0.100 | 0.600 ± 0.100 | 2.000M | 1.500 | - | 2.0 |")
        result.update(search_seconds=90)
        self.assertIn("| 1.500 | 1.5 | 2.0 |", evaluate_mode.markdown_row("x", result))


class EvaluateTrainPredictTest(absltest.TestCase):
    """One 2-fold cross-validation of a random architecture, then predict with fold 0."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp(prefix="modes_test")
        cls.data_dir = os.path.join(cls.tmp, "task")
        # A CT task: training, predict and export all go through the dataset's CT
        # statistics (plan.json "intensity").
        fixtures.write_tiny_msd(cls.data_dir, num_cases=6, shape=(20, 18, 16), channels=1,
                                modalities=["CT"])
        # No cache_dir: the folds must share <workdir>/preprocessed.
        cls.config = _config(cls.data_dir, "", "random:5")
        cls.workdir = os.path.join(cls.tmp, "cv")
        cls.result = evaluate_mode.cross_validate(cls.config, cls.workdir)

    def test_folds_are_disjoint_and_cover_every_case(self):
        val = [set(f["val_cases"]) for f in self.result["per_fold"]]
        self.assertEmpty(val[0] & val[1])
        self.assertLen(val[0] | val[1], 6)
        self.assertEqual(self.result["num_folds"], 2)
        self.assertTrue(os.path.exists(os.path.join(self.workdir, "summary.md")))
        for label in ("background", "outer", "core"):
            self.assertBetween(self.result["dice_mean"][label], 0.0, 1.0)

    def test_folds_share_one_preprocessed_cache(self):
        self.assertTrue(os.path.isdir(os.path.join(self.workdir, "preprocessed")))
        self.assertEmpty(glob.glob(os.path.join(self.workdir, "fold_*", "preprocessed")))

    def test_rerun_reuses_finished_folds(self):
        mtime = os.path.getmtime(os.path.join(self.workdir, "fold_1", "summary.json"))
        again = evaluate_mode.cross_validate(self.config, self.workdir)
        self.assertEqual(again["dice_mean"], self.result["dice_mean"])
        self.assertEqual(
            mtime, os.path.getmtime(os.path.join(self.workdir, "fold_1", "summary.json")))

    def test_final_params_restore(self):
        fold_dir = os.path.join(self.workdir, "fold_0")
        model, params, plan, description = artifacts.load(fold_dir, impl="xla")
        self.assertEqual(description["source"], "random:5")
        self.assertEqual(plan["patch_size"], [16, 16, 16])
        with open(os.path.join(self.workdir, "preprocessed", "Tiny-intensity.json")) as f:
            self.assertEqual(plan["intensity"], json.load(f)["intensity"])
        self.assertLen(plan["intensity"], 1)
        self.assertLess(plan["intensity"][0]["clip"][0], plan["intensity"][0]["mean"])
        with open(os.path.join(fold_dir, "summary.json")) as f:
            self.assertEqual(json.load(f)["derived"]["params"], network.num_params(params))
        # Jitted, as the evaluation compiled it: op by op it took 30 s of compiles.
        probs = models.probabilities_fn(model, params)(np.zeros((1, 16, 16, 16, 1), np.float32))
        self.assertEqual(probs.shape, (1, 16, 16, 16, 3))

    def test_params_of_another_network_are_refused_in_one_line(self):
        import shutil

        other = os.path.join(self.create_tempdir().full_path, "other")
        shutil.copytree(os.path.join(self.workdir, "fold_0"), other)
        path = os.path.join(other, "model.json")
        with open(path) as f:
            description = json.load(f)
        description["width"] *= 2
        with open(path, "w") as f:
            json.dump(description, f)
        with self.assertRaisesRegex(ValueError, "final: its params do not fit"):
            artifacts.load(other, impl="fast")

    def test_predict_cli_keeps_shape_and_affine(self):
        source = os.path.join(self.data_dir, "imagesTr", "case_000.nii.gz")
        out = os.path.join(self.tmp, "pred")
        cmd = [sys.executable, "-m", "jaxnas.main", "--mode=predict",
               f"--workdir={os.path.join(self.workdir, 'fold_0')}", f"--input={source}",
               f"--output={out}", "--eval_overlap=0.25", "--eval_batch_size=3", "--impl=xla"]
        run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        self.assertEqual(run.returncode, 0, run.stderr[-2000:])
        # The window flags of the command line override the run's plan.json.
        self.assertIn("overlap 0.25, gaussian True, mirror False, batch 3", run.stderr)
        image, pred = nib.load(source), nib.load(os.path.join(out, "case_000.nii.gz"))
        self.assertEqual(pred.shape, image.shape[:3])
        np.testing.assert_array_equal(pred.affine, image.affine)
        self.assertTrue(os.path.exists(os.path.join(out, "case_000.png")))
        self.assertNotEmpty(glob.glob(os.path.join(out, "events.out.tfevents.*")))
        # A second run refuses to overwrite, with one line naming the file.
        again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        self.assertNotEqual(again.returncode, 0)
        self.assertIn("case_000.nii.gz", again.stderr.strip().splitlines()[-1])

    def test_export_runs_without_jaxnas_and_matches_predict(self):
        fold_dir = os.path.join(self.workdir, "fold_0")
        out = os.path.join(self.tmp, "exported")
        cmd = [sys.executable, "-m", "jaxnas.main", "--mode=export", f"--workdir={fold_dir}",
               f"--output={out}", "--impl=xla"]  # As trained here (_config).
        run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        self.assertEqual(run.returncode, 0, run.stderr[-2000:])
        for name in ("model.jaxexport", "plan.json", "predict.py", "README.md",
                     "runtime/prediction.py", "runtime/inference.py"):
            self.assertTrue(os.path.exists(os.path.join(out, name)), name)
        source = os.path.join(self.data_dir, "imagesTr", "case_001.nii.gz")
        model, params, plan, _ = artifacts.load(fold_dir, impl="xla")
        predicted = os.path.join(self.tmp, "pred_for_export")
        predict_mode.predict_files(models.probabilities_fn(model, params), source, predicted,
                                   plan)
        # The runner in a process where any import of jaxnas fails.
        target = os.path.join(self.tmp, "exported_labels.nii.gz")
        blocked = (
            "import sys, runpy\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'jaxnas':\n"
            "            raise ImportError('jaxnas is not importable here')\n"
            "sys.meta_path.insert(0, Block())\n"
            f"sys.argv = ['predict.py', {source!r}, {target!r}]\n"
            "runpy.run_path('predict.py', run_name='__main__')\n")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        run = subprocess.run([sys.executable, "-c", blocked], cwd=out, env=env,
                             capture_output=True, text=True, timeout=300)
        self.assertEqual(run.returncode, 0, run.stderr[-2000:])
        expected = np.asarray(nib.load(os.path.join(predicted, "case_001.nii.gz")).dataobj)
        got = nib.load(target)
        np.testing.assert_array_equal(np.asarray(got.dataobj), expected)
        np.testing.assert_array_equal(got.affine, nib.load(source).affine)
        self.assertGreater(len(np.unique(expected)), 1)  # Not a trivial all-one-class map.
        # A second export into the same folder is refused with one line naming it.
        again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        self.assertNotEqual(again.returncode, 0)
        self.assertIn(out, again.stderr.strip().splitlines()[-1])

    def test_predict_needs_a_finished_run(self):
        cmd = [sys.executable, "-m", "jaxnas.main", "--mode=predict",
               f"--workdir={self.tmp}/nothing", f"--input={self.data_dir}/imagesTr",
               f"--output={self.tmp}/p2"]
        run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("holds no finished search or train run", run.stderr)


class UResNetTrainTest(absltest.TestCase):

    def test_train_writes_every_output(self):
        tmp = self.create_tempdir().full_path
        data_dir = os.path.join(tmp, "task")
        fixtures.write_tiny_msd(data_dir, num_cases=6, shape=(20, 18, 16), channels=1)
        config = _config(data_dir, os.path.join(tmp, "cache"), "uresnet", num_folds=3)
        config = dataclasses.replace(config, search=dataclasses.replace(
            config.search, num_epochs=4, lr_w=3e-3))
        summary = train_mode.train_and_evaluate(config, os.path.join(tmp, "w"))
        self.assertEqual(summary["architecture"], "uresnet")
        self.assertEqual(summary["mode"], "train")
        for name in ("model.json", "plan.json", "final", "summary.json", "pictures"):
            self.assertTrue(os.path.exists(os.path.join(tmp, "w", name)), name)


if __name__ == "__main__":
    absltest.main()
