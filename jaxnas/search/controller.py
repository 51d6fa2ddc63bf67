"""The RONASMIS / ENAS controller: an LSTM that emits one architecture decision per step,
trained by REINFORCE with a moving-average baseline and an entropy bonus.

Format: `vocab_sizes` (e.g. ronasmis.VOCAB_SIZES) gives the number of options of each
decision, in order; a choice is int32 (T,) = (len(vocab_sizes),) option indices. Params
are the flax variables dict {"params": ...} of `Controller`.

Step t feeds the LSTM a learned start embedding (t = 0) or the embedding of the option
chosen at t - 1 (one table per decision), and a Dense head per decision turns the hidden
state into that decision's logits. The same module call samples, scores (teacher
forcing) or takes the argmax: a `decide(t, logits) -> option` callback picks the option.

Paper settings (RONASMIS after ENAS, Pham et al. 2018): 20 children sampled per
controller step, reward = validation Dice of each child with the shared weights,
moving-average baseline, entropy bonus; Adam. `reinforce_step` takes the children's
choices and rewards and does one update.
"""

import functools
from collections.abc import Callable, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Bool, Float, Int

Choice = Int[Array, "t"]
Decide = Callable[[int, Float[Array, "v"]], Int[Array, ""]]


class Controller(nn.Module):
    """LSTM policy over len(vocab_sizes) decisions (see the module docstring)."""

    vocab_sizes: tuple[int, ...]
    hidden: int = 64

    @nn.compact
    def __call__(self, decide: Decide) -> tuple[Choice, list[Float[Array, "v"]]]:
        """Runs every step; returns (options int32 (T,), [logits (vocab_sizes[t],)])."""
        cell = nn.OptimizedLSTMCell(self.hidden, name="lstm")
        inputs = self.param("start", nn.initializers.normal(1.0), (self.hidden,))
        carry = (jnp.zeros(self.hidden), jnp.zeros(self.hidden))
        options, all_logits = [], []
        for t, size in enumerate(self.vocab_sizes):
            carry, h = cell(carry, inputs)
            # Near-zero head init: the policy starts almost uniform (maximum entropy).
            logits = nn.Dense(size, kernel_init=nn.initializers.normal(0.01),
                              name=f"head_{t}")(h)
            option = jnp.asarray(decide(t, logits), jnp.int32)
            options.append(option)
            all_logits.append(logits)
            if t + 1 < len(self.vocab_sizes):
                inputs = nn.Embed(size, self.hidden, name=f"embed_{t}")(option)
        return jnp.stack(options), all_logits


def _model(vocab_sizes: Sequence[int], hidden: int) -> Controller:
    return Controller(tuple(int(v) for v in vocab_sizes), hidden)


def _argmax(t: int, logits: Float[Array, "v"]) -> Int[Array, ""]:
    del t
    return jnp.argmax(logits)


def _score(all_logits, options: Choice) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """(sum_t log p_t(option_t), sum_t entropy_t)."""
    log_p, entropy = 0.0, 0.0
    for t, logits in enumerate(all_logits):
        log_probs = jax.nn.log_softmax(logits)
        log_p = log_p + log_probs[options[t]]
        entropy = entropy - jnp.sum(jnp.exp(log_probs) * log_probs)
    return jnp.asarray(log_p, jnp.float32), jnp.asarray(entropy, jnp.float32)


def init_controller(key: jax.Array, vocab_sizes: Sequence[int], hidden: int = 64) -> dict:
    """Controller variables {"params": ...}."""
    return _model(vocab_sizes, hidden).init(key, _argmax)


def sample(
    params: dict,
    key: jax.Array,
    *,
    vocab_sizes: Sequence[int],
    hidden: int,
    temperature: float = 1.0,
) -> tuple[Choice, Float[Array, ""], Float[Array, ""]]:
    """One child: (choice int32 (T,), log_prob, entropy) under logits / temperature.

    log_prob and entropy are those of the distribution sampled from (at temperature 1,
    exactly `log_prob`'s). vmap over keys for a batch of children.
    """
    keys = jax.random.split(key, len(vocab_sizes))

    def decide(t, logits):
        return jax.random.categorical(keys[t], logits / temperature)

    options, all_logits = _model(vocab_sizes, hidden).apply(params, decide)
    log_p, entropy = _score([l / temperature for l in all_logits], options)
    return options, log_p, entropy


