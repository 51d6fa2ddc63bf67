"""Tests of jaxnas.search: the Algorithm 2 sampler, tau, optimizers and the bi-level steps.

The network is a toy: per op a 1x1x1 linear map with its own nonlinearity, selected by
`lax.switch` on the traced indices (as the real network does) inside a `lax.scan` over
the 4 x 14 edges.
"""

import functools
import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from jaxnas.nn import losses
from jaxnas.search import bilevel
from jaxnas.search import schedules
from jaxnas.spaces.scnas import space

CHANNELS, CLASSES = 2, 3
SHAPE = (1, 6, 6, 4)  # b, x, y, z
_ACTIVATIONS = (
    jnp.tanh, jax.nn.relu, jnp.sin, jnp.cos, jax.nn.sigmoid, jax.nn.softplus, lambda v: v,
    jnp.zeros_like,
)


def toy_apply(params, image, op_choice):
    """logits (b, x, y, z, k) = mean over edges and slots of w * act_i(image @ W_i)."""
    branches = [
        functools.partial(lambda i, w, x: _ACTIVATIONS[i](x @ w[i]), i)
        for i in range(space.NUM_OPS)
    ]

    def edge(logits, choice):
        index, weight = choice
        for slot in range(2):
            out = jax.lax.switch(index[slot], branches, params["w"], image)
            logits = logits + weight[slot] * out
        return logits, None

    flat = (op_choice["index"].reshape(-1, 2), op_choice["weight"].reshape(-1, 2))
    init = jnp.zeros(image.shape[:-1] + (CLASSES,), jnp.float32)
    logits, _ = jax.lax.scan(edge, init, flat)
    return logits / (space.NUM_CELL_TYPES * space.NUM_EDGES) + params["b"]


def toy_params(key):
    return {
        "w": jax.random.normal(key, (space.NUM_OPS, CHANNELS, CLASSES)),
        "b": jnp.zeros((CLASSES,)),
    }


def toy_batch(key):
    key_image, key_label = jax.random.split(key)
    return {
        "image": jax.random.normal(key_image, SHAPE + (CHANNELS,)),
        "label": jax.random.randint(key_label, SHAPE, 0, CLASSES),
    }


# A fixed edge with distinct probabilities, for the frequency test.
_EDGE = jnp.array([1.5, 0.5, 0.0, -1.0, 1.0, -0.5, 0.2, -2.0], jnp.float32)


