"""Step schedules of a planned run: temperature, Gumbel noise and learning-rate factors.

Pure and jittable. A phase's lengths travel as a traced int32 `horizon` in its state,
`(warmup_end, anneal_end, total)`, so one compiled step serves any budget: the budget is
turned into step counts once, after the steps are compiled and timed, and stored with the
state (a resumed run reads them back and replays exactly the same schedule).

Search (SCNAS phases): steps [0, warmup_end) train Theta only at tau = 1; over
[warmup_end, anneal_end) tau falls geometrically from 1 to tau_min and the Gumbel noise
scale linearly from 1 to 0; from anneal_end on the step runs the argmax network exactly
(one op per edge at weight 1, `annealed`), i.e. the derived architecture Theta is then
trained as. That is SCNAS's argument for keeping Theta (training-time and test-time
networks coincide), made to hold before the end instead of only as tau -> 0 at epoch 277
of 400.
"""

import jax.numpy as jnp


def progress(step, start, end):
    """0 before start, 1 after end, linear in between (float32)."""
    step = jnp.asarray(step, jnp.float32)
    span = jnp.maximum(jnp.asarray(end, jnp.float32) - start, 1.0)
    return jnp.clip((step - start) / span, 0.0, 1.0)


def annealed_tau(step, horizon, *, tau_min: float):
    """1 until warmup_end, tau_min from anneal_end, geometric in between."""
    p = progress(step, horizon[0], horizon[1])
    return jnp.exp(p * jnp.log(jnp.float32(tau_min)))


def gumbel_noise_scale(step, horizon):
    """1 until warmup_end, 0 from anneal_end: the sample becomes argmax(alpha)."""
    return 1.0 - progress(step, horizon[0], horizon[1])


def annealed(step, horizon):
    """True from anneal_end on (a bi-level phase was planned): the search then trains the
    argmax network exactly, one op per edge (bilevel.argmax_choice)."""
    step = jnp.asarray(step, jnp.int32)
    return (step >= horizon[1]) & (horizon[1] > horizon[0])


def lr_factor(step, horizon, *, warmup_steps: int, kind: str = "cosine"):
    """Learning-rate multiplier: linear warm-up, then cosine or poly (0.9) decay to 0.

    `kind="constant"` is 1 throughout (the paper's setting with the plateau rule).
    The decay runs over the whole phase, horizon[2] steps.
    """
    if kind == "constant":
        return jnp.float32(1.0)
    step = jnp.asarray(step, jnp.float32)
    warm = jnp.minimum(1.0, (step + 1.0) / max(warmup_steps, 1))
    p = progress(step, warmup_steps, horizon[2])
    if kind == "cosine":
        decay = 0.5 * (1.0 + jnp.cos(jnp.pi * p))
    elif kind == "poly":
        decay = (1.0 - p) ** 0.9
    else:
        raise ValueError(f"unknown learning-rate schedule {kind!r}")
    return warm * decay
