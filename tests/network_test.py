"""The supernet: logits shape, one compile for every sample, gradient to the op weights,
switch form == dense form for 2-hot weights, wiring and parameter counts.

The network is compiled with impl="xla": it compiles ~1.5x faster than "fast" on this
CPU, and ops_test / cells_test already check that both impls agree op by op and in cells.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from jaxnas.nn import ops
from jaxnas.spaces.scnas import network
from jaxnas.spaces.scnas import space

SHAPE = (1, 16, 16, 16, 1)
WIDTH, NUM_CLASSES = 4, 3
IMPL = "xla"


def _sample(seed):
    """An op_choice: two distinct ops per (cell type, edge), weights summing to 1."""
    rng = np.random.default_rng(seed)
    shape = (space.NUM_CELL_TYPES, space.NUM_EDGES)
    first = rng.integers(0, space.NUM_OPS, size=shape)
    second = (first + rng.integers(1, space.NUM_OPS, size=shape)) % space.NUM_OPS
    weight = rng.dirichlet([1.0, 1.0], size=shape).astype(np.float32)
    return {
        "index": jnp.asarray(np.stack([first, second], -1), jnp.int32),
        "weight": jnp.asarray(weight),
    }


@chex.assert_max_traces(n=1)
def _step(params, image, op_choice):
    """Loss, logits and gradients w.r.t. params and the op weights."""

    def loss_fn(p, weight):
        logits = network.apply_network(
            p,
            image,
            {"index": op_choice["index"], "weight": weight},
            width=WIDTH,
            num_classes=NUM_CLASSES,
            impl=IMPL,
        )
        return jnp.mean(jnp.square(logits - 1.0)), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, (0, 1), has_aux=True)(
        params, op_choice["weight"]
    )
    return loss, logits, grads


_STEP = jax.jit(_step)


class NetworkTest(absltest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.params = network.init_network(
            jax.random.key(0), in_channels=SHAPE[-1], num_classes=NUM_CLASSES, width=WIDTH
        )
        cls.image = jax.random.normal(jax.random.key(1), SHAPE)
        cls.choice = _sample(0)
        cls.result = _STEP(cls.params, cls.image, cls.choice)

    def test_logits_shape_and_finite(self):
        loss, logits, grads = self.result
        chex.assert_shape(logits, (*SHAPE[:4], NUM_CLASSES))
        chex.assert_tree_all_finite((loss, logits, grads))

    def test_one_compile_serves_every_sample(self):
        losses = [float(self.result[0])]
        for seed in (1, 2):
            losses.append(float(_STEP(self.params, self.image, _sample(seed))[0]))
        self.assertLen(set(losses), 3)  # different architectures, same program

    def test_gradients_reach_op_weights_and_params(self):
        _, _, (g_params, g_weight) = self.result
        chex.assert_shape(g_weight, (space.NUM_CELL_TYPES, space.NUM_EDGES, 2))
        for t in range(space.NUM_CELL_TYPES):  # every cell type's sample matters
            self.assertGreater(float(jnp.abs(g_weight[t]).sum()), 0.0)
        self.assertGreater(float(jnp.abs(g_params["stem"]["w"]).sum()), 0.0)
        self.assertGreater(float(jnp.abs(g_params["out"]["w"]).sum()), 0.0)

    def test_dense_equals_switch_for_two_hot_weights(self):
        index, weight = np.asarray(self.choice["index"]), self.choice["weight"]
        t, e = np.meshgrid(
            np.arange(space.NUM_CELL_TYPES), np.arange(space.NUM_EDGES), indexing="ij"
        )
        dense_weights = jnp.zeros((space.NUM_CELL_TYPES, space.NUM_EDGES, space.NUM_OPS))
        dense_weights = dense_weights.at[t[..., None], e[..., None], index].set(weight)
        dense = jax.jit(lambda p, x, w: network.apply_network_dense(p, x, w, impl=IMPL))
        np.testing.assert_allclose(
            dense(self.params, self.image, dense_weights), self.result[1], atol=1e-4, rtol=1e-4
        )

    def test_topology(self):
        specs = network.topology()
        self.assertEqual(tuple(s.cell_type for s in specs), space.CELL_LAYOUT)
        self.assertEqual([s.level for s in specs], [1, 1, 2, 2, 3, 3, 2, 2, 1, 1, 0, 0])
        # Decoder skips: encoder output at s1's level; none where s1 is that output.
        self.assertEqual([s.skip for s in specs[6:]], [None, 3, 3, 1, 1, network.STEM])
        self.assertEqual([s.s0_resize for s in specs], ["same", "down"] * 3 + ["same", "up"] * 3)

    def test_parameter_counts(self):
        # Default schedule at the paper's width: cell outputs 32, 64, 128, 256 channels.
        spec = network.network_spec(in_channels=4, num_classes=4, width=32)
        self.assertEqual(ops.num_spec_params(spec), 6_204_644)
        self.assertEqual(
            network.num_params(self.params),
            ops.num_spec_params(
                network.network_spec(in_channels=1, num_classes=NUM_CLASSES, width=WIDTH)
            ),
        )
        self.assertEqual(network.node_widths(32), (8, 16, 32, 64))
        # No skip needs an alignment conv with the default schedule; DARTS widths do.
        self.assertEqual(spec["skips"], {})
        darts = network.network_spec(in_channels=4, num_classes=4, width=8, node_scale=1.0)
        self.assertEqual(set(darts["skips"]), {"11"})

    def test_skip_alignment_conv_traces(self):
        # node_scale 1/2: decoder outputs at full resolution have 2 * width channels, the
        # stem has width: the skip into the last cell needs the 1x1x1 alignment conv.
        params = jax.eval_shape(
            lambda k: network.init_network(
                k, in_channels=1, num_classes=NUM_CLASSES, width=WIDTH, node_scale=0.5
            ),
            jax.random.key(0),
        )
        self.assertEqual(set(params["skips"]), {"11"})
        logits = jax.eval_shape(
            lambda p: network.apply_network(p, self.image, self.choice, impl=IMPL), params
        )
        chex.assert_shape(logits, (*SHAPE[:4], NUM_CLASSES))

    def test_derived_parameter_count(self):
        everything_zero = np.full((space.NUM_CELL_TYPES, space.NUM_EDGES), space.ZERO_OP)
        all_conv = np.zeros_like(everything_zero)
        shared = network.num_params_derived(self.params, everything_zero)
        self.assertLess(shared, network.num_params_derived(self.params, all_conv))
        self.assertLess(
            network.num_params_derived(self.params, all_conv), network.num_params(self.params)
        )

    def test_bad_patch_size_raises(self):
        with self.assertRaisesRegex(ValueError, "divisible by 8"):
            network.apply_network(self.params, jnp.zeros((1, 12, 16, 16, 1)), self.choice)
        with self.assertRaisesRegex(ValueError, "width"):
            network.apply_network(self.params, self.image, self.choice, width=8)


if __name__ == "__main__":
    absltest.main()