class SamplerTest(absltest.TestCase):
    def test_shapes_distinct_indices_and_normalised_weights(self):
        arch = bilevel.init_arch(jax.random.key(0), scale=1.0)
        choice = bilevel.sample_edges(jax.random.key(1), arch, jnp.float32(1.0))
        chex.assert_shape(choice["index"], (4, 14, 2))
        chex.assert_shape(choice["weight"], (4, 14, 2))
        self.assertEqual(choice["index"].dtype, jnp.int32)
        self.assertEqual(choice["weight"].dtype, jnp.float32)
        index = np.asarray(choice["index"])
        self.assertTrue(np.all(index[..., 0] != index[..., 1]))
        self.assertTrue(np.all((index >= 0) & (index < space.NUM_OPS)))
        np.testing.assert_allclose(np.sum(choice["weight"], -1), 1.0, rtol=1e-6)

    def test_same_key_same_sample(self):
        arch = bilevel.init_arch(jax.random.key(0), scale=1.0)
        first = bilevel.sample_edges(jax.random.key(7), arch, jnp.float32(0.5))
        second = bilevel.sample_edges(jax.random.key(7), arch, jnp.float32(0.5))
        other = bilevel.sample_edges(jax.random.key(8), arch, jnp.float32(0.5))
        chex.assert_trees_all_equal(first, second)
        self.assertFalse(np.array_equal(first["index"], other["index"]))

    def test_pair_frequencies_match_algorithm_2(self):
        # q{a, b} = E[(zbar_a + zbar_b) / (|O| - 1)], the expectation over the Gumbel noise.
        num = 20000
        keys = jax.random.split(jax.random.key(3), num)
        sample = jax.jit(jax.vmap(lambda k: bilevel.sample_edges(k, _EDGE, 1.0)["index"]))
        index = np.sort(np.asarray(sample(keys)), axis=-1)
        eps = jax.random.gumbel(jax.random.key(4), (400000, space.NUM_OPS))
        mean_zbar = np.asarray(jnp.mean(jax.nn.softmax(_EDGE + eps, axis=-1), axis=0))
        for a, b in itertools.combinations(range(space.NUM_OPS), 2):
            freq = np.mean((index[:, 0] == a) & (index[:, 1] == b))
            q = (mean_zbar[a] + mean_zbar[b]) / (space.NUM_OPS - 1)
            # 4.5 standard errors of a binomial frequency: a false alarm is ~1e-4 per run.
            self.assertAlmostEqual(freq, q, delta=4.5 * math.sqrt(q * (1 - q) / num), msg=(a, b))

    def test_pair_step_given_zbar(self):
        # The pair draw alone, for a fixed zbar: q = (zbar_a + zbar_b) / 7 exactly.
        log_zbar = jax.nn.log_softmax(_EDGE)
        keys = jax.random.split(jax.random.key(5), 20000)
        pairs = jax.jit(jax.vmap(lambda k: bilevel._sample_pair(k, log_zbar)))(keys)
        index = np.sort(np.asarray(pairs), axis=-1)
        zbar = np.exp(np.asarray(log_zbar))
        for a, b in itertools.combinations(range(space.NUM_OPS), 2):
            freq = np.mean((index[:, 0] == a) & (index[:, 1] == b))
            q = (zbar[a] + zbar[b]) / (space.NUM_OPS - 1)
            self.assertAlmostEqual(freq, q, delta=4.5 * math.sqrt(q * (1 - q) / 20000))

    def test_weights_carry_gradient_indices_do_not(self):
        arch = bilevel.init_arch(jax.random.key(0), scale=1.0)

        def scalar(a):
            weight = bilevel.sample_edges(jax.random.key(2), a, jnp.float32(1.0))["weight"]
            return jnp.sum(weight[..., 0] * jnp.arange(14.0)[None, :])

        grad = jax.grad(scalar)(arch)
        self.assertTrue(np.all(np.isfinite(grad)))
        self.assertGreater(float(jnp.max(jnp.abs(grad))), 1e-4)

    def test_tiny_tau_is_finite(self):
        arch = bilevel.init_arch(jax.random.key(0), scale=3.0)
        tau = jnp.float32(0.001)
        choice = bilevel.sample_edges(jax.random.key(2), arch, tau)
        self.assertTrue(np.all(np.isfinite(choice["weight"])))
        np.testing.assert_allclose(np.sum(choice["weight"], -1), 1.0, rtol=1e-6)
        grad = jax.grad(lambda a: bilevel.sample_edges(jax.random.key(2), a, tau)["weight"][
            ..., 0].sum())(arch)
        self.assertTrue(np.all(np.isfinite(grad)))

    def test_derive_choice_and_entropy(self):
        arch = jnp.zeros((4, 14, 8)).at[:, :, 3].set(5.0).at[0, 0, 6].set(9.0)
        choice = bilevel.choice_from_indices(jnp.argmax(arch, axis=-1))
        self.assertEqual(int(choice["index"][0, 0, 0]), 6)
        self.assertTrue(np.all(np.asarray(choice["index"])[1:, :, 0] == 3))
        # The second slot is the free zero op, weighted 0.
        self.assertTrue(np.all(np.asarray(choice["index"])[..., 1] == space.ZERO_OP))
        np.testing.assert_array_equal(choice["weight"][..., 0], 1.0)
        np.testing.assert_array_equal(choice["weight"][..., 1], 0.0)
        np.testing.assert_allclose(jnp.sum(bilevel.arch_probs(arch), -1), 1.0, rtol=1e-6)
        entropy = bilevel.arch_entropy(bilevel.init_arch())
        np.testing.assert_allclose(entropy, np.full(4, np.log(8.0)), rtol=1e-6)


