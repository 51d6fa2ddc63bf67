"""The strategies beyond SCNAS: genotypes of every space, their derived networks through
train and predict, candidate scoring, and (JAXNAS_SLOW_TESTS=1; CI sets it) each of
random, ronasmis and c2fnas from the command line, with train and predict on its output.

The pure parts have their own tests: controller_test (REINFORCE), ronasmis_test and
c2fnas_test (spaces, shared-weight networks, a training step each), search_test (scnas,
gdas, darts steps).
"""

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import unittest

import nibabel as nib
import numpy as np
from absl.testing import absltest

from jaxnas import config as config_lib
from jaxnas import models
from jaxnas.io import artifacts
from jaxnas.modes import predict
from jaxnas.modes import train as train_mode
from jaxnas.search.strategies import common
from jaxnas.spaces import c2fnas
from jaxnas.spaces import cell_drawing
from jaxnas.spaces import genotype as genotype_lib
from jaxnas.spaces import ronasmis
from jaxnas.spaces.scnas import network
from tests import fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLOW = os.environ.get("JAXNAS_SLOW_TESTS") == "1"


def _macro_genotypes(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    topology = c2fnas.sample_topologies(rng, 1)[0]
    return {
        "ronasmis": genotype_lib.macro_genotype(
            "ronasmis", {"decisions": ronasmis.choice_to_dict(fixtures.random_ronasmis_choice(rng))}),
        "c2fnas": genotype_lib.macro_genotype(
            "c2fnas", c2fnas.to_json(topology, rng.integers(0, 3, c2fnas.NUM_CELLS))),
    }


class GenotypeSpacesTest(absltest.TestCase):

    def test_macro_genotypes_round_trip_through_files(self):
        tmp = self.create_tempdir().full_path
        for name, genotype in _macro_genotypes().items():
            path = os.path.join(tmp, f"{name}.json")
            genotype_lib.save_genotype(path, genotype, extra={"val_dice": 0.5})
            loaded = genotype_lib.load_genotype(path)
            self.assertEqual(genotype_lib.space_of(loaded), name)
            self.assertEqual(loaded["extra"]["val_dice"], 0.5)
        decisions = genotype_lib.load_genotype(os.path.join(tmp, "ronasmis.json"))["decisions"]
        self.assertEqual(list(decisions), [n for n, _ in ronasmis.DECISIONS])

    def test_bad_macro_genotypes_name_file_and_field(self):
        tmp = self.create_tempdir().full_path
        genotypes = _macro_genotypes()
        bad_ops = dict(genotypes["ronasmis"], decisions={
            **genotypes["ronasmis"]["decisions"], "dec1/op": "conv_9x9x9"})
        bad_path = dict(genotypes["c2fnas"], topology=[0, 2] + [0] * 10)
        for name, genotype, message in (("a.json", bad_ops, "dec1/op"),
                                        ("b.json", bad_path, "topology")):
            path = os.path.join(tmp, name)
            fixtures.write_json(path, genotype)
            with self.assertRaisesRegex(ValueError, f"{name}.*{message}"):
                genotype_lib.load_genotype(path)

    def test_macro_genotypes_are_drawn(self):
        for name, genotype in _macro_genotypes().items():
            self.assertEqual(cell_drawing.drawing_name(genotype), "architecture.png")
            image = cell_drawing.draw_genotype(genotype)
            self.assertEqual(image.dtype, np.uint8)
            self.assertGreater(image.std(), 10)  # Not a blank canvas.

    def test_bad_genotype_file_stops_validation(self):
        path = os.path.join(self.create_tempdir().full_path, "genotype.json")
        fixtures.write_json(path, dict(_macro_genotypes()["c2fnas"], ops=["conv"] * 12))
        config = dataclasses.replace(config_lib.tiny(), mode="train", architecture=path,
                                     data=dataclasses.replace(config_lib.tiny().data,
                                                              data_dir="task"))
        with self.assertRaisesRegex(ValueError, "genotype.json.*unknown op"):
            config_lib.validate(config)

    def test_version_1_files_are_scnas_cells(self):
        genotype = genotype_lib.random_genotype(3)
        old = {k: v for k, v in genotype.items() if k != "space"} | {"version": 1}
        genotype_lib.validate_genotype(old)
        self.assertEqual(genotype_lib.space_of(old), "scnas")
        np.testing.assert_array_equal(genotype_lib.genotype_to_indices(old),
                                      genotype_lib.genotype_to_indices(genotype))
        with self.assertRaisesRegex(ValueError, "no SCNAS cells"):
            genotype_lib.genotype_to_indices(_macro_genotypes()["c2fnas"])

    def test_validate_strategy_settings(self):
        config = dataclasses.replace(config_lib.tiny(), data=dataclasses.replace(
            config_lib.tiny().data, data_dir="task"))
        for strategy in config_lib.STRATEGIES:
            config_lib.validate(dataclasses.replace(config, search=dataclasses.replace(
                config.search, strategy=strategy)))
        for bad, message in ((dict(strategy="enas"), "--strategy"),
                             (dict(coarse_fraction=1.0), "--coarse_fraction"),
                             (dict(num_children=0), "--num_children"),
                             (dict(strategy="random", width=6), "divisible by 4")):
            with self.assertRaisesRegex(ValueError, message):
                config_lib.validate(dataclasses.replace(
                    config, search=dataclasses.replace(config.search, **bad)))

    def test_patch_dice_is_per_patch_mean_foreground(self):
        labels = np.zeros((3, 2, 2, 2), np.int32)
        labels[0, 0] = 1  # Patch 0: class 1 predicted exactly.
        labels[1, 0] = 2  # Patch 1: class 2 present, predicted as class 1.
        pred = labels.copy()
        pred[1] = np.where(labels[1] == 2, 1, 0)
        logits = np.eye(3, dtype=np.float32)[pred] * 5
        dice = np.asarray(common.patch_dice(logits, labels))
        # Patch 0: class 1 only -> 1. Patch 1: class 1 (fp only) 0, class 2 0 -> 0.
        # Patch 2: nothing anywhere -> 1 (no class defined).
        np.testing.assert_allclose(dice, [1.0, 0.0, 1.0])


class MacroTrainPredictTest(absltest.TestCase):
    """A ronasmis and a c2fnas genotype file trained with --mode=train's function, then
    restored and used by predict: the modes accept every space's output."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp(prefix="strategies_test")
        cls.data_dir = os.path.join(cls.tmp, "task")
        fixtures.write_tiny_msd(cls.data_dir, num_cases=6, shape=(20, 18, 16), channels=1)
        base = config_lib.tiny()
        cls.summaries = {}
        for name, genotype in _macro_genotypes(seed=1).items():
            path = os.path.join(cls.tmp, f"{name}.json")
            genotype_lib.save_genotype(path, genotype)
            config = dataclasses.replace(
                base, architecture=path, mode="train",
                data=dataclasses.replace(base.data, data_dir=cls.data_dir,
                                         cache_dir=os.path.join(cls.tmp, "cache")),
                search=dataclasses.replace(base.search, width=2))
            cls.summaries[name] = train_mode.train_and_evaluate(config, os.path.join(cls.tmp, name))

    def test_train_summary_and_model(self):
        for name, summary in self.summaries.items():
            self.assertEqual(summary["mode"], "train")
            self.assertEqual(summary["architecture"], os.path.join(self.tmp, f"{name}.json"))
            self.assertBetween(summary["dice_mean_foreground"], 0.0, 1.0)
            with open(os.path.join(self.tmp, name, "model.json")) as f:
                description = json.load(f)
            self.assertEqual(genotype_lib.space_of(description["genotype"]), name)

    def test_restored_model_predicts_a_file(self):
        for name in self.summaries:
            workdir = os.path.join(self.tmp, name)
            model, params, plan, _ = artifacts.load(workdir, impl="fast")
            self.assertEqual(self.summaries[name]["derived"]["params"],
                             network.num_params(params))
            out = os.path.join(self.tmp, f"pred_{name}")
            source = os.path.join(self.data_dir, "imagesTr", "case_001.nii.gz")
            predict.predict_files(models.probabilities_fn(model, params), source, out, plan)
            pred = nib.load(os.path.join(out, "case_001.nii.gz"))
            self.assertEqual(pred.shape, nib.load(source).shape[:3])
            self.assertLessEqual(int(np.asarray(pred.dataobj).max()), 2)


@unittest.skipUnless(SLOW, "set JAXNAS_SLOW_TESTS=1 (CI does) for the CLI runs")
class StrategiesCliTest(absltest.TestCase):
    """Each new strategy from the CLI on a tiny task; then train and predict on its output."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp(prefix="strategies_cli")
        cls.data_dir = os.path.join(cls.tmp, "task")
        fixtures.write_tiny_msd(cls.data_dir, num_cases=6, shape=(20, 18, 16), channels=1)

    def _main(self, *args):
        cmd = [sys.executable, "-m", "jaxnas.main", "--flagfile=experiments/tiny.flags",
               f"--data_dir={self.data_dir}", f"--cache_dir={self.tmp}/cache", "--width=2",
               "--num_folds=3", *args]
        run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        self.assertEqual(run.returncode, 0, run.stderr[-3000:])

    def _check_strategy(self, strategy, space_name, *flags):
        workdir = os.path.join(self.tmp, strategy)
        self._main("--mode=search", f"--strategy={strategy}", f"--workdir={workdir}", *flags)
        with open(os.path.join(workdir, "summary.json")) as f:
            summary = json.load(f)
        self.assertEqual(summary["strategy"], strategy)
        self.assertGreater(summary["search_seconds"], 0)
        genotype = genotype_lib.load_genotype(os.path.join(workdir, "genotype.json"))
        self.assertEqual(genotype_lib.space_of(genotype), space_name)
        self._main("--mode=predict", f"--workdir={workdir}",
                   f"--input={self.data_dir}/imagesTr/case_000.nii.gz",
                   f"--output={self.tmp}/pred_{strategy}")
        self.assertTrue(os.path.exists(f"{self.tmp}/pred_{strategy}/case_000.nii.gz"))
        self._main("--mode=train", f"--architecture={workdir}/genotype.json",
                   f"--workdir={self.tmp}/train_{strategy}", *flags)
        self.assertTrue(os.path.exists(f"{self.tmp}/train_{strategy}/summary.json"))

    def test_random(self):
        self._check_strategy("random", "scnas", "--num_candidates=2", "--width=4")

    def test_ronasmis(self):
        self._check_strategy("ronasmis", "ronasmis", "--num_children=2")

    def test_c2fnas(self):
        self._check_strategy("c2fnas", "c2fnas", "--num_topologies=4", "--num_groups=2")


@unittest.skipUnless(SLOW, "set JAXNAS_SLOW_TESTS=1 (CI does) for the kill -9 resume runs")
class StrategiesKillResumeTest(absltest.TestCase):
    """Each sample-and-score strategy on loop.run: a CLI search killed with SIGKILL after its
    first checkpoint, then rerun, ends bit-identical to an uninterrupted one."""

    def _check(self, strategy, *flags):
        data_dir = self.create_tempdir().full_path
        fixtures.write_tiny_msd(data_dir, num_cases=6, shape=(20, 18, 16), channels=1)

        def cmd(workdir):
            return [sys.executable, "-m", "jaxnas.main", "--flagfile=tiny.flags",
                    f"--data_dir={data_dir}", f"--workdir={workdir}",
                    f"--cache_dir={data_dir}_cache", "--num_folds=3", "--num_epochs=6",
                    f"--strategy={strategy}", *flags]

        fixtures.kill_resume_matches_whole_run(
            self, cmd, cwd=os.path.join(ROOT, "experiments"),
            env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"))

    def test_random(self):
        self._check("random", "--num_candidates=3")

    def test_ronasmis(self):
        self._check("ronasmis", "--num_children=2", "--width=2", "--warmup_epochs=1")

    def test_c2fnas(self):
        self._check("c2fnas", "--num_topologies=4", "--num_groups=2", "--width=2")


@unittest.skipUnless(SLOW, "set JAXNAS_SLOW_TESTS=1 (CI does) for the sharded CLI runs")
class StrategiesMeshTest(absltest.TestCase):
    """Each sample-and-score strategy with --mesh=data:2 on 2 simulated CPU devices ends
    where the same run on one device does (the genotype, params to float tolerance)."""

    def _check(self, strategy, *flags):
        data_dir = self.create_tempdir().full_path
        fixtures.write_tiny_msd(data_dir, num_cases=6, shape=(20, 18, 16), channels=1)
        env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
                   XLA_FLAGS="--xla_force_host_platform_device_count=2")
        finals = []
        for mesh in ("", "data:2"):
            workdir = self.create_tempdir().full_path
            run = subprocess.run(
                [sys.executable, "-m", "jaxnas.main", "--flagfile=tiny.flags",
                 f"--data_dir={data_dir}", f"--workdir={workdir}",
                 f"--cache_dir={data_dir}_cache", "--num_folds=3", "--batch_size=2",
                 f"--strategy={strategy}", f"--mesh={mesh}", *flags],
                cwd=os.path.join(ROOT, "experiments"), env=env, capture_output=True,
                text=True, timeout=900)
            self.assertEqual(run.returncode, 0, run.stderr[-3000:])
            with open(os.path.join(workdir, "genotype.json")) as f:
                genotype = json.load(f)
            # Loaded here, on one device: a mesh run's model must not need its mesh.
            finals.append((genotype, artifacts.load(workdir, impl="fast")[1]))
        (g1, p1), (g2, p2) = finals
        self.assertEqual({k: v for k, v in g1.items() if k != "extra"},
                         {k: v for k, v in g2.items() if k != "extra"})
        fixtures.assert_trained_params_match(self, p1, p2, lr=1e-3)  # tiny.flags' lr_w

    def test_random(self):
        self._check("random", "--num_candidates=2", "--width=4")

    def test_ronasmis(self):
        self._check("ronasmis", "--num_children=2", "--width=2")

    def test_c2fnas(self):
        self._check("c2fnas", "--num_topologies=4", "--num_groups=2", "--width=2")


if __name__ == "__main__":
    absltest.main()
