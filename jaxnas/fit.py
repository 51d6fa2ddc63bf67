"""Training a fixed architecture: one optax chain, pure steps (the search's single-level twin).

`TrainState` is one pytree of arrays, saved by orbax as is. The plateau rule and the
injected learning rate are the search's (search/bilevel.py), so a fixed network trains under the
same optimiser settings as the supernet it is compared with.
"""

import flax
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Int

from jaxnas.search import bilevel


@flax.struct.dataclass
class TrainState:
    step: Int[Array, ""]
    params: dict
    opt: optax.OptState
    plateau: bilevel.PlateauState
    horizon: Int[Array, "3"]  # (0, 0, total steps) of a planned phase (schedules.py).


def make_optimizer(lr: float, betas: tuple[float, float]) -> optax.GradientTransformation:
    """Adam with an injected learning rate (the search's Theta chain)."""
    tx_w, _ = bilevel.make_optimizers(lr_w=lr, betas_w=betas)
    return tx_w


def init_state(params: dict, tx: optax.GradientTransformation, horizon=(0, 0, 0)) -> TrainState:
    return TrainState(step=jnp.asarray(0, jnp.int32), params=params, opt=tx.init(params),
                      plateau=bilevel.init_plateau(), horizon=jnp.asarray(horizon, jnp.int32))


def train_step(state: TrainState, batch: dict, *, loss_fn, tx,
               lr_fn=None) -> tuple[TrainState, dict]:
    """One Adam step on loss_fn(params, batch); returns (state, metrics).

    lr_fn(step, horizon) -> factor on the step (schedules.lr_factor); None: 1.
    """
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
    updates, opt = tx.update(grads, state.opt, state.params)
    factor = jnp.float32(1.0) if lr_fn is None else lr_fn(state.step, state.horizon)
    params = optax.apply_updates(state.params, bilevel.scaled(updates, factor))
    metrics = {"train/loss": loss, "train/grad_norm": optax.tree.norm(grads),
               "train/lr_factor": factor}
    return state.replace(step=state.step + 1, params=params, opt=opt), metrics


def plateau_step(state: TrainState, epoch_loss, *, patience: int, factor: float = 0.1):
    """End of epoch: lr *= factor once more than `patience` epochs in a row did not improve."""
    plateau, reduce = bilevel.plateau_update(state.plateau, epoch_loss, patience=patience)
    opt = bilevel.scale_learning_rate(state.opt, jnp.where(reduce, factor, 1.0))
    return state.replace(opt=opt, plateau=plateau), reduce
