"""SCNAS search: the edge sampler, temperature, optimizers, state and the bi-level steps.

Everything here is pure. Conventions (DESIGN.md sections 3 and 4):
- `arch`: float32 (NUM_CELL_TYPES, NUM_EDGES, NUM_OPS) = (4, 14, 8) architecture logits
  (alpha), a pytree of its own, never a variable of the network.
- `op_choice`: `{"index": int32 (4, 14, 2), "weight": float32 (4, 14, 2)}`: per cell type
  and edge the two sampled op indices and their renormalised weights.
- `apply_fn(params, image, op_choice) -> logits`, image (b, x, y, z, c) float32, logits
  (b, x, y, z, k); `loss_fn(logits, labels) -> scalar`, labels int32 (b, x, y, z).
- A batch is `{"image": (b, x, y, z, c), "label": (b, x, y, z)}`.

SCNAS Algorithm 1 draws ONE sample Z per iteration and uses it for both the Theta update
(`weights_step`, training batch) and the alpha update (`arch_step`, validation batch).
Z is a deterministic function of (key, arch, tau), so the loop passes the SAME key to both
steps of an iteration, calls `weights_step` first, and `arch_step` recomputes tau for that
iteration (see `arch_step`). weights_step leaves arch unchanged, so both steps see the same Z.
"""

import functools
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int

from jaxnas.spaces.scnas import space

PyTree = Any
ArchLogits = Float[Array, "t e o"]
OpChoice = dict[str, Array]
ARCH_SHAPE = (space.NUM_CELL_TYPES, space.NUM_EDGES, space.NUM_OPS)

# Paper (SCNAS section 4): Adam, Theta lr 0.025 betas (0.1, 0.001), alpha lr 0.003
# betas (0.5, 0.999). The Theta betas look like a typo (b2 = 0.001 makes Adam almost
# sign-SGD); they stay the defaults here so the paper setting is reproducible, and
# config.py can choose others for the demo.
PAPER_LR_W, PAPER_BETAS_W = 0.025, (0.1, 0.001)
PAPER_LR_A, PAPER_BETAS_A = 0.003, (0.5, 0.999)


# --- The sampled edge (SCNAS Algorithm 2) ---


def _log_relaxed(key: jax.Array, arch: ArchLogits, tau: Float[Array, ""],
                 noise=1.0) -> ArchLogits:
    """log zbar = log_softmax((arch + noise * eps) / tau), eps ~ Gumbel(0, 1).

    noise = 1 is the paper's sampler; a planned search anneals it to 0 (schedules.py).
    """
    eps = noise * jax.random.gumbel(key, arch.shape, dtype=arch.dtype)
    # Log space: at tau = 0.001 the logits reach ~1e4 and a plain softmax underflows to 0.
    return jax.nn.log_softmax((arch + eps) / tau, axis=-1)


def _sample_pair(key: jax.Array, log_zbar: ArchLogits) -> Int[Array, "t e 2"]:
    """Draws {o1, o2} with probability (zbar_o1 + zbar_o2) / (|O| - 1) on every edge.

    Equivalent form used here: o1 ~ Categorical(zbar), o2 ~ Uniform(O minus {o1}).
    """
    key_first, key_second = jax.random.split(key)
    num_ops = log_zbar.shape[-1]
    first = jax.random.categorical(key_first, jax.lax.stop_gradient(log_zbar), axis=-1)
    # An offset in [1, |O| - 1] never maps o2 back onto o1.
    offset = jax.random.randint(key_second, first.shape, 1, num_ops)
    second = (first + offset) % num_ops
    return jnp.stack([first, second], axis=-1).astype(jnp.int32)


def sample_edges(key: jax.Array, arch: ArchLogits, tau: Float[Array, ""], noise=1.0) -> OpChoice:
    """SCNAS Algorithm 2 (GumbelSoftmaxSample) for every cell type and edge.

    Args:
      key: PRNG key; the sample is a deterministic function of (key, arch, tau).
      arch: (..., NUM_OPS) logits, normally (4, 14, 8).
      tau: scalar temperature > 0; safe down to 0.001 and below.
      noise: scale of the Gumbel noise (1: Algorithm 2; 0: o1 = argmax alpha).

    Returns:
      `{"index": int32 (..., 2), "weight": float32 (..., 2)}`: two distinct op indices
      (no gradient) and (zbar_o1, zbar_o2) / (zbar_o1 + zbar_o2), differentiable in arch.
    """
    key_gumbel, key_pair = jax.random.split(key)
    log_zbar = _log_relaxed(key_gumbel, arch, tau, noise)
    index = _sample_pair(key_pair, log_zbar)
    picked = jnp.take_along_axis(log_zbar, index, axis=-1)
    # Renormalising in log space is a 2-way softmax: the denominator never underflows,
    # even when both zbar values are below float32's smallest normal number.
    weight = jax.nn.softmax(picked, axis=-1)
    return {"index": jax.lax.stop_gradient(index), "weight": weight}


