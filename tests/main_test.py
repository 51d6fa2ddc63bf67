"""main.py's environment shell: the CPU compile flags it adds before jax starts."""

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


if __name__ == "__main__":
    absltest.main()
