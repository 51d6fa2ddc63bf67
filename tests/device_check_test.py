"""experiments/device_check.py at the CPU size: every stage reports numbers, the smoke
search writes every output, and the JSON is written."""

import json
import os
import subprocess
import sys

from absl.testing import absltest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class DeviceCheckTest(absltest.TestCase):

    def test_cpu_size_runs_every_cpu_stage(self):
        out = os.path.join(self.create_tempdir().full_path, "device_check.json")
        # 1 channel and 3 classes, as tests/fixtures.py's task, and impl xla, as
        # config.tiny(): the search stage and the smoke then compile the programs the
        # search tests run (one compile in the suite; conftest.py puts them on one worker).
        run = subprocess.run(
            [sys.executable, os.path.join(ROOT, "experiments", "device_check.py"),
             "--size=16", "--width=4", "--volume=24", "--smoke_size=16",
             "--channels=1", "--classes=3",
             "--stages=env,scnas_xla,sliding,smoke", "--limit_scale=6", f"--out={out}"],
            capture_output=True, text=True, timeout=900)
        self.assertEqual(run.returncode, 0, run.stderr[-2000:])
        with open(out) as f:
            stages = json.load(f)["stages"]
        for name in ("env", "scnas_xla", "sliding", "smoke"):
            self.assertEqual(stages[name]["status"], "ok", (name, stages[name]))
        self.assertEqual(stages["env"]["backend"], "cpu")
        self.assertFalse(stages["env"]["cuda_install_ok"])
        self.assertGreater(stages["scnas_xla"]["iteration_s"], 0)
        self.assertGreater(stages["scnas_xla"]["peak_bytes"], 0)
        self.assertGreater(stages["scnas_xla"]["estimate_bytes"], 0)
        self.assertEqual(stages["sliding"]["output_shape"], [24, 24, 24, 3])
        self.assertEqual(stages["sliding"]["windows"], 8)
        self.assertTrue(stages["smoke"]["ok"], stages["smoke"])
        self.assertGreater(stages["smoke"]["event_files"], 0)

    def test_unknown_stage_is_one_line(self):
        run = subprocess.run(
            [sys.executable, os.path.join(ROOT, "experiments", "device_check.py"),
             "--stages=env,warp", f"--out={self.create_tempdir().full_path}/x.json"],
            capture_output=True, text=True, timeout=300)
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("unknown stage 'warp'", run.stderr)


if __name__ == "__main__":
    absltest.main()
