"""The LSTM controller: sampling, teacher-forced scoring, the greedy path and REINFORCE.

A toy vocabulary keeps every compile small; one jitted sampler, scorer and update step
are shared by the test classes (module-level jits, same shapes).
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest

from jaxnas.search import controller
from jaxnas.spaces import ronasmis

VOCAB = (4, 2, 3, 2)
HIDDEN = 16
NUM_CHILDREN = 8
TX = optax.adam(0.05)
KW = dict(vocab_sizes=VOCAB, hidden=HIDDEN)

_sample_many = jax.jit(
    jax.vmap(functools.partial(controller.sample, **KW), in_axes=(None, 0))
)
_log_prob = jax.jit(functools.partial(controller.log_prob, **KW))
_step = controller.make_reinforce_step(TX, VOCAB, HIDDEN)


def _children(params, key):
    return _sample_many(params, jax.random.split(key, NUM_CHILDREN))


class SampleTest(absltest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.params = controller.init_controller(jax.random.key(0), VOCAB, HIDDEN)
        cls.choices, cls.log_probs, cls.entropies = _children(cls.params, jax.random.key(1))

    def test_shapes_and_ranges(self):
        chex.assert_shape(self.choices, (NUM_CHILDREN, len(VOCAB)))
        chex.assert_shape((self.log_probs, self.entropies), (NUM_CHILDREN,))
        self.assertEqual(self.choices.dtype, jnp.int32)
        choices = np.asarray(self.choices)
        self.assertTrue(np.all(choices >= 0) and np.all(choices < np.asarray(VOCAB)))
        self.assertTrue(np.all(np.asarray(self.log_probs) < 0.0))
        # The initial policy is almost uniform: entropy ~ sum_t log |V_t|.
        np.testing.assert_allclose(self.entropies, np.sum(np.log(VOCAB)), rtol=1e-3)
        np.testing.assert_allclose(self.log_probs, -np.sum(np.log(VOCAB)), rtol=0.05)

    def test_teacher_forced_log_prob_equals_sampled(self):
        log_probs, entropies = _log_prob(self.params, self.choices)
        np.testing.assert_allclose(log_probs, self.log_probs, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(entropies, self.entropies, rtol=1e-5, atol=1e-5)

    def test_greedy_follows_the_argmax(self):
        # Head biases that make `target` the clear argmax of every step.
        target = np.array([3, 1, 0, 1], np.int32)
        params = jax.tree.map(lambda a: a, self.params)
        for t, size in enumerate(VOCAB):
            params["params"][f"head_{t}"]["bias"] = 5.0 * jax.nn.one_hot(target[t], size)
        np.testing.assert_array_equal(controller.greedy(params, **KW), target)
        probs = controller.decision_probs(params, **KW)
        self.assertLen(probs, len(VOCAB))
        for t, p in enumerate(probs):
            chex.assert_shape(p, (VOCAB[t],))
            np.testing.assert_allclose(np.sum(p), 1.0, rtol=1e-6)
            self.assertEqual(int(np.argmax(p)), target[t])
            self.assertGreater(float(p[target[t]]), 0.9)

    def test_works_with_the_ronasmis_space(self):
        params = controller.init_controller(jax.random.key(2), ronasmis.VOCAB_SIZES, 8)
        choice, log_p, _ = controller.sample(
            params, jax.random.key(3), vocab_sizes=ronasmis.VOCAB_SIZES, hidden=8
        )
        self.assertLen(ronasmis.choice_to_dict(choice), len(ronasmis.DECISIONS))
        self.assertTrue(np.isfinite(float(log_p)))


class ReinforceTest(absltest.TestCase):
    def test_rewarded_option_becomes_likely(self):
        params = controller.init_controller(jax.random.key(0), VOCAB, HIDDEN)
        before = float(controller.decision_probs(params, **KW)[0][2])
        state = controller.init_state(params, TX)
        key = jax.random.key(4)
        for _ in range(40):
            key, sub = jax.random.split(key)
            choices = _children(state.params, sub)[0]
            rewards = (choices[:, 0] == 2).astype(jnp.float32)  # reward option 2 of step 0
            state, metrics = _step(state, choices, rewards)
        after = float(controller.decision_probs(state.params, **KW)[0][2])
        self.assertAlmostEqual(before, 0.25, delta=0.03)
        self.assertGreater(after, 0.6)
        self.assertEqual(int(state.step), 40)
        chex.assert_tree_all_finite(metrics)
        self.assertEqual(
            set(metrics),
            {f"controller/{k}" for k in ("loss", "reward_mean", "baseline", "entropy",
                                         "grad_norm")},
        )

    def test_baseline_update(self):
        params = controller.init_controller(jax.random.key(0), VOCAB, HIDDEN)
        state = controller.init_state(params, TX)
        choices = _children(params, jax.random.key(5))[0]
        first = jnp.arange(NUM_CHILDREN, dtype=jnp.float32)  # mean 3.5
        state, metrics = _step(state, choices, first)
        # First update: the baseline is this batch's mean, and stays it after the decay.
        self.assertAlmostEqual(float(metrics["controller/baseline"]), 3.5, places=5)
        self.assertAlmostEqual(float(state.baseline), 3.5, places=5)
        self.assertTrue(bool(state.has_baseline))
        self.assertAlmostEqual(float(metrics["controller/reward_mean"]), 3.5, places=5)
        state, metrics = _step(state, choices, jnp.full((NUM_CHILDREN,), 10.0))
        self.assertAlmostEqual(float(metrics["controller/baseline"]), 3.5, places=5)
        self.assertAlmostEqual(float(state.baseline), 0.95 * 3.5 + 0.05 * 10.0, places=5)


if __name__ == "__main__":
    absltest.main()
