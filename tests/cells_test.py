"""Cells: the switch form equals the dense (DARTS) form for 2-hot weights, in values and
gradients; unselected ops get zero gradient; one compile serves every sample; shapes."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from jaxnas.nn import ops
from jaxnas.spaces.scnas import cells
from jaxnas.spaces.scnas import space

C = 2  # node width
# cell type -> (s0 shape, s1 shape, s0_resize, output shape)
CONFIGS = {
    "reduction": ((1, 8, 8, 6, 4), (1, 8, 8, 6, 4), "same", (1, 4, 4, 3, 4 * C)),
    "normal_enc": ((1, 8, 8, 6, 4), (1, 4, 4, 3, 6), "down", (1, 4, 4, 3, 4 * C)),
    "expansion": ((1, 4, 4, 3, 6), (1, 4, 4, 3, 6), "same", (1, 8, 8, 6, 4 * C)),
    "normal_dec": ((1, 4, 4, 3, 6), (1, 8, 8, 6, 4), "up", (1, 8, 8, 6, 4 * C)),
}
# The two types compiled in full: two scans and stride-2 edges; an upsampled s0.
COMPILED = ("reduction", "normal_dec")


def _inputs(cell_type, seed=0):
    shape0, shape1, s0_resize, _ = CONFIGS[cell_type]
    key_p, key_0, key_1 = jax.random.split(jax.random.key(seed), 3)
    params = cells.init_cell(key_p, cell_type, shape0[-1], shape1[-1], C, s0_resize=s0_resize)
    return params, jax.random.normal(key_0, shape0), jax.random.normal(key_1, shape1)


def _sample(seed):
    """Two distinct ops per edge (every op appears) and random weights summing to 1."""
    rng = np.random.default_rng(seed)
    first = rng.permutation(np.arange(space.NUM_EDGES) % space.NUM_OPS)
    second = (first + rng.integers(1, space.NUM_OPS, size=space.NUM_EDGES)) % space.NUM_OPS
    weight = rng.dirichlet([1.0, 1.0], size=space.NUM_EDGES).astype(np.float32)
    return jnp.asarray(np.stack([first, second], -1), jnp.int32), jnp.asarray(weight)


def _two_hot(index, weight):
    """(14, 8) weights equal to `weight` at `index`, 0 elsewhere."""
    rows = np.arange(space.NUM_EDGES)[:, None]
    return jnp.zeros((space.NUM_EDGES, space.NUM_OPS)).at[rows, index].set(weight)


class CellTest(parameterized.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.index, cls.weight = _sample(0)
        cls.results = {}
        for cell_type in COMPILED:
            params, s0, s1 = _inputs(cell_type)
            cotangent = jax.random.normal(jax.random.key(9), CONFIGS[cell_type][3])

            def switch_loss(p, w, index, s0=s0, s1=s1, ct=cotangent, cell_type=cell_type):
                y = cells.apply_cell(p, s0, s1, index, w, cell_type=cell_type)
                return jnp.sum(y * ct), y

            # The dense reference runs the "xla" impl: it cross-checks the two impls of
            # every op inside a cell and compiles faster than all 8 "fast" ops.
            def dense_loss(p, w8, s0=s0, s1=s1, ct=cotangent, cell_type=cell_type):
                y = cells.apply_cell_dense(p, s0, s1, w8, cell_type=cell_type, impl="xla")
                return jnp.sum(y * ct), y

            def switch_step(p, w, index, switch_loss=switch_loss):
                return jax.value_and_grad(switch_loss, (0, 1), has_aux=True)(p, w, index)

            if cell_type == "reduction":  # chex counts traces per code object
                switch_step = chex.assert_max_traces(switch_step, n=1)
            switch = jax.jit(switch_step)
            dense = jax.jit(jax.value_and_grad(dense_loss, (0, 1), has_aux=True))
            cls.results[cell_type] = {
                "params": params,
                "switch_fn": switch,
                "switch": switch(params, cls.weight, cls.index),
                "dense": dense(params, _two_hot(cls.index, cls.weight)),
            }

    @parameterized.parameters(*COMPILED)
    def test_switch_equals_dense_output(self, cell_type):
        (_, y_switch), _ = self.results[cell_type]["switch"]
        (_, y_dense), _ = self.results[cell_type]["dense"]
        chex.assert_shape(y_switch, CONFIGS[cell_type][3])
        np.testing.assert_allclose(y_switch, y_dense, atol=1e-5, rtol=1e-5)

    @parameterized.parameters(*COMPILED)
    def test_switch_equals_dense_gradients(self, cell_type):
        _, (g_params_switch, g_weight) = self.results[cell_type]["switch"]
        _, (g_params_dense, g_weight8) = self.results[cell_type]["dense"]
        for a, b in zip(jax.tree.leaves(g_params_switch), jax.tree.leaves(g_params_dense)):
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
        rows = np.arange(space.NUM_EDGES)[:, None]
        np.testing.assert_allclose(g_weight, g_weight8[rows, self.index], atol=1e-4, rtol=1e-4)
        self.assertGreater(float(jnp.abs(g_weight).sum()), 0.0)

    @parameterized.parameters(*COMPILED)
    def test_unselected_ops_get_zero_gradient(self, cell_type):
        _, (g_params, _) = self.results[cell_type]["switch"]
        index = np.asarray(self.index)
        for g, (edges, _) in enumerate(cells.edge_groups(cell_type)):
            for k, e in enumerate(edges):
                for o, name in enumerate(space.OP_NAMES):
                    leaves = [leaf[k] for leaf in jax.tree.leaves(g_params["edges"][g][name])]
                    if o in index[e]:
                        continue
                    for leaf in leaves:
                        np.testing.assert_array_equal(leaf, 0.0, err_msg=f"edge {e} {name}")
        # Selected conv ops do learn.
        conv = space.OP_NAMES.index("conv_3x3x3")
        e = np.argwhere(index == conv)[0, 0]
        g, k = next(
            (g, list(edges).index(e))
            for g, (edges, _) in enumerate(cells.edge_groups(cell_type))
            if e in edges
        )
        self.assertGreater(float(jnp.abs(g_params["edges"][g]["conv_3x3x3"]["w"][k]).sum()), 0)

    def test_one_compile_serves_every_sample(self):
        result = self.results["reduction"]
        for seed in (1, 2, 3):
            index, weight = _sample(seed)
            (loss, _), _ = result["switch_fn"](result["params"], weight, index)
            self.assertTrue(np.isfinite(loss))

    def test_scan_matches_unrolled_reference(self):
        params, s0, s1 = _inputs("reduction")
        two_hot = _two_hot(self.index, self.weight)
        unrolled = jax.jit(
            lambda p, w: cells.apply_cell_dense(
                p, s0, s1, w, cell_type="reduction", impl="xla", scan=False
            )
        )(params, two_hot)
        (_, y_switch), _ = self.results["reduction"]["switch"]
        np.testing.assert_allclose(y_switch, unrolled, atol=1e-5, rtol=1e-5)

    @parameterized.parameters(*space.CELL_TYPES)
    def test_output_shapes(self, cell_type):
        params, s0, s1 = _inputs(cell_type)
        expected = CONFIGS[cell_type][3]
        y = jax.eval_shape(
            lambda p, a, b: cells.apply_cell(p, a, b, self.index, self.weight, cell_type=cell_type),
            params,
            s0,
            s1,
        )
        chex.assert_shape(y, expected)
        y_dense = jax.eval_shape(
            lambda p, a, b: cells.apply_cell_dense(
                p, a, b, _two_hot(self.index, self.weight), cell_type=cell_type
            ),
            params,
            s0,
            s1,
        )
        chex.assert_shape(y_dense, expected)

    def test_edge_groups_cover_every_edge_once(self):
        for cell_type in space.CELL_TYPES:
            edges = [e for group, _ in cells.edge_groups(cell_type) for e in group]
            self.assertCountEqual(edges, range(space.NUM_EDGES))
        self.assertEqual([s for _, s in cells.edge_groups("reduction")], [2, 1])
        self.assertTrue(all(space.EDGE_SRC[e] < 2 for e in cells.INPUT_EDGES))

    def test_mismatched_s0_raises(self):
        params, _, s1 = _inputs("normal_enc")  # initialised for a finer s0
        with self.assertRaisesRegex(ValueError, "s0_resize"):
            jax.eval_shape(
                lambda p: cells.apply_cell(
                    p, s1, s1, self.index, self.weight, cell_type="normal_enc"
                ),
                params,
            )

    def test_params_match_spec(self):
        params, _, _ = _inputs("reduction")
        spec = cells.cell_spec("reduction", 4, 4, C)
        self.assertEqual(sum(x.size for x in jax.tree.leaves(params)), ops.num_spec_params(spec))
        self.assertEqual(params["edges"][0]["conv_3x3x3"]["w"].shape, (8, 3, 3, 3, C, C))


if __name__ == "__main__":
    absltest.main()
