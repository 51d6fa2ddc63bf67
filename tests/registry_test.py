"""spaces/registry.py: every space's entry resolves, and a genotype is checked by its own."""

from absl.testing import absltest

from jaxnas import config as config_lib
from jaxnas.modes import search as search_mode
from jaxnas.spaces import genotype as genotype_lib
from jaxnas.spaces import registry


class RegistryTest(absltest.TestCase):

    def test_every_entry_resolves_to_a_function(self):
        for name, space in registry.SPACES.items():
            self.assertEqual(space.name, name)
            for field in ("validate", "model", "draw"):
                self.assertTrue(callable(space.resolve(field)), (name, field))

    def test_unknown_space_is_one_line(self):
        with self.assertRaisesRegex(ValueError, "space must be one of"):
            registry.get("enas")

    def test_a_genotype_is_validated_by_its_space(self):
        bad = {"format": genotype_lib.FORMAT, "version": 2, "space": "ronasmis",
               "decisions": {"enc0/op": "no_such_op"}}
        with self.assertRaisesRegex(ValueError, "decision"):
            genotype_lib.validate_genotype(bad)
        scnas = genotype_lib.random_genotype(0)
        genotype_lib.validate_genotype(scnas)
        scnas["op_names"] = ["conv"]
        with self.assertRaisesRegex(ValueError, "op_names"):
            genotype_lib.validate_genotype(scnas)

    def test_only_scnas_has_cells(self):
        self.assertEqual([n for n, s in registry.SPACES.items() if s.has_cells], ["scnas"])

    def test_every_strategy_has_an_entry_point(self):
        self.assertEqual(set(search_mode.ENTRY_POINTS), set(config_lib.STRATEGIES))


if __name__ == "__main__":
    absltest.main()