class GdasSamplerTest(absltest.TestCase):
    """sample_edges_gdas: argmax op with weight exactly 1, straight-through gradient."""

    def _soft(self, key, arch, tau):
        # The same noise drawn independently of search's helpers.
        eps = jax.random.gumbel(key, arch.shape, arch.dtype)
        return jax.nn.softmax((arch + eps) / tau, axis=-1)

    def test_argmax_op_weight_one_and_free_zero_slot(self):
        arch = bilevel.init_arch(jax.random.key(0), scale=1.0)
        key, tau = jax.random.key(1), jnp.float32(0.7)
        choice = bilevel.sample_edges_gdas(key, arch, tau)
        chex.assert_shape(choice["index"], (4, 14, 2))
        chex.assert_shape(choice["weight"], (4, 14, 2))
        self.assertEqual(choice["index"].dtype, jnp.int32)
        self.assertEqual(choice["weight"].dtype, jnp.float32)
        np.testing.assert_array_equal(
            choice["index"][..., 0], np.argmax(self._soft(key, arch, tau), axis=-1))
        np.testing.assert_array_equal(choice["index"][..., 1], space.ZERO_OP)
        np.testing.assert_array_equal(choice["weight"][..., 0], 1.0)  # exactly, not ~1
        np.testing.assert_array_equal(choice["weight"][..., 1], 0.0)
        jitted = jax.jit(bilevel.sample_edges_gdas)(key, arch, tau)
        chex.assert_trees_all_equal(jitted, choice)

    def test_straight_through_gradient_of_a_linear_toy(self):
        arch = bilevel.init_arch(jax.random.key(0), scale=1.0)
        key, tau = jax.random.key(2), jnp.float32(0.5)
        coef = jax.random.normal(jax.random.key(3), (4, 14, 2))
        index = bilevel.sample_edges_gdas(key, arch, tau)["index"][..., :1]

        def gdas(a):
            return jnp.sum(coef * bilevel.sample_edges_gdas(key, a, tau)["weight"])

        def soft(a):  # the soft prob of the chosen op, slot 2 contributes nothing
            return jnp.sum(coef[..., :1] * jnp.take_along_axis(self._soft(key, a, tau), index, -1))

        grad = jax.grad(gdas)(arch)
        self.assertGreater(float(jnp.max(jnp.abs(grad))), 1e-3)
        np.testing.assert_allclose(grad, jax.grad(soft)(arch), rtol=1e-5, atol=1e-7)

    def test_straight_through_gradient_in_the_toy_network(self):
        # dL/dalpha = (dL/dw at w = 1) * dzbar_argmax/dalpha, w the weight of the chosen op.
        arch = bilevel.init_arch(jax.random.key(0), scale=1.0)
        params, batch = toy_params(jax.random.key(4)), toy_batch(jax.random.key(5))
        key, tau = jax.random.key(6), jnp.float32(1.0)
        loss_fn = functools.partial(losses.dice_ce, ce_weight=1.0)

        def loss_of_arch(a):
            choice = bilevel.sample_edges_gdas(key, a, tau)
            return loss_fn(toy_apply(params, batch["image"], choice), batch["label"])

        choice = bilevel.sample_edges_gdas(key, arch, tau)

        def loss_of_weight(w):
            logits = toy_apply(params, batch["image"], {"index": choice["index"], "weight": w})
            return loss_fn(logits, batch["label"])

        grad_w = jax.grad(loss_of_weight)(choice["weight"])[..., 0]
        chosen = lambda a: jnp.take_along_axis(  # noqa: E731
            self._soft(key, a, tau), choice["index"][..., :1], -1)[..., 0]
        expected = jax.vjp(chosen, arch)[1](grad_w)[0]
        grad = jax.grad(loss_of_arch)(arch)
        self.assertGreater(float(jnp.max(jnp.abs(grad))), 1e-6)
        np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-8)
        # Forward = the one-op derived network of the same indices.
        np.testing.assert_allclose(
            loss_of_arch(arch), loss_of_weight(bilevel.choice_from_indices(
                choice["index"][..., 0])["weight"]), rtol=1e-6)


