"""C2FNAS: the U-path space (validity, counts, sampling, grouping), the supernet with a
traced topology (one compile, several topologies), derived == supernet with one-hot op
weights, a training step's gradients, multiply-adds, and the genotype JSON.

The supernet forward and the training step are compiled once per class with impl="xla"
(compiles faster here); one "fast" forward checks the CPU impl against it.
"""

import functools
import itertools
import math

import chex
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from jaxnas.nn import losses
from jaxnas.spaces import c2fnas
from tests import fixtures

SHAPE = (1, 16, 16, 16, 1)
WIDTH, NUM_CLASSES = 4, 3
# Peaks at levels 3, 1 and 2 (the last never visits level 3).
TOPOLOGIES = (
    (1, 2, 3, 3, 2, 1, 1, 0, 0, 0, 0, 0),
    (0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0),
    (0, 1, 1, 2, 2, 2, 1, 1, 0, 0, 0, 0),
)
OPS = (0, 1, 2, 0, 1, 2, 0, 1, 2, 2, 1, 0)


class TopologySpaceTest(absltest.TestCase):
    def test_enumerated_topologies_are_valid_u_paths(self):
        topologies = c2fnas.enumerate_topologies()
        chex.assert_shape(topologies, (1485, c2fnas.NUM_CELLS))
        # k steps down and k up among 12 steps, k = 1..3 (module docstring).
        self.assertEqual(len(topologies), sum(math.comb(12, 2 * k) for k in (1, 2, 3)))
        self.assertLen({tuple(t) for t in topologies}, len(topologies))
        for t in topologies:
            self.assertTrue(c2fnas.is_valid_topology(t), t)
            self.assertEqual(c2fnas.check_topology(t), tuple(int(l) for l in t))

    def test_count_matches_brute_force(self):
        brute = [
            t
            for t in itertools.product(range(3), repeat=6)
            if c2fnas.is_valid_topology(t, num_cells=6, num_levels=3)
        ]
        got = c2fnas.enumerate_topologies(num_cells=6, num_levels=3)
        self.assertEqual(sorted(brute), [tuple(int(l) for l in t) for t in got])
        self.assertLen(brute, math.comb(6, 2) + math.comb(6, 4))

    def test_invalid_topologies_say_why(self):
        cases = {
            "jumps from level 1 to 3": (1, 3, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0),
            "ends at level 0": (1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1),
            "goes down again .* after going up at cell 3": (1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0),
            "never leaves level 0": (0,) * 12,
            "cell 4 is at level 4, outside": (1, 2, 3, 4, 3, 2, 1, 0, 0, 0, 0, 0),
            "cell 1 jumps from level 0 to 2": (2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
            "11 cells": (1,) + (0,) * 10,
            "not an integer": (1.0,) + (0,) * 11,
        }
        for reason, t in cases.items():
            self.assertFalse(c2fnas.is_valid_topology(t), t)
            with self.assertRaisesRegex(ValueError, reason):
                c2fnas.check_topology(t)

    def test_sampled_topologies_are_distinct_and_valid(self):
        sample = c2fnas.sample_topologies(np.random.default_rng(0), 200)
        chex.assert_shape(sample, (200, 12))
        self.assertLen({tuple(t) for t in sample}, 200)
        self.assertTrue(all(c2fnas.is_valid_topology(t) for t in sample))
        np.testing.assert_array_equal(sample, c2fnas.sample_topologies(0, 200))  # seeded
        small = c2fnas.sample_topologies(1, 30, num_cells=6, num_levels=3)
        self.assertLen({tuple(t) for t in small}, 30)  # the whole space, no repeats

    def test_grouping(self):
        topologies = c2fnas.sample_topologies(0, 300)
        topologies = np.concatenate([topologies, topologies[:50]])  # duplicates
        labels = c2fnas.group_topologies(topologies, 16, seed=0)
        chex.assert_shape(labels, (350,))
        k = labels.max() + 1
        self.assertLessEqual(k, 16)
        np.testing.assert_array_equal(np.unique(labels), np.arange(k))
        np.testing.assert_array_equal(labels[:50], labels[300:])
        np.testing.assert_array_equal(labels, c2fnas.group_topologies(topologies, 16, seed=0))
        # More groups than distinct topologies: at most one group per topology.
        few = c2fnas.group_topologies(np.asarray(TOPOLOGIES * 2), 10, seed=1)
        np.testing.assert_array_equal(few[:3], few[3:])
        self.assertLen(set(few[:3]), 3)


def _loss(params, image, labels, topology, op_weights):
    logits = c2fnas.apply_supernet(params, image, topology, op_weights, impl="xla")
    return losses.dice_ce(logits, labels, num_classes=NUM_CLASSES)


class SupernetTest(absltest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.params = c2fnas.init_supernet(
            jax.random.key(0), in_channels=SHAPE[-1], num_classes=NUM_CLASSES, width=WIDTH
        )
        key_x, key_y = jax.random.split(jax.random.key(1))
        cls.image = jax.random.normal(key_x, SHAPE)
        cls.labels = jax.random.randint(key_y, SHAPE[:4], 0, NUM_CLASSES)
        # staticmethod: a jitted function is a descriptor and would bind to the instance.
        cls.forward = staticmethod(jax.jit(functools.partial(c2fnas.apply_supernet, impl="xla")))
        cls.step = staticmethod(jax.jit(jax.value_and_grad(_loss)))

    def test_one_compile_serves_every_topology(self):
        weights = c2fnas.uniform_weights()
        outputs = []
        for t in TOPOLOGIES:
            logits = self.forward(self.params, self.image, jnp.asarray(t, jnp.int32), weights)
            chex.assert_shape(logits, (*SHAPE[:4], NUM_CLASSES))
            chex.assert_tree_all_finite(logits)
            outputs.append(np.asarray(logits))
        self.assertEqual(self.forward._cache_size(), 1)
        self.assertGreater(np.abs(outputs[0] - outputs[1]).max(), 1e-3)  # topology matters

    def test_derived_equals_supernet_with_one_hot_weights(self):
        t = TOPOLOGIES[0]
        want = self.forward(self.params, self.image, jnp.asarray(t), jax.nn.one_hot(jnp.asarray(OPS), len(c2fnas.OP_NAMES)))
        derived = c2fnas.compact_params(self.params, t, OPS)
        got = jax.jit(lambda p, x: c2fnas.apply_derived(p, x, t, OPS, impl="xla"))(
            derived, self.image
        )
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
        # compact_params has the structure (and shapes) of a freshly drawn derived network.
        spec = c2fnas.derived_spec(
            t, OPS, in_channels=SHAPE[-1], num_classes=NUM_CLASSES, width=WIDTH
        )
        fresh = jax.eval_shape(lambda k: c2fnas.init_derived(
            k, t, OPS, in_channels=SHAPE[-1], num_classes=NUM_CLASSES, width=WIDTH
        ), jax.random.key(0))
        chex.assert_trees_all_equal_shapes(fresh, derived)
        self.assertEqual(jax.tree.structure(fresh), jax.tree.structure(derived))
        self.assertEqual(len(jax.tree.leaves(derived)), len(jax.tree.leaves(
            spec, is_leaf=lambda s: hasattr(s, "rule"))))

    def test_fast_equals_xla(self):
        t, weights = jnp.asarray(TOPOLOGIES[2]), c2fnas.uniform_weights()
        fast = jax.jit(functools.partial(c2fnas.apply_supernet, impl="fast"))
        np.testing.assert_allclose(
            fast(self.params, self.image, t, weights),
            self.forward(self.params, self.image, t, weights),
            atol=1e-4, rtol=1e-4,
        )

    def test_training_step_gradients(self):
        weights = jax.nn.softmax(jax.random.normal(jax.random.key(2), (12, 3)))
        for t in (TOPOLOGIES[0], TOPOLOGIES[2]):
            loss, grads = self.step(self.params, self.image, self.labels, jnp.asarray(t), weights)
            chex.assert_tree_all_finite((loss, grads))
            self.assertGreater(float(loss), 0.0)
            norms = [
                max(float(jnp.abs(g).max()) for g in jax.tree.leaves(level))
                for level in grads["cells"]
            ]
            for level, norm in enumerate(norms):
                visited = level in t
                self.assertEqual(norm > 0, visited, f"topology {t}, level {level}")
            # Per cell: the ops of the level it is at get gradients, other levels none.
            op_grads = grads["cells"][0]["ops"]["conv_3x3x3"]["w"]  # (12, 3, 3, 3, c, c)
            at_zero = np.asarray(t) == 0
            cell_norms = np.abs(np.asarray(op_grads)).reshape(12, -1).max(axis=1)
            np.testing.assert_array_equal(cell_norms > 0, at_zero)
            self.assertGreater(float(jnp.abs(grads["stem"]["w"]).max()), 0.0)
        self.assertEqual(self.step._cache_size(), 1)


class CostTest(absltest.TestCase):
    def test_macs_match_the_traced_convs(self):
        shape, width, classes = (1, 16, 8, 24, 2), 3, 5  # anisotropic
        for t in TOPOLOGIES:
            params = jax.eval_shape(lambda k, t=t: c2fnas.init_derived(
                k, t, OPS, in_channels=shape[-1], num_classes=classes, width=width
            ), jax.random.key(0))
            jaxpr = jax.make_jaxpr(
                lambda p, x, t=t: c2fnas.apply_derived(p, x, t, OPS, impl="xla")
            )(params, jax.ShapeDtypeStruct(shape, jnp.float32))
            macs = c2fnas.derived_macs(
                t, OPS, in_channels=shape[-1], num_classes=classes, width=width,
                patch_size=shape[1:4],
            )
            self.assertGreater(macs, 0)
            self.assertEqual(macs, fixtures.conv_macs_in_jaxpr(jaxpr.jaxpr))

    def test_3d_costs_more_than_2d_and_p3d(self):
        kwargs = dict(in_channels=1, num_classes=3, width=8, patch_size=(32, 32, 32))
        t = TOPOLOGIES[0]
        costs = [c2fnas.derived_macs(t, (k,) * 12, **kwargs) for k in range(3)]
        names = dict(zip(c2fnas.OP_NAMES, costs))
        self.assertGreater(names["conv_3x3x3"], names["p3d_3x3x1_1x1x3"])
        self.assertGreater(names["p3d_3x3x1_1x1x3"], names["conv_3x3x1"])
        # Going deeper is cheaper per cell (8x fewer voxels, 4x the channels squared).
        shallow = c2fnas.derived_macs((0,) * 5 + (1, 0) + (0,) * 5, (1,) * 12, **kwargs)
        deep = c2fnas.derived_macs((1, 2, 3, 3, 3, 3, 3, 3, 3, 2, 1, 0), (1,) * 12, **kwargs)
        self.assertGreater(shallow, deep)


class GenotypeJsonTest(absltest.TestCase):
    def test_round_trip(self):
        d = c2fnas.to_json(TOPOLOGIES[0], OPS)
        self.assertEqual(d["topology"], list(TOPOLOGIES[0]))
        self.assertEqual(d["ops"][:3], list(c2fnas.OP_NAMES))
        self.assertEqual(c2fnas.from_json(d), (TOPOLOGIES[0], OPS))
        self.assertEqual(c2fnas.to_json(TOPOLOGIES[0], d["ops"]), d)  # names accepted too
        self.assertEqual(c2fnas.to_json(np.asarray(TOPOLOGIES[0]), np.asarray(OPS)), d)

    def test_errors_name_the_field(self):
        good = c2fnas.to_json(TOPOLOGIES[0], OPS)
        cases = [
            ({**good, "topology": [1, 3] + [0] * 10}, "'topology'.*jumps from level 1 to 3"),
            ({**good, "ops": good["ops"][:-1] + ["conv_5x5x5"]},
             "'ops'.*cell 12 has unknown op 'conv_5x5x5'.*conv_3x3x1"),
            ({**good, "ops": good["ops"][:5]}, "'ops' has 5 entries"),
            ({"topology": good["topology"]}, "'ops' must be a list"),
            ([], "must be a dict"),
        ]
        for d, message in cases:
            with self.assertRaisesRegex(ValueError, message):
                c2fnas.from_json(d)
        with self.assertRaisesRegex(ValueError, "unknown op 'max_pool'"):
            c2fnas.to_json(TOPOLOGIES[0], ["max_pool"] * 12)


if __name__ == "__main__":
    absltest.main()
