"""The planner's rules (jaxnas.planner) and the schedules it plans (jaxnas.schedules)."""

import dataclasses
from unittest import mock

import numpy as np
from absl.testing import absltest

from jaxnas import config as config_lib
from jaxnas import phases
from jaxnas import planner
from jaxnas.search import schedules

FP = planner.fingerprint([(71, 87, 78), (75, 90, 80), (68, 85, 77)], spacing=(2, 2, 2),
                         num_classes=3, num_channels=1)


class PlanTest(absltest.TestCase):

    def test_fingerprint_median(self):
        self.assertEqual(FP["median_shape"], [71, 87, 78])
        self.assertEqual(FP["num_cases"], 3)

    def test_patch_holds_the_median_case_when_the_budget_allows(self):
        plan = planner.plan(FP, budget_minutes=60, backend="cpu")
        self.assertEqual(plan["patch_size"][0], (80, 96, 80))
        self.assertIn("whole median case", plan["patch_size"][1])
        # A small budget shrinks it, keeping axes divisible by 16 and under the cap.
        small = planner.plan(FP, budget_minutes=3, backend="cpu")["patch_size"][0]
        self.assertLess(np.prod(small), 80 * 96 * 80)
        self.assertLessEqual(np.prod(small), planner.CPU_TRAIN_VOXELS_PER_MIN * 3)
        self.assertTrue(all(p % 16 == 0 for p in small))

    def test_every_choice_has_a_reason_and_a_field(self):
        plan = planner.plan(FP, budget_minutes=9, backend="cpu")
        for name, (value, reason) in plan.items():
            self.assertIn(name, planner.FIELDS)
            self.assertNotEmpty(reason, name)
        self.assertFalse(plan["dice_background"][0])
        self.assertFalse(plan["eval_mirror"][0])  # left/right labels must not be flipped
        self.assertEqual(planner.plan(FP, budget_minutes=9, backend="gpu")["stem_stride"][0], 1)

    def test_memory_budget_shrinks_the_patches_until_the_estimate_fits(self):
        free = planner.plan(FP, budget_minutes=9, backend="cpu")
        for gb in (0.25, 0.05):
            plan = planner.plan(FP, budget_minutes=9, backend="cpu", memory_gb=gb)
            for setting, kind in (("patch_size", "train"), ("search_patch_size", "search")):
                patch, reason = plan[setting]
                self.assertLessEqual(np.prod(patch), np.prod(free[setting][0]))
                per_voxel = planner.memory_bytes_per_voxel(kind, fp=FP, width=16,
                                                           stem_stride=2, batch_size=2,
                                                           width_growth=planner.GROWTH_SHORT)
                if np.prod(patch) > 16**3:  # The smallest patch is kept whatever it costs.
                    self.assertLessEqual(per_voxel * np.prod(patch), gb * 2**30, setting)
                self.assertIn(f"--memory_gb={gb:g}", reason)
        tight = planner.plan(FP, budget_minutes=9, backend="cpu", memory_gb=0.05)
        self.assertLess(np.prod(tight["patch_size"][0]), np.prod(free["patch_size"][0]))
        self.assertIn("the memory cap binds", tight["patch_size"][1])

    def test_short_budgets_widen_the_coarse_levels(self):
        self.assertEqual(planner.plan(FP, budget_minutes=9)["width_growth"][0],
                         planner.GROWTH_SHORT)
        self.assertEqual(planner.plan(FP, budget_minutes=240)["width_growth"][0], 2)
        # The memory estimate counts the wider coarse levels.
        kw = dict(fp=FP, width=16, stem_stride=2, batch_size=2)
        self.assertGreater(planner.memory_bytes_per_voxel("train", width_growth=3, **kw),
                           planner.memory_bytes_per_voxel("train", width_growth=2, **kw))

    def test_short_budgets_give_most_of_the_time_to_fine_tuning(self):
        short = planner.plan(FP, budget_minutes=9, backend="cpu")["finetune_fraction"][0]
        long = planner.plan(FP, budget_minutes=240, backend="cpu")["finetune_fraction"][0]
        self.assertGreater(short, 0.5)
        self.assertLess(long, short)

    def test_short_budgets_compile_one_search_step_program(self):
        self.assertTrue(planner.plan(FP, budget_minutes=9)["one_step_program"][0])
        self.assertFalse(planner.plan(FP, budget_minutes=240)["one_step_program"][0])
        config, _ = planner.apply(config_lib.tiny(), planner.plan(FP, budget_minutes=9))
        self.assertTrue(config.search.one_step_program)

    def test_flags_given_by_the_user_win(self):
        config = dataclasses.replace(config_lib.tiny(), user_set=("width", "patch_size"))
        planned = planner.plan(FP, budget_minutes=9, backend="cpu")
        new, record = planner.apply(config, planned)
        self.assertEqual(new.search.width, config.search.width)
        self.assertEqual(new.data.patch_size, config.data.patch_size)
        self.assertEqual(record["width"]["reason"], "set by flag")
        self.assertEqual(new.search.lr_schedule, "cosine")  # not given: planned
        self.assertEqual(new.data.search_patch_size, planned["search_patch_size"][0])

    def test_a_kept_flag_that_does_not_fit_the_plan_is_one_clear_error(self):
        import types
        from jaxnas.data import msd

        config = dataclasses.replace(config_lib.tiny(), user_set=("patch_size",))
        config = dataclasses.replace(
            config, data=dataclasses.replace(config.data, data_dir="/x", patch_size=(40,) * 3),
            search=dataclasses.replace(config.search, budget_minutes=5))
        case = types.SimpleNamespace(image=np.zeros((71, 87, 78, 1)))
        data = types.SimpleNamespace(
            theta_ids=["a"], alpha_ids=["b"], cases={"a": case, "b": case}, spacing=(2, 2, 2),
            dataset=types.SimpleNamespace(num_classes=3, modalities=("T1",)))
        with self.assertRaisesRegex(msd.DataError, "divisible by 16"):
            phases.planned_config(config, data, self.create_tempdir().full_path)

    def test_budget_to_steps(self):
        self.assertEqual(planner.steps_in(100.0, 0.5), 200)
        self.assertEqual(planner.steps_in(1.0, 10.0), 10)  # a floor of 10 steps
        self.assertEqual(planner.search_horizon(100, warmup_fraction=0.15, anneal_fraction=0.6),
                         (15, 66, 100))

    def test_eval_estimate_counts_windows_passes_and_flips(self):
        kw = dict(window=(32, 32, 32), overlap=0.5, step_seconds=1.0, batch_size=2)
        fixed = planner.EVAL_FIXED_SECONDS + planner.EVAL_COMPILE_SECONDS
        one = planner.eval_seconds([(32, 32, 32)], mirror=False, **kw) - fixed
        self.assertAlmostEqual(one, planner.FORWARD_SHARE / 2)
        # 48 voxels with 32-voxel windows at half overlap: 2 starts per axis.
        eight = planner.eval_seconds([(48, 48, 48, 1)], mirror=False, **kw) - fixed
        self.assertAlmostEqual(eight, 8 * one)
        both = planner.eval_seconds([(32, 32, 32)] * 3, mirror=True, passes=2, **kw) - fixed
        self.assertAlmostEqual(both, 3 * 2 * 8 * one)
        # A forward compiled ahead (phases.compile_eval_program) is not counted again.
        ahead = planner.eval_seconds([(32, 32, 32)], mirror=False, compiled=True, **kw)
        self.assertAlmostEqual(ahead, planner.EVAL_FIXED_SECONDS + one)

    def test_step_timing_stops_once_enough_time_passed(self):
        clock = [0.0]  # a fake clock: each call of the step takes exactly 1 s

        def step(state):
            clock[0] += 1.0
            return state + 1

        with mock.patch.object(phases.time, "time", lambda: clock[0]):
            seconds = phases.time_steps(step, np.zeros(()), repeats=5)
            # The warm-up call, then timed calls until 1.5 s have passed: two.
            self.assertEqual(clock[0], 3.0)
            self.assertEqual(seconds, 1.0)
            clock[0] = 0.0
            with mock.patch.object(phases, "TIMING_SECONDS", 10.0):
                phases.time_steps(step, np.zeros(()), repeats=2)  # all repeats
            self.assertEqual(clock[0], 3.0)