class ScheduleTest(absltest.TestCase):
    def test_tau_values(self):
        tau_fn = bilevel.make_tau_fn(steps_per_epoch=10)
        self.assertAlmostEqual(float(tau_fn(0)), 1.0)
        self.assertAlmostEqual(float(tau_fn(9)), 1.0)  # constant within an epoch
        self.assertAlmostEqual(float(tau_fn(400)), math.exp(-1.0), places=6)
        self.assertAlmostEqual(float(tau_fn(2760)), math.exp(-0.025 * 276), places=6)
        self.assertAlmostEqual(float(tau_fn(2770)), 0.001, places=7)  # floor from epoch 277
        self.assertAlmostEqual(float(tau_fn(4000)), 0.001, places=7)

    def test_plateau_and_learning_rate(self):
        tx_w, tx_a = bilevel.make_optimizers()
        params = {"w": jnp.ones(3)}
        state = bilevel.init_state(params, bilevel.init_arch(), tx_w, tx_a)
        self.assertAlmostEqual(float(bilevel.learning_rate(state.opt_w)), 0.025)
        plateau_step = jax.jit(functools.partial(bilevel.plateau_step, patience=3))
        reductions = []
        for loss in [1.0, 0.5, 0.6, 0.5, 0.7, 0.4, 0.5, 0.5, 0.5, 0.5, 0.5]:
            state, reduced = plateau_step(state, jnp.float32(loss))
            reductions.append(bool(reduced))
        # Improvements at epochs 0, 1, 5. Epochs 2-4 are 3 bad epochs (not more than the
        # patience of 3); 6-9 are 4, so epoch 9 divides the lr (PyTorch's `>` rule).
        self.assertEqual([i for i, r in enumerate(reductions) if r], [9])
        self.assertAlmostEqual(float(bilevel.learning_rate(state.opt_w)), 0.025e-1, places=9)
        self.assertAlmostEqual(float(bilevel.learning_rate(state.opt_a)), 0.003e-1, places=9)
        self.assertEqual(bilevel.learning_rate(state.opt_w).dtype, jnp.float32)


class PlateauRuleTest(absltest.TestCase):
    def test_reduces_after_more_than_patience_bad_epochs(self):
        tracker, fired = bilevel.init_plateau(), []
        for loss in [1.0, 2.0, 2.0, 2.0, 2.0]:
            tracker, reduce = bilevel.plateau_update(tracker, loss, patience=2)
            fired.append(bool(reduce))
        # 2 bad epochs (1, 2) are within the patience; the 3rd (epoch 3) reduces.
        self.assertEqual(fired, [False, False, False, True, False])
        _, reduce = bilevel.plateau_update(bilevel.init_plateau(), 1.0, patience=0)
        self.assertFalse(bool(reduce))  # an improvement never reduces


