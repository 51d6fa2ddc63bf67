"""RONASMIS: an LSTM controller samples macro U-Nets; the children share weights.

ENAS-style, as RONASMIS (Bae et al. 2019) describes it: every iteration the controller
(controller.py) samples one child of the macro space (ronasmis.py: op, depth and skip of
each U-Net stage) and the shared weights take one step on it (deep-supervision loss).
After each epoch (from warmup_epochs on) the controller samples `num_children` children
(paper: 20), each is rewarded with its patient-wise Dice on the validation patches with
the current shared weights, and one REINFORCE step (moving-average baseline, entropy
bonus) moves the controller. The shared weights are trained continuously and never
retrained: the result is the best of the controller's greedy child and one more batch of
samples, with its slice of the shared weights.

The steps run through loop.run: the shared weights and the controller are one checkpointed
state (controller steps fall at epoch ends, before the epoch's checkpoint), so a killed
search resumes bit-exact.
"""

import functools
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jaxtyping import Array, Int

from jaxnas import config as config_lib
from jaxnas import fit
from jaxnas import loop
from jaxnas import phases
from jaxnas import sharding
from jaxnas.io import checkpoints
from jaxnas.io import writer as writer_lib
from jaxnas.search import controller
from jaxnas.search.strategies import common
from jaxnas.spaces import genotype as genotype_lib
from jaxnas.spaces import ronasmis

HIDDEN = 64  # LSTM units (ENAS: 64 for its macro space).


@flax.struct.dataclass
class RonasmisState:
    """What a checkpoint holds: the shared child weights and the controller."""

    step: Int[Array, ""]
    train: fit.TrainState
    ctrl: controller.ControllerState


