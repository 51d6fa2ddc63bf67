"""Analytic activation memory of SCNAS networks (spaces/scnas/cost.py): how it moves with
the ops chosen, the patch and the batch. Its calibration against XLA's buffers is
experiments/calibrate_memory.py (BENCHMARKS.md)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest

from jaxnas.search import bilevel
from jaxnas.spaces.scnas import cost
from jaxnas.spaces.scnas import space

KW = dict(in_channels=1, num_classes=3, width=16, stem_stride=2)


def _all(op: str) -> np.ndarray:
    return np.full((len(space.CELL_TYPES), space.NUM_EDGES), space.OP_NAMES.index(op))


class ActivationMemoryTest(absltest.TestCase):

    def test_linear_in_batch_and_voxels(self):
        index = np.random.default_rng(0).integers(0, space.NUM_OPS, (4, space.NUM_EDGES))
        one = cost.derived_activation_bytes(index, patch_size=(32,) * 3, batch_size=1, **KW)
        self.assertAlmostEqual(
            cost.derived_activation_bytes(index, patch_size=(32,) * 3, batch_size=2, **KW),
            2 * one, delta=1e-6 * one)
        self.assertAlmostEqual(
            cost.derived_activation_bytes(index, patch_size=(64, 32, 32), batch_size=1, **KW),
            2 * one, delta=1e-6 * one)

    def test_dearer_ops_keep_more(self):
        def mem(op):
            return cost.derived_activation_bytes(_all(op), patch_size=(32,) * 3, batch_size=1,
                                                 **KW)

        self.assertGreater(mem("conv_3x3x3"), mem("sep_conv_3x3x3_d2"))
        self.assertGreater(mem("sep_conv_3x3x3_d2"), mem("max_pool_3x3x3"))
        self.assertGreater(mem("max_pool_3x3x3"), mem("identity"))
        self.assertGreater(mem("identity"), mem("zero"))  # the reductions' factorized reduce


class MemoryCostTermTest(absltest.TestCase):
    """The search's memory term (--memory_weight): softmax(alpha) . table."""

    def test_table_is_the_edge_part_of_the_derived_estimate(self):
        index = np.random.default_rng(1).integers(0, space.NUM_OPS, (4, space.NUM_EDGES))
        table = cost.edge_memory_table(width=16, patch_size=(32,) * 3, batch_size=2,
                                       stem_stride=2)

        def gib(ix):  # one-hot alpha: softmax of large logits
            return float(cost.memory_cost(1e4 * jax.nn.one_hot(ix, space.NUM_OPS), table))

        def derived(ix):
            return cost.derived_activation_bytes(ix, patch_size=(32,) * 3, batch_size=2,
                                                 **KW) / 2**30

        zero = _all("zero")
        self.assertAlmostEqual(gib(index) - gib(zero), derived(index) - derived(zero),
                               delta=1e-4 * derived(index))

    def test_alpha_step_moves_away_from_dear_ops(self):
        table = cost.edge_memory_table(width=16, patch_size=(32,) * 3, batch_size=2,
                                       stem_stride=2)
        _, tx_a = bilevel.make_optimizers(lr_a=0.1)
        params = {"w": jnp.ones(())}
        state = bilevel.init_state(params, jnp.zeros((4, space.NUM_EDGES, space.NUM_OPS)),
                                   optax.adam(1e-3), tx_a)
        batch = {"image": jnp.ones((1, 2, 2, 2, 1)), "label": jnp.zeros((1, 2, 2, 2))}
        state, metrics = bilevel.arch_step(
            state.replace(step=jnp.asarray(1)), batch, jax.random.key(0),
            apply_fn=lambda p, image, choice: image * p["w"],  # alpha does not change it
            tx_a=tx_a, loss_fn=lambda logits, label: jnp.mean(logits**2),
            tau_fn=lambda step: jnp.float32(1.0),
            arch_cost_fn=lambda arch: 10.0 * cost.memory_cost(arch, table))
        probs = np.asarray(jax.nn.softmax(state.arch, axis=-1))
        conv, zero = space.OP_NAMES.index("conv_3x3x3"), space.ZERO_OP
        self.assertTrue(np.all(probs[..., conv] < 1 / space.NUM_OPS))
        self.assertTrue(np.all(probs[..., zero] > 1 / space.NUM_OPS))
        self.assertGreater(float(metrics["train/arch_cost"]), 0.0)


if __name__ == "__main__":
    absltest.main()
