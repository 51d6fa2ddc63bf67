"""The fixed (derived) network: compact params cut from the supernet give the supernet's
logits, fresh params have the same structure, it trains, zero edges and dead nodes, and
the cell drawing.

Shapes are tiny (16^3, width 4) and each class compiles its programs once.
"""

import os
import tempfile

import chex
import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import optax
from absl.testing import absltest

from jaxnas.nn import losses
from jaxnas.nn import ops
from jaxnas.search import bilevel
from jaxnas.spaces import cell_drawing
from jaxnas.spaces import genotype as genotype_lib
from jaxnas.spaces.scnas import fixed_network
from jaxnas.spaces.scnas import network
from jaxnas.spaces.scnas import space

SHAPE = (1, 16, 16, 16, 2)
WIDTH, NUM_CLASSES = 4, 3
ZERO, IDENTITY = space.ZERO_OP, space.OP_NAMES.index("identity")
CONV = space.OP_NAMES.index("conv_3x3x3")
REDUCTION, NORMAL_DEC = space.CELL_TYPES.index("reduction"), space.CELL_TYPES.index("normal_dec")
# Edges into node 1 (its sources s0, s1, node 0).
NODE1_EDGES = tuple(e for e in range(space.NUM_EDGES) if space.EDGE_DST[e] == 1)


def _index(seed: int) -> np.ndarray:
    """A random (4, 14) op index with zero edges, a dead node and identity edges."""
    index = np.random.default_rng(seed).integers(0, space.NUM_OPS, (4, 14)).astype(np.int32)
    index[REDUCTION, 0] = IDENTITY  # s0 -> node 0, stride 2: factorized reduce
    index[REDUCTION, 1] = ZERO  # s1 -> node 0
    index[REDUCTION, 4] = IDENTITY  # node 0 -> node 1, stride 1: no params
    index[NORMAL_DEC, list(NODE1_EDGES)] = ZERO  # node 1 of normal_dec cells is dead
    index[NORMAL_DEC, 8] = IDENTITY  # ... and feeds node 2 (zeros through identity)
    return index


def _image(key: int = 1) -> jax.Array:
    return jax.random.normal(jax.random.key(key), SHAPE)


_APPLY_FIXED = jax.jit(fixed_network.apply_fixed, static_argnames=("index", "impl"))
_APPLY_NETWORK = jax.jit(network.apply_network, static_argnames=("impl",))


