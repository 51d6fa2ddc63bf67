"""Tests of jaxnas.genotype: derivation, JSON round trip and clear errors."""

import json
import os
import tempfile

import numpy as np
from absl.testing import absltest

from jaxnas.spaces import genotype as genotype_lib
from jaxnas.spaces.scnas import space


def _arch():
    arch = np.random.default_rng(0).normal(size=(4, 14, 8)).astype(np.float32)
    arch[1, 5] = 0.0
    arch[1, 5, space.ZERO_OP] = 3.0
    return arch


class GenotypeTest(absltest.TestCase):
    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp()

    def test_derive(self):
        arch = _arch()
        genotype = genotype_lib.derive_genotype(arch)
        self.assertEqual(genotype["version"], genotype_lib.VERSION)
        self.assertEqual(list(genotype["cells"]), list(space.CELL_TYPES))
        edge = genotype["cells"]["normal_enc"][5]
        self.assertEqual(edge["op"], "zero")
        self.assertEqual((edge["src"], edge["dst"]), (space.EDGE_SRC[5], space.EDGE_DST[5]))
        self.assertAlmostEqual(sum(edge["probs"]), 1.0, places=6)
        np.testing.assert_array_equal(genotype_lib.genotype_to_indices(genotype),
                                      np.argmax(arch, axis=-1))
        json.dumps(genotype)  # JSON-ready as is

    def test_round_trip_with_extra(self):
        genotype = genotype_lib.derive_genotype(_arch())
        path = os.path.join(self.dir, "genotype.json")
        genotype_lib.save_genotype(path, genotype, extra={"params": np.int64(12345),
                                                          "gflops": np.float32(1.5)})
        loaded = genotype_lib.load_genotype(path)
        self.assertEqual(loaded["extra"], {"params": 12345, "gflops": 1.5})
        self.assertEqual(loaded["cells"], genotype["cells"])
        self.assertEqual(os.listdir(self.dir), ["genotype.json"])  # no temp file left

    def test_bad_files_name_the_file(self):
        path = os.path.join(self.dir, "bad.json")
        broken = genotype_lib.derive_genotype(_arch())
        broken["cells"]["reduction"][3]["op"] = "conv_9x9x9"
        for content in ["{not json", json.dumps({"format": "other"}), json.dumps(broken)]:
            with open(path, "w") as f:
                f.write(content)
            with self.assertRaisesRegex(ValueError, "bad.json"):
                genotype_lib.load_genotype(path)

    def test_wrong_arch_shape(self):
        with self.assertRaisesRegex(ValueError, "shape"):
            genotype_lib.derive_genotype(np.zeros((4, 14, 7)))


if __name__ == "__main__":
    absltest.main()