def run(config: config_lib.Config, workdir: str) -> dict:
    start_wall = time.time()
    data = phases.load_training_data(config, workdir)
    theta = [data.cases[i] for i in data.theta_ids]
    alpha = [data.cases[i] for i in data.alpha_ids]
    s, num_classes = config.search, data.dataset.num_classes
    in_channels = len(data.dataset.modalities)
    steps_per_epoch, num_steps = common.budget(config, len(theta))
    impl = phases.resolve_impl(s.impl)
    vocab = ronasmis.VOCAB_SIZES

    def loss_fn(params, batch):
        return ronasmis.ds_loss(params, batch, batch["choice"], num_classes=num_classes,
                                ce_weight=s.ce_weight, impl=impl)

    tx_w = fit.make_optimizer(s.lr_w, s.betas_w)
    mesh = sharding.mesh_from_spec(s.mesh)
    put_state, put = sharding.placers(mesh)
    # The child's choice is the step's third (replicated) argument.
    step_fn = sharding.compile_step(
        lambda state, batch, choice: fit.train_step(state, {**batch, "choice": choice},
                                                    loss_fn=loss_fn, tx=tx_w), mesh)
    score_fn = jax.jit(lambda p, b, c: common.patch_dice(
        ronasmis.apply_network(p, b["image"], c, impl=impl), b["label"]))
    sample = functools.partial(controller.sample, vocab_sizes=vocab, hidden=HIDDEN)
    sample_one = jax.jit(lambda p, k: sample(p, k)[0])
    sample_many = jax.jit(lambda p, keys: jax.vmap(lambda k: sample(p, k)[0])(keys))
    tx_c = optax.adam(s.lr_controller)
    reinforce = controller.make_reinforce_step(tx_c, vocab, HIDDEN,
                                               entropy_weight=s.entropy_weight)

    key_w, key_c, key_loop = jax.random.split(jax.random.key(config.seed), 3)

    def fresh_state():
        return RonasmisState(
            step=jnp.asarray(0, jnp.int32),
            train=fit.init_state(ronasmis.init_network(
                key_w, in_channels=in_channels, num_classes=num_classes, width=s.width), tx_w),
            ctrl=controller.init_state(controller.init_controller(key_c, vocab, HIDDEN), tx_c))

    val = common.val_batch(alpha, config)
    writer = writer_lib.MetricWriter(workdir)

    def rewards_of(params, children) -> np.ndarray:
        # One child at a time: vmap would turn the op switch into a select of all ops.
        return np.array([float(np.mean(jax.device_get(score_fn(params, val, c))))
                         for c in children], np.float32)

    def iteration(state, step):
        """One shared-weights step of a sampled child; at an epoch's end (after the
        warm-up epochs) one REINFORCE step of the controller on num_children children."""
        key = jax.random.fold_in(key_loop, step)
        child = put_state(sample_one(state.ctrl.params, key))
        train, m = step_fn(state.train, put(phases.step_batch(theta, config, step, 0)), child)
        ctrl, done = state.ctrl, step + 1
        if done % steps_per_epoch == 0 and done // steps_per_epoch > s.warmup_epochs:
            children = sample_many(ctrl.params, jax.random.split(key, s.num_children))
            ctrl, cm = reinforce(ctrl, children, rewards_of(train.params, children))
            cm = jax.device_get(cm)
            writer.write_scalars(done, cm)
            logging.info("controller step %d: reward %.4f (baseline %.4f), entropy %.3f",
                         int(ctrl.step), cm["controller/reward_mean"],
                         cm["controller/baseline"], cm["controller/entropy"])
        return RonasmisState(step=state.step + 1, train=train, ctrl=ctrl), m

    logging.info("ronasmis: %d steps (%d epochs x %d), %d children per controller step, "
                 "patch %s, width %d", num_steps, s.num_epochs, steps_per_epoch,
                 s.num_children, config.data.patch_size, s.width)
    manager = checkpoints.make_manager(workdir)
    state = put_state(checkpoints.restore_or_init(manager, fresh_state))
    state = loop.run(state, schedule=loop.Schedule(num_steps, steps_per_epoch, s.log_every,
                                                   s.ckpt_every),
                     step_fn=iteration, loss_key="train/loss", manager=manager,
                     writer=writer, workdir=workdir, name="ronasmis")
    ctrl = state.ctrl

    # The greedy child and a last batch of samples, scored with the final shared weights.
    final_key = jax.random.fold_in(key_loop, num_steps)
    candidates = np.concatenate([
        np.asarray(controller.greedy(ctrl.params, vocab_sizes=vocab, hidden=HIDDEN))[None],
        np.asarray(sample_many(ctrl.params, jax.random.split(final_key, s.num_children)))])
    rewards = rewards_of(state.train.params, candidates)
    best = candidates[int(np.argmax(rewards))]
    search_seconds = time.time() - start_wall
    logging.info("ronasmis: greedy child Dice %.4f, best of %d %.4f", rewards[0],
                 len(candidates), rewards.max())

    genotype = genotype_lib.macro_genotype(
        "ronasmis", {"decisions": ronasmis.choice_to_dict(best)})
    description = {"kind": "genotype", "source": "ronasmis search", "genotype": genotype,
                   "in_channels": in_channels, "num_classes": num_classes, "width": s.width}
    params = ronasmis.compact_params(state.train.params, tuple(int(c) for c in best))
    probs = controller.decision_probs(ctrl.params, vocab_sizes=vocab, hidden=HIDDEN)
    summary = common.finish(
        config, workdir, data, writer, description=description, params=params,
        step=num_steps, start_wall=start_wall, search_seconds=search_seconds,
        genotype_extra={"val_dice": round(float(rewards.max()), 4),
                        "greedy_val_dice": round(float(rewards[0]), 4),
                        "controller_steps": int(ctrl.step),
                        "greedy_probs": {name: np.asarray(p).round(4).tolist()
                                         for (name, _), p in zip(ronasmis.DECISIONS, probs)}})
    logging.info("held-out Dice %s, mean foreground %.4f", summary["dice_per_class"],
                 summary["dice_mean_foreground"])
    return summary
