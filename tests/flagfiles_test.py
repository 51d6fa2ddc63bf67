"""The paper flagfiles parse and start on an MSD-format folder (prepare mode: no compile)."""

import json
import os
import subprocess
import sys

from absl.testing import absltest
from absl.testing import parameterized

from tests import fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PaperFlagfileTest(parameterized.TestCase):

    @parameterized.parameters(("brain", [128, 128, 128]), ("heart", [128, 128, 128]),
                              ("prostate", [128, 128, 24]))
    def test_flagfile_starts_on_msd_folder(self, name, patch):
        data_dir = self.create_tempdir().full_path
        fixtures.write_tiny_msd(data_dir, num_cases=5, shape=(20, 18, 16), channels=2)
        workdir = os.path.join(self.create_tempdir().full_path, "w")
        result = subprocess.run(
            [sys.executable, "-m", "jaxnas.main", f"--flagfile={name}.flags",
             f"--data_dir={data_dir}", f"--workdir={workdir}", "--mode=prepare",
             "--num_preview_batches=1"],
            cwd=os.path.join(ROOT, "experiments"), capture_output=True, text=True,
            env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        with open(os.path.join(workdir, "config.json")) as f:
            config = json.load(f)
        self.assertEqual(config["data"]["patch_size"], patch)
        self.assertEqual(config["search"]["lr_w"], 0.025)
        self.assertEqual(config["search"]["betas_w"], [0.1, 0.001])
        self.assertEqual(config["search"]["num_epochs"], 400)
        with open(os.path.join(workdir, "data_summary.json")) as f:
            summary = json.load(f)
        self.assertEqual(summary["num_cases"], 5)
        self.assertEqual(summary["modalities"], ["mod0", "mod1"])


if __name__ == "__main__":
    absltest.main()
