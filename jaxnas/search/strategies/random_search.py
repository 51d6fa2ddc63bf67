"""Random search on the SCNAS space: sample genotypes, train each briefly, keep the best.

The baseline a NAS method has to beat (Li and Talwalkar 2019): `num_candidates` uniform
random genotypes (an op per edge, zero included: genotype.random_genotype), each trained
from fresh weights for num_steps / num_candidates steps, scored by patient-wise Dice on
the validation patches (common.val_batch). The best one's compact network, with the
weights it was scored with, is the result. Every candidate runs through the supernet with
its one-op choice as a traced input, so all of them share one compile. The steps run
through loop.run with the best candidate so far in the checkpointed state, so a killed
search resumes bit-exact.
"""

import functools
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jaxtyping import Array, Float, Int

from jaxnas import config as config_lib
from jaxnas import fit
from jaxnas import loop
from jaxnas import phases
from jaxnas import sharding
from jaxnas.io import checkpoints
from jaxnas.io import writer as writer_lib
from jaxnas.nn import losses
from jaxnas.search import bilevel
from jaxnas.search.strategies import common
from jaxnas.spaces import genotype as genotype_lib
from jaxnas.spaces.scnas import fixed_network
from jaxnas.spaces.scnas import network


@flax.struct.dataclass
class RandomSearchState:
    """What a checkpoint holds: the candidate in training, the best one so far, scores."""

    step: Int[Array, ""]
    train: fit.TrainState
    best_params: dict  # Supernet params of the best-scoring candidate so far.
    scores: Float[Array, "n"]  # Validation Dice per candidate, -1 until scored.


def run(config: config_lib.Config, workdir: str) -> dict:
    start_wall = time.time()
    data = phases.load_training_data(config, workdir)
    theta = [data.cases[i] for i in data.theta_ids]
    alpha = [data.cases[i] for i in data.alpha_ids]
    s, num_classes = config.search, data.dataset.num_classes
    in_channels = len(data.dataset.modalities)
    steps_per_epoch, num_steps = common.budget(config, len(theta))
    per_candidate = max(1, num_steps // s.num_candidates)

    impl = phases.resolve_impl(s.impl)
    init = functools.partial(network.init_network, in_channels=in_channels,
                             num_classes=num_classes, width=s.width)
    apply = functools.partial(network.apply_network, impl=impl)
    dice_ce = functools.partial(losses.dice_ce, num_classes=num_classes, ce_weight=s.ce_weight)

    def loss_fn(params, batch):
        return dice_ce(apply(params, batch["image"], batch["choice"]), batch["label"])

    tx = fit.make_optimizer(s.lr_w, s.betas_w)
    mesh = sharding.mesh_from_spec(s.mesh)
    put_state, put = sharding.placers(mesh)
    # The candidate's choice is the step's third (replicated) argument.
    step_fn = sharding.compile_step(
        lambda state, batch, choice: fit.train_step(state, {**batch, "choice": choice},
                                                    loss_fn=loss_fn, tx=tx), mesh)
    score_fn = jax.jit(lambda p, b, c: common.patch_dice(apply(p, b["image"], c), b["label"]))
    val = common.val_batch(alpha, config)
    writer = writer_lib.MetricWriter(workdir)
    seeds = [config.seed * 1000 + n for n in range(s.num_candidates)]
    genotypes = [genotype_lib.random_genotype(seed) for seed in seeds]
    indices = [genotype_lib.genotype_to_indices(g) for g in genotypes]
    choices = [put_state(bilevel.choice_from_indices(i)) for i in indices]

    def candidate_state(n):
        return put_state(fit.init_state(
            init(jax.random.fold_in(jax.random.key(config.seed), n)), tx))

    def fresh_state():
        first = candidate_state(0)
        return RandomSearchState(step=jnp.asarray(0, jnp.int32), train=first,
                                 best_params=jax.tree.map(jnp.copy, first.params),
                                 scores=jnp.full((s.num_candidates,), -1.0, jnp.float32))

    def iteration(state, step):
        """A step of candidate step // per_candidate; its last step scores it."""
        n = step // per_candidate
        train = candidate_state(n) if step % per_candidate == 0 and step else state.train
        train, m = step_fn(train, put(phases.step_batch(theta, config, step, 0)), choices[n])
        best_params, scores = state.best_params, state.scores
        if (step + 1) % per_candidate == 0:
            dice = float(np.mean(jax.device_get(score_fn(train.params, val, choices[n]))))
            if dice > float(np.max(scores)):
                best_params = jax.tree.map(jnp.copy, train.params)  # train is donated.
            scores = scores.at[n].set(dice)
            writer.write_scalars(step + 1, {"random/val_dice": dice})
            logging.info("candidate %d/%d (seed %d): validation Dice %.4f", n + 1,
                         s.num_candidates, seeds[n], dice)
        return RandomSearchState(step=state.step + 1, train=train, best_params=best_params,
                                 scores=scores), m

    logging.info("random search: %d candidates x %d steps, patch %s, width %d",
                 s.num_candidates, per_candidate, config.data.patch_size, s.width)
    manager = checkpoints.make_manager(workdir)
    state = put_state(checkpoints.restore_or_init(manager, fresh_state))
    state = loop.run(state, schedule=loop.Schedule(per_candidate * s.num_candidates,
                                                   steps_per_epoch, s.log_every,
                                                   s.ckpt_every),
                     step_fn=iteration, loss_key="train/loss", manager=manager,
                     writer=writer, workdir=workdir, name="random")
    step = int(state.step)
    scores = [{"seed": seed, "val_dice": round(float(d), 4)}
              for seed, d in zip(seeds, jax.device_get(state.scores))]
    n = int(np.argmax(jax.device_get(state.scores)))
    best = (float(state.scores[n]), genotypes[n],
            fixed_network.compact_from_supernet(state.best_params, indices[n]))
    search_seconds = time.time() - start_wall

    dice, genotype, params = best
    description = {"kind": "genotype", "source": "random search", "genotype": genotype,
                   "in_channels": in_channels, "num_classes": num_classes, "width": s.width}
    summary = common.finish(config, workdir, data, writer, description=description,
                            params=params, step=step, start_wall=start_wall,
                            search_seconds=search_seconds,
                            genotype_extra={"val_dice": round(dice, 4), "candidates": scores})
    logging.info("held-out Dice %s, mean foreground %.4f", summary["dice_per_class"],
                 summary["dice_mean_foreground"])
    return summary
