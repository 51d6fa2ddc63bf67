"""main.py's environment shell: the CPU compile flags it adds before jax starts."""

import os
import subprocess
import sys

from absl.testing import absltest

from jaxnas import main


class CpuXlaFlagsTest(absltest.TestCase):

    def test_added_on_cpu_installs(self):
        self.assertEqual(main.with_cpu_xla_flags("", gpu_plugin=False),
                         "--xla_backend_optimization_level=1")
        self.assertEqual(main.with_cpu_xla_flags("--xla_force_host_platform_device_count=4",
                                                 gpu_plugin=False),
                         "--xla_force_host_platform_device_count=4 "
                         "--xla_backend_optimization_level=1")

    def test_a_users_setting_and_gpu_installs_are_left_alone(self):
        mine = "--xla_backend_optimization_level=3"
        self.assertEqual(main.with_cpu_xla_flags(mine, gpu_plugin=False), mine)
        self.assertEqual(main.with_cpu_xla_flags("", gpu_plugin=True), "")

    def test_unoptimised_compiles_get_no_level_flag(self):
        # The suite's subprocesses then share the persistent cache with in-process tests.
        self.assertEqual(main.with_cpu_xla_flags("", gpu_plugin=False, unoptimised=True), "")
        got = main.with_cpu_xla_flags("", gpu_plugin=False, several_processes=True,
                                      unoptimised=True)
        self.assertNotIn("optimization_level", got)
        self.assertIn("collective", got)

    def test_several_processes_get_long_collective_timeouts_that_xla_knows(self):
        got = main.with_cpu_xla_flags("", gpu_plugin=False, several_processes=True)
        for flag in main.CPU_MULTIPROCESS_XLA_FLAGS:
            self.assertIn(flag, got)
        self.assertNotIn("collective", main.with_cpu_xla_flags("", gpu_plugin=False))
        # XLA ends the process on a flag it does not know: these names must be its own.
        run = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"],
                             env=dict(os.environ, XLA_FLAGS=got, JAX_PLATFORMS="cpu"),
                             capture_output=True, text=True, timeout=120)
        self.assertEqual(run.returncode, 0, run.stderr[-2000:])


if __name__ == "__main__":
    absltest.main()