class StepsTest(absltest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # Large Theta betas: with the toy model this test checks plumbing, not the paper's.
        cls.tx_w, cls.tx_a = bilevel.make_optimizers(lr_w=0.01, betas_w=(0.9, 0.999))
        # Tau changes every step, so using the wrong iteration's tau would show.
        # staticmethod: a plain function stored on the class would bind `self`.
        cls.tau_fn = staticmethod(bilevel.make_tau_fn(steps_per_epoch=1, rate=0.5))
        cls.loss_fn = functools.partial(losses.dice_ce, ce_weight=1.0)
        step_w, step_a = bilevel.make_steps(
            apply_fn=toy_apply, loss_fn=cls.loss_fn, tx_w=cls.tx_w, tx_a=cls.tx_a,
            tau_fn=cls.tau_fn,
        )
        cls.step_w, cls.step_a = step_w, step_a
        cls.jit_w, cls.jit_a = staticmethod(jax.jit(step_w)), staticmethod(jax.jit(step_a))
        key_params, key_arch = jax.random.split(jax.random.key(0))
        arch = bilevel.init_arch(key_arch, scale=0.5)
        cls.state = bilevel.init_state(toy_params(key_params), arch, cls.tx_w, cls.tx_a)
        cls.batch_w, cls.batch_a = toy_batch(jax.random.key(1)), toy_batch(jax.random.key(2))

    def test_weights_step_changes_params_not_arch(self):
        new, metrics = self.jit_w(self.state, self.batch_w, jax.random.key(3))
        chex.assert_tree_all_finite(metrics)
        self.assertEqual(int(new.step), 1)
        chex.assert_trees_all_equal(new.arch, self.state.arch)
        self.assertFalse(np.allclose(new.params["w"], self.state.params["w"]))
        self.assertAlmostEqual(float(metrics["train/tau"]), 1.0)

    def test_arch_step_changes_arch_not_params(self):
        new, metrics = self.jit_a(self.state, self.batch_a, jax.random.key(3))
        chex.assert_tree_all_finite(metrics)
        self.assertEqual(int(new.step), 0)
        chex.assert_trees_all_equal(new.params, self.state.params)
        self.assertFalse(np.allclose(new.arch, self.state.arch))

    def test_arch_step_reuses_the_iterations_sample(self):
        key = jax.random.key(4)
        state, _ = self.jit_w(self.state, self.batch_w, key)
        _, metrics = self.jit_a(state, self.batch_a, key)
        same_z = bilevel.sample_edges(key, self.state.arch, self.tau_fn(self.state.step))
        logits = toy_apply(state.params, self.batch_a["image"], same_z)
        expected = self.loss_fn(logits, self.batch_a["label"])
        np.testing.assert_allclose(metrics["train/loss_a"], expected, rtol=1e-5)

    def test_one_program_matches_the_two_steps(self):
        # bilevel.search_step: both steps in one compiled program, one trace for both.
        traces = []

        def counted(*args):
            traces.append(1)
            return bilevel.search_step(*args, apply_fn=toy_apply, loss_fn=self.loss_fn,
                                       tx_w=self.tx_w, tx_a=self.tx_a, tau_fn=self.tau_fn)

        one_w, one_a = bilevel.split_search_step(jax.jit(counted))
        two, one = self.state, self.state
        for i in range(2):
            key = jax.random.key(30 + i)
            two, m2_w = self.jit_w(two, self.batch_w, key)
            two, m2_a = self.jit_a(two, self.batch_a, key)
            one, m1_w = one_w(one, self.batch_w, key)
            one, m1_a = one_a(one, self.batch_a, key)
            self.assertEqual(set(m1_w), set(m2_w))
            self.assertEqual(set(m1_a), set(m2_a))
            chex.assert_trees_all_close((m1_w, m1_a), (m2_w, m2_a), rtol=1e-5, atol=1e-6)
        self.assertEqual(int(one.step), 2)
        chex.assert_trees_all_close(one, two, rtol=1e-5, atol=1e-6)
        self.assertLen(traces, 1)

    def test_one_trace_for_three_iterations(self):
        @jax.jit
        @chex.assert_max_traces(n=1)
        def iteration(state, batch_w, batch_a, key):
            state, metrics_w = self.step_w(state, batch_w, key)
            state, metrics_a = self.step_a(state, batch_a, key)
            return state, {**metrics_w, **metrics_a}

        state = self.state
        for i in range(3):
            state, metrics = iteration(state, self.batch_w, self.batch_a, jax.random.key(10 + i))
            chex.assert_tree_all_finite(metrics)
        state, _ = bilevel.plateau_step(state, metrics["train/loss_w"])  # lr stays float32
        iteration(state, self.batch_w, self.batch_a, jax.random.key(20))
        self.assertEqual(int(state.step), 3)

    def test_past_the_anneal_the_step_trains_the_argmax_network(self):
        def schedule_fn(step, horizon):  # tau and noise high: a sample would rarely be argmax
            return {"tau": jnp.float32(1.0), "noise": jnp.float32(1.0), "lr_w": 1.0,
                    "lr_a": 1.0, "argmax": schedules.annealed(step, horizon)}

        step_w, _ = bilevel.make_steps(apply_fn=toy_apply, loss_fn=self.loss_fn,
                                       tx_w=self.tx_w, tx_a=self.tx_a,
                                       schedule_fn=schedule_fn)
        argmax = bilevel.choice_from_indices(jnp.argmax(self.state.arch, axis=-1))
        key = jax.random.key(5)
        sampled = bilevel.sample_edges(key, self.state.arch, jnp.float32(1.0))
        for horizon, step, expected in (((1, 3, 9), 3, argmax), ((1, 3, 9), 2, sampled),
                                        ((0, 0, 9), 5, sampled)):
            state = self.state.replace(horizon=jnp.asarray(horizon, jnp.int32),
                                       step=jnp.asarray(step, jnp.int32))
            _, metrics = jax.jit(step_w)(state, self.batch_w, key)
            logits = toy_apply(state.params, self.batch_w["image"], expected)
            np.testing.assert_allclose(metrics["train/loss_w"],
                                       self.loss_fn(logits, self.batch_w["label"]), rtol=1e-5)
        self.assertFalse(np.array_equal(sampled["index"][..., 0], argmax["index"][..., 0]))
        dense = bilevel.argmax_choice(self.state.arch, jnp.zeros(bilevel.ARCH_SHAPE))
        np.testing.assert_array_equal(jnp.argmax(dense, -1), argmax["index"][..., 0])
        np.testing.assert_array_equal(dense.sum(-1), 1.0)

    def test_derive_choice_runs_in_the_network(self):
        logits = toy_apply(self.state.params, self.batch_a["image"],
                           bilevel.choice_from_indices(jnp.argmax(self.state.arch, axis=-1)))
        chex.assert_shape(logits, SHAPE + (CLASSES,))
        chex.assert_tree_all_finite(logits)


if __name__ == "__main__":
    absltest.main()


def toy_apply_dense(params, image, weights):
    """The DARTS form of toy_apply: every op, weights (4, 14, 8)."""
    outs = jnp.stack([_ACTIVATIONS[i](image @ params["w"][i]) for i in range(space.NUM_OPS)])
    mixed = jnp.einsum("o...,teo->...", outs, weights)
    return mixed / (space.NUM_CELL_TYPES * space.NUM_EDGES) + params["b"]


class StrategiesTest(absltest.TestCase):
    """Each strategy's bi-level iteration moves Theta, then alpha, on the toy model."""

    def test_each_strategy_takes_a_step(self):
        tx_w, tx_a = bilevel.make_optimizers(lr_w=0.01, betas_w=(0.9, 0.999))
        loss_fn = functools.partial(losses.dice_ce, ce_weight=1.0)
        key_params, key_arch = jax.random.split(jax.random.key(0))
        state0 = bilevel.init_state(toy_params(key_params), bilevel.init_arch(key_arch, scale=0.5),
                                   tx_w, tx_a)
        batch_w, batch_a = toy_batch(jax.random.key(1)), toy_batch(jax.random.key(2))
        self.assertEqual(set(bilevel.SAMPLERS), {"scnas", "gdas", "darts"})
        for name, (sample_fn, dense) in bilevel.SAMPLERS.items():
            step_w, step_a = bilevel.make_steps(
                apply_fn=toy_apply_dense if dense else toy_apply, loss_fn=loss_fn, tx_w=tx_w,
                tx_a=tx_a, tau_fn=bilevel.make_tau_fn(1), sample_fn=sample_fn)
            state, m_w = jax.jit(step_w)(state0, batch_w, jax.random.key(3))
            state, m_a = jax.jit(step_a)(state, batch_a, jax.random.key(3))
            chex.assert_tree_all_finite((m_w, m_a))
            self.assertFalse(np.allclose(state.params["w"], state0.params["w"]), name)
            self.assertFalse(np.allclose(state.arch, state0.arch), name)

    def test_darts_weights_are_softmax(self):
        arch = bilevel.init_arch(jax.random.key(0), scale=1.0)
        weights = bilevel.darts_weights(None, arch, 1.0)
        np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
        np.testing.assert_allclose(weights, jax.nn.softmax(arch, -1))


class PlantedOpTest(absltest.TestCase):
    """A toy task where one op is clearly best on an edge: the search's alpha must pick it.

    Every edge of the (4, 14, 8) space feeds the logits through its sampled ops. Op 5
    ("planted") passes the informative channel through; every other op gives noise or
    nothing. Labels are that channel's sign, so only the planted op can lower the loss.
    """

    PLANTED = 5

    def apply(self, params, image, op_choice):
        signal, noise = image[..., 0], image[..., 1]
        outputs = [noise * (i + 1) / 8.0 for i in range(space.NUM_OPS)]
        outputs[self.PLANTED] = signal
        outputs[space.ZERO_OP] = jnp.zeros_like(signal)
        stacked = jnp.stack(outputs)  # (ops, b, x, y, z)

        def edge(total, choice):
            index, weight = choice
            return total + weight[0] * stacked[index[0]] + weight[1] * stacked[index[1]], None

        flat = (op_choice["index"].reshape(-1, 2), op_choice["weight"].reshape(-1, 2))
        total, _ = jax.lax.scan(edge, jnp.zeros_like(signal), flat)
        z = params["a"] * total / flat[0].shape[0]
        return jnp.stack([-z, z], axis=-1)

    def test_alpha_argmax_picks_the_planted_op(self):
        tx_w, tx_a = bilevel.make_optimizers(lr_w=0.05, betas_w=(0.9, 0.999), lr_a=0.05)
        horizon = (5, 60, 80)
        schedule_fn = lambda step, h: {  # noqa: E731  (planned tau, noise, lr)
            "tau": schedules.annealed_tau(step, h, tau_min=0.05),
            "noise": schedules.gumbel_noise_scale(step, h),
            "lr_w": jnp.float32(1.0), "lr_a": jnp.float32(1.0)}
        step_w, step_a = bilevel.make_steps(
            apply_fn=self.apply, loss_fn=functools.partial(losses.dice_ce, ce_weight=1.0),
            tx_w=tx_w, tx_a=tx_a, schedule_fn=schedule_fn)
        step_w, step_a = jax.jit(step_w), jax.jit(step_a)
        state = bilevel.init_state({"a": jnp.float32(1.0)}, bilevel.init_arch(), tx_w, tx_a,
                                  horizon=horizon)

        def batch(key):
            image = jax.random.normal(key, (2, 4, 4, 4, 2))
            return {"image": image, "label": (image[..., 0] > 0).astype(jnp.int32)}

        for t in range(horizon[2]):
            key = jax.random.key(t)
            state, _ = step_w(state, batch(jax.random.fold_in(key, 0)), key)
            if horizon[0] <= t < horizon[1]:  # As a planned search: alpha frozen once annealed.
                state, _ = step_a(state, batch(jax.random.fold_in(key, 1)), key)
        winners = np.asarray(jnp.argmax(state.arch, axis=-1))
        self.assertGreater(np.mean(winners == self.PLANTED), 0.9)
        # Annealed: the last sample of the search is the argmax network, one op per edge.
        choice = bilevel.sample_edges(jax.random.key(0), state.arch, jnp.float32(0.01), 0.0)
        np.testing.assert_array_equal(choice["index"][..., 0], winners)
        self.assertGreater(float(jnp.min(choice["weight"][..., 0])), 0.99)
