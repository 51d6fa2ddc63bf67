"""config.validate: settings that cannot work stop with one line naming the flag."""

import dataclasses

from absl.testing import absltest
from absl.testing import parameterized

from jaxnas import config as config_lib


def _with(**search):
    config = config_lib.tiny()
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, data_dir="/x"))
    return dataclasses.replace(config, search=dataclasses.replace(config.search, **search))


class RangesTest(parameterized.TestCase):

    def test_tiny_config_is_valid(self):
        config_lib.validate(_with())

    @parameterized.parameters(
        ("lr_w", -1.0), ("lr_w", 0.0), ("lr_a", -0.1), ("tau_rate", -0.5), ("tau_min", 0.0),
        ("tau_min", 2.0), ("ce_weight", -1.0), ("plateau_patience", -1), ("log_every", 0),
        ("betas_w", (0.9, 1.0)), ("betas_w", (-0.1, 0.9)), ("betas_a", (0.5, 1.5)),
        ("node_scale", 0.0), ("node_scale", 0.3))
    def test_out_of_range_is_refused_naming_the_flag(self, name, value):
        with self.assertRaisesRegex(ValueError, f"--{name} "):
            config_lib.validate(_with(**{name: value}))

    def test_node_scale_only_binds_spaces_with_scnas_cells(self):
        # ronasmis and c2fnas have no SCNAS nodes: width 2 (CI's tiny CLI runs) is valid.
        for strategy in ("ronasmis", "c2fnas"):
            config_lib.validate(_with(strategy=strategy, width=2))
        with self.assertRaisesRegex(ValueError, "divisible by 4"):
            config_lib.validate(_with(strategy="scnas", width=2))

    def test_data_ranges(self):
        config = _with()
        for field, value, flag in (("alpha_fraction", 1.0, "alpha_fraction"),
                                   ("num_folds", 1, "num_folds")):
            bad = dataclasses.replace(config, data=dataclasses.replace(
                config.data, **{field: value, "fold": 0}))
            with self.assertRaisesRegex(ValueError, f"--{flag}"):
                config_lib.validate(bad)


if __name__ == "__main__":
    absltest.main()
