"""The work-dir guard (jaxnas.workdir): finished runs kept, other runs never overwritten."""

import dataclasses
import json
import os

from absl.testing import absltest

from jaxnas import config as config_lib
from jaxnas.io import workdir as workdir_lib


def _write_config(workdir, config):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(config), f)


class CheckTest(absltest.TestCase):

    def setUp(self):
        super().setUp()
        self.workdir = self.create_tempdir().full_path
        self.config = dataclasses.replace(config_lib.tiny(), mode="evaluate")
        self.other = dataclasses.replace(self.config, search=dataclasses.replace(
            self.config.search, lr_w=0.5))

    def test_new_or_unstarted_workdir_runs(self):
        self.assertTrue(workdir_lib.check(self.workdir, self.config))
        _write_config(self.workdir, self.config)
        self.assertTrue(workdir_lib.check(self.workdir, self.other))  # nothing started yet

    def test_evaluate_rerun_with_other_settings_is_refused(self):
        # An evaluate run checkpoints in fold_k/ckpt, never in <workdir>/ckpt.
        _write_config(self.workdir, self.config)
        os.makedirs(os.path.join(self.workdir, "fold_0", "ckpt"))
        self.assertTrue(workdir_lib.check(self.workdir, self.config))  # same: resume
        with self.assertRaisesRegex(ValueError, "holds a run with other settings"):
            workdir_lib.check(self.workdir, self.other)

    def test_finished_fold_counts_as_started(self):
        _write_config(self.workdir, self.config)
        os.makedirs(os.path.join(self.workdir, "fold_1"))
        open(os.path.join(self.workdir, "fold_1", "summary.json"), "w").close()
        with self.assertRaisesRegex(ValueError, "other settings"):
            workdir_lib.check(self.workdir, self.other)

    def test_finished_run_is_not_redone(self):
        _write_config(self.workdir, self.config)
        open(os.path.join(self.workdir, "summary.json"), "w").close()
        self.assertFalse(workdir_lib.check(self.workdir, self.config))


if __name__ == "__main__":
    absltest.main()