def sample_edges_gdas(key: jax.Array, arch: ArchLogits, tau: Float[Array, ""],
                      noise=1.0) -> OpChoice:
    """GDAS (Dong and Yang 2019): one op per edge by straight-through hard Gumbel-softmax.

    Forward, each edge runs only o = argmax_o zbar_o, zbar = softmax((arch + eps) / tau),
    eps ~ Gumbel(0, 1), with weight exactly 1; backward, that weight has the gradient of
    zbar_o (straight-through). Returned in the op_choice format of `sample_edges`, the
    second slot being the zero op with weight 0 (as `choice_from_indices`), so it runs
    on the same supernet and switch code at the cost of one op per edge.

    Args:
      key: PRNG key of the Gumbel noise; the sample is a deterministic function of
        (key, arch, tau).
      arch: (..., NUM_OPS) logits, normally (4, 14, 8); op space.ZERO_OP fills slot 2.
      tau: scalar temperature > 0 (only the gradient depends on it).

    Returns:
      `{"index": int32 (..., 2), "weight": float32 (..., 2)}`: (argmax op, zero op) with
      weights (1, 0); d weight[..., 0] / d arch = d zbar_argmax / d arch, slot 2 has none.
    """
    log_zbar = _log_relaxed(key, arch, tau, noise)
    first = jnp.argmax(jax.lax.stop_gradient(log_zbar), axis=-1)
    soft = jnp.exp(jnp.take_along_axis(log_zbar, first[..., None], axis=-1)[..., 0])
    # 1 + (s - s) is exactly 1 in the forward pass (1 - s + s need not be), gradient ds.
    hard = 1.0 + (soft - jax.lax.stop_gradient(soft))
    choice = choice_from_indices(first)
    weight = jnp.stack([hard, choice["weight"][..., 1]], axis=-1).astype(jnp.float32)
    return {"index": jax.lax.stop_gradient(choice["index"]), "weight": weight}


def choice_from_indices(index: Int[Array, "t e"]) -> OpChoice:
    """One op per edge as an op_choice: index pair (i, zero) with weights (1, 0).

    The second slot is the zero op, which costs nothing, so a derived architecture runs
    one op per edge through the same compiled supernet.
    """
    index = jnp.asarray(index, jnp.int32)
    weight = jnp.stack([jnp.ones(index.shape), jnp.zeros(index.shape)], axis=-1)
    second = jnp.full(index.shape, space.ZERO_OP, jnp.int32)
    return {"index": jnp.stack([index, second], axis=-1), "weight": weight.astype(jnp.float32)}


def arch_probs(arch: ArchLogits) -> ArchLogits:
    """softmax(alpha) over ops; same shape as arch."""
    return jax.nn.softmax(arch, axis=-1)


def arch_entropy(arch: ArchLogits) -> Float[Array, "t"]:
    """Mean over edges of the entropy (nats) of softmax(alpha), per cell type: (4,).

    log(8) = 2.08 for a uniform arch, 0 when every edge is one-hot.
    """
    log_probs = jax.nn.log_softmax(arch, axis=-1)
    entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
    return jnp.mean(entropy, axis=-1)


def init_arch(key: jax.Array | None = None, *, scale: float = 1e-3) -> ArchLogits:
    """Architecture logits (4, 14, 8): zeros, or scale * N(0, 1) given a key (DARTS: 1e-3)."""
    if key is None:
        return jnp.zeros(ARCH_SHAPE, jnp.float32)
    return scale * jax.random.normal(key, ARCH_SHAPE, jnp.float32)


# --- Temperature (DESIGN.md section 4) ---


def tau_schedule(epoch, *, rate: float = 0.025, tau_min: float = 0.001):
    """tau = max(tau_min, exp(-rate * epoch)) (SCNAS: 0.025 per epoch, floor 0.001)."""
    return jnp.maximum(tau_min, jnp.exp(-rate * jnp.asarray(epoch, jnp.float32)))


