"""End to end: the search writes every output, and an interrupted run resumes exactly."""

import dataclasses
import glob
import json
import os
import subprocess
import sys
import tempfile
import unittest

import jax
import numpy as np
from absl.testing import absltest

from jaxnas import config as config_lib
from jaxnas import evaluation
from jaxnas import phases
from jaxnas.io import checkpoints
from jaxnas.search import bilevel
from jaxnas.search.strategies import gradient_search
from jaxnas.spaces import genotype as genotype_lib
from tests import fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_config(data_dir, cache_dir):
    config = config_lib.tiny()
    data = dataclasses.replace(config.data, data_dir=data_dir, cache_dir=cache_dir,
                               num_folds=3)
    return dataclasses.replace(config, data=data)


def _final_params(workdir):
    manager = checkpoints.make_manager(workdir)
    restored = manager.restore(manager.latest_step())
    return manager.latest_step(), restored


class SearchRunTest(absltest.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp(prefix="train_test")
        cls.data_dir = os.path.join(cls.tmp, "task")
        fixtures.write_tiny_msd(cls.data_dir, num_cases=6, shape=(20, 18, 16), channels=1)
        cls.config = _tiny_config(cls.data_dir, os.path.join(cls.tmp, "cache"))
        cls.workdir = os.path.join(cls.tmp, "full")
        cls.summary = gradient_search.search_and_evaluate(cls.config, cls.workdir)

    def test_writes_every_output(self):
        self.assertNotEmpty(glob.glob(os.path.join(self.workdir, "events.out.tfevents.*")))
        self.assertEqual(checkpoints.make_manager(self.workdir).latest_step(), 4)
        genotype = genotype_lib.load_genotype(os.path.join(self.workdir, "genotype.json"))
        self.assertEqual(genotype_lib.genotype_to_indices(genotype).shape, (4, 14))
        with open(os.path.join(self.workdir, "summary.json")) as f:
            summary = json.load(f)
        self.assertEqual(set(summary["dice_per_class"]), {"background", "outer", "core"})
        self.assertLen(summary["val_cases"], 2)

    def test_interrupted_run_resumes_to_same_params(self):
        workdir = os.path.join(self.tmp, "interrupted")
        save = checkpoints.save

        def save_then_stop(manager, step, state):
            save(manager, step, state)
            manager.wait_until_finished()
            raise KeyboardInterrupt  # The machine goes away right after a checkpoint.

        checkpoints.save = save_then_stop
        try:
            with self.assertRaises(KeyboardInterrupt):
                gradient_search.search_and_evaluate(self.config, workdir)
        finally:
            checkpoints.save = save
        self.assertEqual(checkpoints.make_manager(workdir).latest_step(), 2)
        gradient_search.search_and_evaluate(self.config, workdir)
        step_a, full = _final_params(self.workdir)
        step_b, resumed = _final_params(workdir)
        self.assertEqual(step_a, step_b)
        for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


    def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(self):
        workdir = os.path.join(self.tmp, "nan")
        make_batch = phases.step_batch

        def poisoned(cases, config, step, stream, patch_size=None):
            batch = make_batch(cases, config, step, stream, patch_size)
            if step >= 2:  # After the epoch-1 checkpoint.
                batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
            return batch

        phases.step_batch = poisoned
        try:
            with self.assertRaisesRegex(evaluation.RunError, "non-finite loss at step 3"):
                gradient_search.search_and_evaluate(self.config, workdir)
        finally:
            phases.step_batch = make_batch
        step, restored = _final_params(workdir)
        self.assertEqual(step, 2)
        self.assertTrue(all(np.isfinite(np.asarray(x)).all()
                            for x in jax.tree.leaves(restored)))
        self.assertFalse(os.path.exists(os.path.join(workdir, "summary.json")))


class MemoryWeightTest(absltest.TestCase):
    """--memory_weight reaches the search's alpha step (traced only: no compile)."""

    def test_alpha_step_reports_the_memory_term(self):
        config = config_lib.tiny()
        search = dataclasses.replace(config.search, memory_weight=0.5)
        programs = gradient_search.search_programs(search, 1, 3, 2, False, (16, 16, 16), 1)
        state = jax.eval_shape(lambda: bilevel.init_state(
            programs.init_params(jax.random.key(0)), bilevel.init_arch(), programs.tx_w,
            programs.tx_a))
        batch = {"image": jax.ShapeDtypeStruct((1, 16, 16, 16, 1), np.float32),
                 "label": jax.ShapeDtypeStruct((1, 16, 16, 16), np.int32)}
        _, metrics = jax.eval_shape(programs.step_a, state, batch, jax.random.key(0))
        self.assertIn("train/arch_cost", metrics)
        plain = gradient_search.search_programs(config.search, 1, 3, 2, False, (16, 16, 16), 1)
        _, metrics = jax.eval_shape(plain.step_a, state, batch, jax.random.key(0))
        self.assertNotIn("train/arch_cost", metrics)


# A full CLI search subprocess (~40 s): in the slow tier (CI runs it) to keep
# `./run.sh test` under 10 minutes from a cold compile cache.
@unittest.skipUnless(os.environ.get("JAXNAS_SLOW_TESTS") == "1",
                     "set JAXNAS_SLOW_TESTS=1 (CI does) for the CLI search subprocess")
class TinyFlagfileTest(absltest.TestCase):

    def test_cli_run_and_rerun_keeps_finished_outputs(self):
        data_dir = self.create_tempdir().full_path
        fixtures.write_tiny_msd(data_dir, num_cases=6, shape=(20, 18, 16), channels=1)
        workdir = self.create_tempdir().full_path
        cmd = [sys.executable, "-m", "jaxnas.main", "--flagfile=tiny.flags",
               f"--data_dir={data_dir}", f"--workdir={workdir}",
               f"--cache_dir={workdir}/cache", "--num_folds=3"]
        env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
        run = subprocess.run(cmd, cwd=os.path.join(ROOT, "experiments"), env=env,
                             capture_output=True, text=True, timeout=600)
        self.assertEqual(run.returncode, 0, run.stderr[-3000:])
        for name in ("genotype.json", "summary.json", "splits.json", "config.json"):
            self.assertTrue(os.path.exists(os.path.join(workdir, name)), name)
        mtime = os.stat(os.path.join(workdir, "summary.json")).st_mtime_ns
        rerun = subprocess.run(cmd, cwd=os.path.join(ROOT, "experiments"), env=env,
                               capture_output=True, text=True, timeout=600)
        self.assertEqual(rerun.returncode, 0, rerun.stderr[-3000:])
        self.assertIn("already holds this finished run", rerun.stderr)
        self.assertEqual(os.stat(os.path.join(workdir, "summary.json")).st_mtime_ns, mtime)
        other = subprocess.run(cmd + ["--width=8"], cwd=os.path.join(ROOT, "experiments"),
                               env=env, capture_output=True, text=True, timeout=600)
        self.assertNotEqual(other.returncode, 0)
        self.assertIn("holds a run with other settings", other.stderr)


# Three CLI runs of the planned default flow (~3 min): slow tier.
@unittest.skipUnless(os.environ.get("JAXNAS_SLOW_TESTS") == "1",
                     "set JAXNAS_SLOW_TESTS=1 (CI does) for the kill -9 resume test")
class KillResumeTest(absltest.TestCase):
    """A planned search + fine-tune killed with SIGKILL after its first checkpoint, then
    rerun, ends bit-identical to an uninterrupted run (same budget.json)."""

    def test_sigkill_then_resume_is_bit_exact(self):
        data_dir = self.create_tempdir().full_path
        fixtures.write_tiny_msd(data_dir, num_cases=6, shape=(20, 18, 16), channels=1)
        env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
        cwd = os.path.join(ROOT, "experiments")

        def cmd(workdir):
            return [sys.executable, "-m", "jaxnas.main", "--flagfile=tiny.flags",
                    f"--data_dir={data_dir}", f"--workdir={workdir}",
                    f"--cache_dir={data_dir}_cache", "--num_folds=3", "--budget_minutes=0.5",
                    "--patch_size=16,16,16", "--search_patch_size=16,16,16", "--width=4",
                    "--batch_size=1", "--ckpt_every=2", "--log_every=1"]

        fixtures.kill_resume_matches_whole_run(
            self, cmd, cwd=cwd, env=env, copy=("budget.json",),
            compare=("genotype.json", "budget.json"))

if __name__ == "__main__":
    absltest.main()