class SchedulesTest(absltest.TestCase):

    def test_tau_and_noise_reach_their_floor_at_anneal_end(self):
        horizon = (10, 60, 100)
        self.assertAlmostEqual(float(schedules.annealed_tau(5, horizon, tau_min=0.01)), 1.0)
        self.assertAlmostEqual(float(schedules.annealed_tau(35, horizon, tau_min=0.01)), 0.1,
                               places=5)  # geometric: halfway in log space
        self.assertAlmostEqual(float(schedules.annealed_tau(80, horizon, tau_min=0.01)), 0.01,
                               places=6)
        self.assertEqual(float(schedules.gumbel_noise_scale(0, horizon)), 1.0)
        self.assertEqual(float(schedules.gumbel_noise_scale(60, horizon)), 0.0)

    def test_lr_warms_up_then_decays_to_zero(self):
        horizon = (0, 0, 100)
        f = [float(schedules.lr_factor(s, horizon, warmup_steps=10)) for s in range(100)]
        self.assertAlmostEqual(f[0], 0.1)
        self.assertAlmostEqual(max(f), 1.0, places=2)
        self.assertLess(f[-1], 0.01)
        poly = float(schedules.lr_factor(55, horizon, warmup_steps=10, kind="poly"))
        self.assertAlmostEqual(poly, 0.5**0.9, places=5)
        self.assertEqual(float(schedules.lr_factor(99, horizon, warmup_steps=10,
                                                   kind="constant")), 1.0)


if __name__ == "__main__":
    absltest.main()