def make_tau_fn(
    steps_per_epoch: int, rate: float = 0.025, tau_min: float = 0.001
) -> Callable[[Any], Float[Array, ""]]:
    """An optax-style schedule: step -> tau, annealed once per completed epoch.

    The paper counts t in epochs, so tau is constant within an epoch (epoch = step //
    steps_per_epoch). The floor is reached at epoch ceil(ln(1 / tau_min) / rate) = 277.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")

    def tau_fn(step):
        epoch = jnp.asarray(step, jnp.int32) // steps_per_epoch
        return tau_schedule(epoch, rate=rate, tau_min=tau_min)

    return tau_fn


# --- Optimizers and the learning-rate plateau rule ---


def _adam(lr: float, betas: tuple[float, float], eps: float) -> optax.GradientTransformation:
    """Adam whose hyper-parameters live in the opt state (the plateau rule scales lr).

    On the params raveled into one vector (`optax.flatten`): per leaf, Adam's update was
    a fusion of its own, ~750 of a derived network's ~5900 fusions; compile 5 s shorter
    for a derived 64^3 step, 3 s for a search iteration on 2 CPU cores.
    """
    return optax.flatten(optax.inject_hyperparams(optax.adam)(
        learning_rate=lr, b1=betas[0], b2=betas[1], eps=eps))


def make_optimizers(
    *,
    lr_w: float = PAPER_LR_W,
    betas_w: tuple[float, float] = PAPER_BETAS_W,
    lr_a: float = PAPER_LR_A,
    betas_a: tuple[float, float] = PAPER_BETAS_A,
    eps: float = 1e-8,
) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    """Two Adam chains: (tx_w for the network params Theta, tx_a for arch alpha).

    Defaults are the paper's values. The learning rate is injected
    (`optax.inject_hyperparams`), so `scale_learning_rate` can divide it by 10 on a
    plateau without rebuilding the optimizer or recompiling the steps.
    """
    tx_w = _adam(lr_w, betas_w, eps)
    tx_a = _adam(lr_a, betas_a, eps)
    return tx_w, tx_a


def _is_injected(node) -> bool:
    return isinstance(node, (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState))


def scale_learning_rate(opt_state: optax.OptState, factor) -> optax.OptState:
    """Multiplies every injected learning rate in opt_state by factor (dtype kept)."""

    def scale(node):
        if not _is_injected(node):
            return node
        lr = node.hyperparams["learning_rate"]
        new_lr = (lr * factor).astype(jnp.result_type(lr))
        return node._replace(hyperparams={**node.hyperparams, "learning_rate": new_lr})

    return jax.tree.map(scale, opt_state, is_leaf=_is_injected)


def learning_rate(opt_state: optax.OptState) -> Float[Array, ""]:
    """The (first) injected learning rate of opt_state, for logging `train/lr`."""
    nodes = jax.tree.leaves(opt_state, is_leaf=_is_injected)
    for node in nodes:
        if _is_injected(node):
            return node.hyperparams["learning_rate"]
    raise ValueError("opt_state has no injected learning rate: build it with make_optimizers.")


@flax.struct.dataclass
class PlateauState:
    """Tracker of the epoch training loss for the 'divide lr by 10 on a plateau' rule."""

    best: Float[Array, ""]  # lowest epoch loss so far
    num_bad: Int[Array, ""]  # epochs since the last improvement


def init_plateau() -> PlateauState:
    return PlateauState(best=jnp.asarray(jnp.inf, jnp.float32), num_bad=jnp.asarray(0, jnp.int32))


def plateau_update(
    tracker: PlateauState, loss, *, patience: int = 20, rtol: float = 1e-4
) -> tuple[PlateauState, Array]:
    """Feeds one epoch's training loss; returns (tracker, reduce: bool scalar).

    An epoch improves when loss < best * (1 - rtol) (PyTorch ReduceLROnPlateau 'rel'
    threshold, the paper's framework). `reduce` is True once MORE than `patience` epochs
    in a row failed to improve (PyTorch's `num_bad_epochs > patience`: with patience 20
    the 21st bad epoch divides the lr), and the count restarts. patience 0 reduces on
    every bad epoch.
    """
    loss = jnp.asarray(loss, jnp.float32)
    improved = loss < tracker.best * (1.0 - rtol)
    num_bad = jnp.where(improved, 0, tracker.num_bad + 1)
    reduce = num_bad > patience
    best = jnp.where(improved, loss, tracker.best)
    return PlateauState(best=best, num_bad=jnp.where(reduce, 0, num_bad)), reduce


# --- State ---


@flax.struct.dataclass
class SearchState:
    """All search state, one pytree of arrays (orbax saves it as is)."""

    step: Int[Array, ""]  # iterations done (weights_step increments it); resume point
    params: PyTree  # network weights Theta -> tx_w
    arch: ArchLogits  # (4, 14, 8) alpha -> tx_a
    opt_w: optax.OptState
    opt_a: optax.OptState
    plateau: PlateauState  # epoch-loss tracker, here so a resumed run keeps counting
    # (warmup_end, anneal_end, total) steps of a planned search (schedules.py), traced so
    # the compiled steps serve any budget; unused by the paper's epoch schedule.
    horizon: Int[Array, "3"]


def init_state(
    params: PyTree,
    arch: ArchLogits,
    tx_w: optax.GradientTransformation,
    tx_a: optax.GradientTransformation,
    horizon=(0, 0, 0),
) -> SearchState:
    """Step 0 state with fresh optimizer states."""
    return SearchState(
        step=jnp.asarray(0, jnp.int32),
        params=params,
        arch=arch,
        opt_w=tx_w.init(params),
        opt_a=tx_a.init(arch),
        plateau=init_plateau(),
        horizon=jnp.asarray(horizon, jnp.int32),
    )


def plateau_step(
    state: SearchState,
    epoch_loss,
    *,
    patience: int = 20,
    factor: float = 0.1,
    rtol: float = 1e-4,
    include_arch: bool = True,
) -> tuple[SearchState, Array]:
    """End-of-epoch rule: on a plateau of the training loss, lr *= factor (jittable).

    The paper says "the learning rate"; include_arch=True scales alpha's too.
    Returns (state, reduced: bool scalar).
    """
    plateau, reduce = plateau_update(state.plateau, epoch_loss, patience=patience, rtol=rtol)
    scale = jnp.where(reduce, factor, 1.0)
    opt_a = scale_learning_rate(state.opt_a, scale) if include_arch else state.opt_a
    new_state = state.replace(
        opt_w=scale_learning_rate(state.opt_w, scale), opt_a=opt_a, plateau=plateau
    )
    return new_state, reduce


# --- The bi-level steps (SCNAS Algorithm 1, first order) ---


def _loss(params, op_choice, batch, apply_fn, loss_fn):
    logits = apply_fn(params, batch["image"], op_choice)
    return loss_fn(logits, batch["label"])


def argmax_choice(arch: ArchLogits, like) -> Any:
    """The derived network as a choice of the form `like` (a sampler's output): one op
    per edge, argmax alpha, weight 1; the pair form's second slot is the free zero op
    (`choice_from_indices`), the dense form (DARTS) one-hot weights."""
    best = jnp.argmax(jax.lax.stop_gradient(arch), axis=-1)
    if isinstance(like, dict):
        return choice_from_indices(best)
    return jax.nn.one_hot(best, arch.shape[-1], dtype=arch.dtype)


def _choice(sample_fn, key, arch, sched):
    """This step's choice: the sampler's, or from sched["argmax"] (a traced bool: a
    planned search past its anneal) the argmax network exactly. The sampler's Z then
    differs from it only by a few edges whose top two ops lie within ~tau_min, yet pays
    for a second op on every edge (measured: a 48^3 Theta step 1.2 s instead of 1.9 s)."""
    choice = (sample_fn or sample_edges)(key, arch, sched["tau"], sched["noise"])
    if "argmax" not in sched:
        return choice
    fixed = argmax_choice(arch, choice)
    return jax.tree.map(lambda f, c: jnp.where(sched["argmax"], f, c).astype(c.dtype),
                        fixed, choice)


def paper_schedule(tau_fn):
    """The paper's schedule_fn: tau_fn(step) (per epoch), full noise, constant lr."""

    def schedule_fn(step, horizon):
        del horizon
        return {"tau": tau_fn(step), "noise": jnp.float32(1.0), "lr_w": jnp.float32(1.0),
                "lr_a": jnp.float32(1.0)}

    return schedule_fn


def scaled(updates, factor):
    """Adam's step times factor: the same as scaling its learning rate (schedules)."""
    return jax.tree.map(lambda u: (u * factor).astype(u.dtype), updates)


def _objective(params, arch, batch, key, sched, *, apply_fn, loss_fn, sample_fn,
               arch_cost_fn=None):
    """(loss + arch cost, (loss, cost)) of this step's choice; differentiable in both."""
    op_choice = _choice(sample_fn, key, arch, sched)
    loss = _loss(params, op_choice, batch, apply_fn, loss_fn)
    cost = jnp.float32(0.0) if arch_cost_fn is None else arch_cost_fn(arch)
    return loss + cost, (loss, cost)


def _apply(tx, grads, opt_state, values, factor):
    """One optimizer step, its update scaled by factor: (new values, new opt state)."""
    updates, opt_state = tx.update(grads, opt_state, values)
    return optax.apply_updates(values, scaled(updates, factor)), opt_state


def _theta_metrics(loss, sched, grads) -> dict:
    return {"train/loss_w": loss, "train/tau": sched["tau"],
            "train/gumbel_noise": sched["noise"], "train/lr_factor_w": sched["lr_w"],
            "train/grad_norm_w": optax.tree.norm(grads)}


def _alpha_metrics(loss, grads, arch, cost, with_cost: bool) -> dict:
    metrics = {"train/loss_a": loss, "train/grad_norm_a": optax.tree.norm(grads),
               "arch/entropy": jnp.mean(arch_entropy(arch))}
    if with_cost:
        metrics["train/arch_cost"] = cost
    return metrics


def weights_step(state: SearchState, batch, key: jax.Array, *, apply_fn, tx_w, loss_fn,
                 tau_fn=None, schedule_fn=None, sample_fn=None):
    """Updates Theta on a training batch with Z = sample_edges(key, arch, tau(step)).

    Pass the same key to the `arch_step` of this iteration (Algorithm 1: one Z for both).
    schedule_fn(step, horizon) -> {"tau", "noise", "lr_w", "lr_a"} (schedules.py); or
    the paper's tau_fn(step) alone.

    Returns:
      (state with new params, opt_w and step + 1, metrics of finite float32 scalars).
    """
    sched = (schedule_fn or paper_schedule(tau_fn))(state.step, state.horizon)
    (_, (loss, _)), grads = jax.value_and_grad(_objective, has_aux=True)(
        state.params, state.arch, batch, key, sched, apply_fn=apply_fn, loss_fn=loss_fn,
        sample_fn=sample_fn)
    params, opt_w = _apply(tx_w, grads, state.opt_w, state.params, sched["lr_w"])
    new_state = state.replace(step=state.step + 1, params=params, opt_w=opt_w)
    return new_state, _theta_metrics(loss, sched, grads)


def arch_step(state: SearchState, batch, key: jax.Array, *, apply_fn, tx_a, loss_fn,
              tau_fn=None, schedule_fn=None, sample_fn=None, arch_cost_fn=None):
    """Updates alpha on a validation batch, gradient through the sampled weights.

    arch_cost_fn(arch) -> scalar, if given, is added to the validation loss (a resource
    term such as `cost.memory_cost`, DiNTS-style; reported as train/arch_cost).

    Call it AFTER the `weights_step` of the same iteration, with the same key: that step
    has already advanced `state.step`, so this iteration's tau is tau_fn(step - 1), and
    the arch is unchanged, hence Z is the very sample Theta was updated with. Theta is
    the updated one (first-order bi-level, as in Algorithm 1).

    Returns:
      (state with new arch and opt_a, metrics of finite float32 scalars).
    """
    sched = (schedule_fn or paper_schedule(tau_fn))(jnp.maximum(state.step - 1, 0),
                                                    state.horizon)
    (_, (loss, cost)), grads = jax.value_and_grad(_objective, argnums=1, has_aux=True)(
        state.params, state.arch, batch, key, sched, apply_fn=apply_fn, loss_fn=loss_fn,
        sample_fn=sample_fn, arch_cost_fn=arch_cost_fn)
    arch, opt_a = _apply(tx_a, grads, state.opt_a, state.arch, sched["lr_a"])
    return state.replace(arch=arch, opt_a=opt_a), _alpha_metrics(
        loss, grads, arch, cost, arch_cost_fn is not None)


# `which` of `search_step`: the iteration's Theta step, or its alpha step.
THETA, ALPHA = 0, 1
THETA_METRICS = ("train/loss_w", "train/tau", "train/gumbel_noise", "train/lr_factor_w",
                 "train/grad_norm_w")


def search_step(state: SearchState, batch, key_which, *, apply_fn, tx_w, tx_a, loss_fn,
                tau_fn=None, schedule_fn=None, sample_fn=None, arch_cost_fn=None):
    """`weights_step` (which = THETA) or `arch_step` (which = ALPHA) as ONE program.

    key_which = (key, which), which a traced int32: both steps are one forward and one
    backward pass of the supernet, so one compiled program serves them. It computes the
    gradients of Theta and alpha on every call and keeps the update `which` names (and
    that optimizer's state); the other one is discarded. Same results as the two steps
    (same schedule, sample Z and gradients). Why: on 2 CPU cores (48^3, width 16) the
    two programs compiled in 126 s, this one in 67 s, for an alpha step of 1.8 s against
    1.1 s (it computes Theta's gradient too) and the same Theta step: the planner uses
    it for short budgets, where compiles are a large share of the time (BENCHMARKS.md).

    Returns:
      (state, metrics): metrics hold both steps' keys; `THETA_METRICS` are the Theta
      step's, the others the alpha step's.
    """
    key, which = key_which
    theta = which == THETA
    sched = (schedule_fn or paper_schedule(tau_fn))(jnp.maximum(state.step - which, 0),
                                                    state.horizon)
    (_, (loss, cost)), (grads_w, grads_a) = jax.value_and_grad(
        _objective, argnums=(0, 1), has_aux=True)(
        state.params, state.arch, batch, key, sched, apply_fn=apply_fn, loss_fn=loss_fn,
        sample_fn=sample_fn, arch_cost_fn=arch_cost_fn)
    params, opt_w = _apply(tx_w, grads_w, state.opt_w, state.params, sched["lr_w"])
    arch, opt_a = _apply(tx_a, grads_a, state.opt_a, state.arch, sched["lr_a"])

    def pick(if_theta, if_alpha):
        return jax.tree.map(lambda a, b: jnp.where(theta, a, b), if_theta, if_alpha)

    new_state = state.replace(
        step=state.step + theta.astype(state.step.dtype),
        params=pick(params, state.params), opt_w=pick(opt_w, state.opt_w),
        arch=pick(state.arch, arch), opt_a=pick(state.opt_a, opt_a))
    return new_state, {**_theta_metrics(loss, sched, grads_w),
                       **_alpha_metrics(loss, grads_a, new_state.arch, cost,
                                        arch_cost_fn is not None)}


def split_search_step(step):
    """(step_w, step_a) with `weights_step`'s and `arch_step`'s signatures and metrics,
    both calling `step`, a compiled `search_step`."""
    def step_w(state, batch, key):
        state, metrics = step(state, batch, (key, np.int32(THETA)))
        return state, {k: metrics[k] for k in THETA_METRICS}

    def step_a(state, batch, key):
        state, metrics = step(state, batch, (key, np.int32(ALPHA)))
        return state, {k: v for k, v in metrics.items() if k not in THETA_METRICS}

    return step_w, step_a


def make_steps(*, apply_fn, loss_fn, tx_w, tx_a, tau_fn=None, schedule_fn=None,
               sample_fn=None, arch_cost_fn=None):
    """(weights_step, arch_step) with the static arguments bound, ready for jax.jit.

    sample_fn(key, arch, tau, noise) -> what apply_fn takes as its choice (default SCNAS's
    `sample_edges`; `SAMPLERS` lists the others). Give schedule_fn (planned runs) or
    tau_fn (the paper's per-epoch tau). arch_cost_fn(arch): a term added to alpha's loss.
    """
    common = dict(apply_fn=apply_fn, tau_fn=tau_fn, schedule_fn=schedule_fn, loss_fn=loss_fn,
                  sample_fn=sample_fn)
    step_w = functools.partial(weights_step, tx_w=tx_w, **common)
    step_a = functools.partial(arch_step, tx_a=tx_a, arch_cost_fn=arch_cost_fn, **common)
    return step_w, step_a


# --- Gradient-based strategies on the SCNAS space: what each samples per step ---


def darts_weights(key: jax.Array, arch: ArchLogits, tau, noise=1.0) -> ArchLogits:
    """DARTS (first order): every op on every edge, weighted by softmax(alpha) (4, 14, 8)."""
    del key, tau, noise
    return jax.nn.softmax(arch, axis=-1)


# strategy -> (sample_fn, whether the network runs all ops: network.apply_network_dense).
SAMPLERS = {
    "scnas": (sample_edges, False),  # 2 ops per edge, Gumbel-softmax pair (Algorithm 2).
    "gdas": (sample_edges_gdas, False),  # 1 op per edge, straight-through hard Gumbel.
    "darts": (darts_weights, True),  # All 8 ops, softmax weights.
}