def log_prob(
    params: dict, choices: Int[Array, "n t"], *, vocab_sizes: Sequence[int], hidden: int
) -> tuple[Float[Array, "n"], Float[Array, "n"]]:
    """Teacher-forced (log_probs (n,), entropies (n,)) of given choices."""
    model = _model(vocab_sizes, hidden)

    def one(choice):
        _, all_logits = model.apply(params, lambda t, logits: choice[t])
        return _score(all_logits, choice)

    return jax.vmap(one)(jnp.asarray(choices, jnp.int32))


def greedy(params: dict, *, vocab_sizes: Sequence[int], hidden: int) -> Choice:
    """The most likely option at every step (argmax path): the final architecture."""
    options, _ = _model(vocab_sizes, hidden).apply(params, _argmax)
    return options


def decision_probs(
    params: dict, *, vocab_sizes: Sequence[int], hidden: int
) -> list[Float[Array, "v"]]:
    """Per-decision option probabilities along the greedy path (for logging)."""
    _, all_logits = _model(vocab_sizes, hidden).apply(params, _argmax)
    return [jax.nn.softmax(logits) for logits in all_logits]


# --- REINFORCE ---


@flax.struct.dataclass
class ControllerState:
    step: Int[Array, ""]  # controller updates done
    params: dict
    opt_state: optax.OptState
    baseline: Float[Array, ""]  # moving average of the mean reward
    has_baseline: Bool[Array, ""]  # False until the first update sets the baseline


def init_state(params: dict, tx: optax.GradientTransformation) -> ControllerState:
    return ControllerState(
        step=jnp.asarray(0, jnp.int32),
        params=params,
        opt_state=tx.init(params),
        baseline=jnp.asarray(0.0, jnp.float32),
        has_baseline=jnp.asarray(False),
    )


def reinforce_step(
    state: ControllerState,
    choices: Int[Array, "n t"],
    rewards: Float[Array, "n"],
    *,
    tx: optax.GradientTransformation,
    vocab_sizes: Sequence[int],
    hidden: int,
    entropy_weight: float = 1e-4,
    baseline_decay: float = 0.95,
) -> tuple[ControllerState, dict[str, Float[Array, ""]]]:
    """One REINFORCE update from n children (paper: 20) and their rewards.

    advantage = reward - baseline (the first update uses this batch's mean reward as the
    baseline); loss = -mean(advantage * log_prob) - entropy_weight * mean(entropy);
    then baseline <- decay * baseline + (1 - decay) * mean(reward). Jit with
    tx, vocab_sizes, hidden (and the floats) static, e.g. via functools.partial.
    metrics["controller/baseline"] is the baseline the advantages were taken against.
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    mean_reward = jnp.mean(rewards)
    baseline = jnp.where(state.has_baseline, state.baseline, mean_reward)
    advantage = rewards - baseline  # no gradient: rewards and baseline are data

    def loss_fn(params):
        log_p, entropy = log_prob(params, choices, vocab_sizes=vocab_sizes, hidden=hidden)
        loss = -jnp.mean(advantage * log_p) - entropy_weight * jnp.mean(entropy)
        return loss, jnp.mean(entropy)

    (loss, entropy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        opt_state=opt_state,
        baseline=baseline_decay * baseline + (1.0 - baseline_decay) * mean_reward,
        has_baseline=jnp.asarray(True),
    )
    metrics = {
        "controller/loss": loss,
        "controller/reward_mean": mean_reward,
        "controller/baseline": baseline,
        "controller/entropy": entropy,
        "controller/grad_norm": optax.tree.norm(grads),
    }
    return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


# Convenience for callers that jit: the static keywords bound once.
def make_reinforce_step(
    tx: optax.GradientTransformation, vocab_sizes: Sequence[int], hidden: int, **kwargs
) -> Callable:
    """jax.jit of reinforce_step with its static keywords bound: (state, choices, rewards)."""
    return jax.jit(functools.partial(reinforce_step, tx=tx, vocab_sizes=tuple(vocab_sizes),
                                     hidden=hidden, **kwargs))