class CompactFromSupernetTest(absltest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.supernet = network.init_network(
            jax.random.key(0), in_channels=SHAPE[-1], num_classes=NUM_CLASSES, width=WIDTH
        )
        cls.index = _index(0)
        cls.compact = fixed_network.compact_from_supernet(cls.supernet, cls.index)
        cls.image = _image()

    def test_parameter_count(self):
        count = network.num_params(self.compact)
        self.assertEqual(count, network.num_params_derived(self.supernet, self.index))
        self.assertLess(count, network.num_params(self.supernet))

    def test_zero_edges_have_no_params(self):
        for spec, cell in zip(network.topology(), self.compact["cells"]):
            live = {str(e) for e in range(space.NUM_EDGES)
                    if self.index[spec.type_index, e] != ZERO}
            self.assertEqual(set(cell["edges"]), live)
        reduction = self.compact["cells"][0]["edges"]
        self.assertIn("w_even", reduction["0"])  # identity with stride 2
        self.assertEqual(reduction["4"], {})  # identity with stride 1

    def _check_equal(self, impl):
        static = fixed_network.static_index(self.index)
        fixed = _APPLY_FIXED(self.compact, self.image, static, impl=impl)
        choice = bilevel.choice_from_indices(self.index)
        supernet = _APPLY_NETWORK(self.supernet, self.image, choice, impl=impl)
        chex.assert_shape(fixed, (*SHAPE[:4], NUM_CLASSES))
        self.assertGreater(float(jnp.std(fixed)), 0.0)
        np.testing.assert_allclose(fixed, supernet, atol=1e-4, rtol=1e-4)

    def test_equals_supernet_fast(self):
        self._check_equal("fast")

    def test_equals_supernet_xla(self):
        self._check_equal("xla")

    def test_init_has_the_compact_structure(self):
        fresh = fixed_network.init_fixed(
            jax.random.key(3), self.index, in_channels=SHAPE[-1], num_classes=NUM_CLASSES,
            width=WIDTH,
        )
        self.assertEqual(jax.tree.structure(fresh), jax.tree.structure(self.compact))
        shapes = lambda tree: jax.tree.map(lambda a: a.shape, tree)  # noqa: E731
        self.assertEqual(shapes(fresh), shapes(self.compact))

    def test_index_must_be_static_and_valid(self):
        with self.assertRaisesRegex(ValueError, "shape"):
            fixed_network.static_index(np.zeros((4, 13), np.int32))
        with self.assertRaisesRegex(ValueError, "op indices"):
            fixed_network.static_index(np.full((4, 14), space.NUM_OPS))
        with self.assertRaisesRegex(TypeError, "static"):
            jax.jit(fixed_network.static_index)(jnp.asarray(self.index))
        self.assertEqual(hash(fixed_network.static_index(self.index)),
                         hash(fixed_network.static_index(self.index.tolist())))


class TrainFixedTest(absltest.TestCase):
    """A jitted Adam step on the fixed network (impl="xla": the cheaper compile)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.index = fixed_network.static_index(_index(1))
        cls.params = fixed_network.init_fixed(
            jax.random.key(0), cls.index, in_channels=SHAPE[-1], num_classes=NUM_CLASSES,
            width=WIDTH,
        )
        cls.optimizer = optax.adam(1e-2)
        image = _image()
        labels = (image[..., 0] > 0).astype(jnp.int32) + (image[..., 1] > 1).astype(jnp.int32)

        @jax.jit
        def step(params, opt_state):
            def loss_fn(p):
                logits = fixed_network.apply_fixed(p, image, cls.index, impl="xla")
                return losses.dice_ce(logits, labels, ce_weight=1.0)

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = cls.optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        cls.new_params, _, cls.loss = step(cls.params, cls.optimizer.init(cls.params))

    def test_loss_finite_and_params_change(self):
        self.assertTrue(np.isfinite(float(self.loss)))
        self.assertGreater(float(self.loss), 0.0)
        chex.assert_tree_all_finite(self.new_params)
        for path in (("stem", "w"), ("out", "w")):
            old, new = self.params, self.new_params
            for key in path:
                old, new = old[key], new[key]
            self.assertGreater(float(jnp.abs(new - old).max()), 0.0)

    def test_one_live_edge_network_builds(self):
        index = np.full((4, 14), ZERO, np.int32)
        index[NORMAL_DEC, 0] = CONV  # s0 -> node 0 of the three normal_dec cells
        params = fixed_network.init_fixed(
            jax.random.key(0), index, in_channels=SHAPE[-1], num_classes=NUM_CLASSES,
            width=WIDTH,
        )
        live = [i for i, cell in enumerate(params["cells"]) if cell["edges"]]
        self.assertEqual(live, [7, 9, 11])
        logits = fixed_network.apply_fixed(params, _image(), index, impl="xla")
        chex.assert_shape(logits, (*SHAPE[:4], NUM_CLASSES))
        chex.assert_tree_all_finite(logits)


class FixedCellTest(absltest.TestCase):
    def _cell(self, cell_type, cell_index, s0_resize="same"):
        c = 4
        spec = fixed_network.fixed_cell_spec(cell_type, 6, 8, c, cell_index, s0_resize=s0_resize)
        return ops.init_params(jax.random.key(0), spec), c

    def test_dead_node_is_zeros(self):
        for cell_type in ("reduction", "normal_enc"):
            cell_index = np.full(14, CONV, np.int32)
            cell_index[list(NODE1_EDGES)] = ZERO
            params, c = self._cell(cell_type, cell_index)
            keys = jax.random.split(jax.random.key(1))
            s0 = jax.random.normal(keys[0], (1, 8, 8, 8, 6))
            s1 = jax.random.normal(keys[1], (1, 8, 8, 8, 8))
            out = fixed_network.apply_fixed_cell(
                params, s0, s1, cell_index, cell_type=cell_type, impl="xla"
            )
            n = 4 if cell_type == "reduction" else 8
            chex.assert_shape(out, (1, n, n, n, space.NUM_NODES * c))
            np.testing.assert_array_equal(out[..., c : 2 * c], 0.0)
            for j in (0, 2, 3):
                self.assertGreater(float(jnp.abs(out[..., j * c : (j + 1) * c]).max()), 0.0)


class CellDrawingTest(absltest.TestCase):
    def test_draw_and_save(self):
        arch = np.random.default_rng(0).normal(size=(4, 14, 8))
        arch[0, :5, ZERO] = 10.0  # zero edges, node 0 and 1 of reduction cells dead
        genotype = genotype_lib.derive_genotype(arch)
        image = cell_drawing.draw_genotype(genotype)
        self.assertEqual(image.dtype, np.uint8)
        self.assertEqual(image.ndim, 3)
        self.assertEqual(image.shape[-1], 3)
        self.assertGreater(min(image.shape[:2]), 100)
        self.assertGreater(len(np.unique(image.reshape(-1, 3), axis=0)), 10)  # not blank
        path = os.path.join(tempfile.mkdtemp(), "genotype.png")
        cell_drawing.save_genotype_drawing(path, genotype)
        self.assertTrue(os.path.exists(path))
        self.assertEqual(matplotlib.image.imread(path).shape[:2], image.shape[:2])


if __name__ == "__main__":
    absltest.main()


class StrideTwoStemTest(absltest.TestCase):
    """stem_stride 2: cells on a half-resolution grid, full-resolution logits."""

    def test_supernet_and_fixed_agree_and_count(self):
        image = jax.random.normal(jax.random.key(3), (1, 32, 16, 16, SHAPE[-1]))
        supernet = network.init_network(jax.random.key(0), in_channels=SHAPE[-1],
                                        num_classes=NUM_CLASSES, width=WIDTH, stem_stride=2)
        self.assertEqual(network.stem_stride(supernet), 2)
        index = _index(1)
        compact = fixed_network.compact_from_supernet(supernet, index)
        want = _APPLY_NETWORK(supernet, image, bilevel.choice_from_indices(index), impl="fast")
        got = _APPLY_FIXED(compact, image, index=fixed_network.static_index(index),
                           impl="fast")
        self.assertEqual(got.shape, (1, 32, 16, 16, NUM_CLASSES))
        np.testing.assert_allclose(got, want, atol=1e-4)
        self.assertEqual(network.num_params(compact),
                         network.num_params_derived(supernet, index))
        fresh = fixed_network.init_fixed(jax.random.key(2), index, in_channels=SHAPE[-1],
                                         num_classes=NUM_CLASSES, width=WIDTH, stem_stride=2)
        self.assertEqual(jax.tree.structure(fresh), jax.tree.structure(compact))
        with self.assertRaisesRegex(ValueError, "divisible by 16"):
            network.apply_network(supernet, image[:, :24], bilevel.choice_from_indices(index))
