"""C2FNAS: the coarse stage searches the topology, the fine stage the op of each cell.

Coarse (macro level): `num_topologies` U-path topologies (c2fnas.py: the resolution of
each of 12 cells) are sampled and grouped into `num_groups` groups of similar paths
(k-means on the level vectors). Each group trains its own shared supernet for its share
of `coarse_fraction` x num_steps iterations, a topology of the group drawn per step and
every cell running the three ops with weights 1/3. Each topology is then scored by
patient-wise Dice on the validation patches with its group's weights; the best one wins.
Grouping is what keeps weight sharing fair: paths that share a group share most cells.

Fine (micro level): on the winning topology, the op of each cell (2D 3x3x1, 3D 3x3x3,
P3D 3x3x1 + 1x1x3) is searched as in DARTS: every op runs, weighted by softmax(alpha)
(12, 3), Theta on the Theta cases and alpha on the alpha cases, alternately, starting
from the winning group's weights. The derived network (argmax op per cell) keeps those
weights and has the size and input patch of the search: no search/deployment gap.

Both stages run through one compiled supernet step (topology and op weights are traced
inputs of the batch); the alpha step is the one other program. Both stages run through
loop.run as one checkpointed state (the best group's weights included), so a killed
search resumes bit-exact; a topology draw is a function of (seed, step).
"""

import functools
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
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
from jaxnas.spaces import c2fnas
from jaxnas.spaces import genotype as genotype_lib


@flax.struct.dataclass
class C2fnasState:
    """What a checkpoint holds across both stages."""

    step: Int[Array, ""]
    train: fit.TrainState  # The current group's supernet, then the fine stage's.
    best: fit.TrainState  # The state of the group whose topology scored best so far.
    best_dice: Float[Array, ""]
    best_topology: Int[Array, "12"]
    scores: Float[Array, "n"]  # Validation Dice per topology (groups in order), -1 unscored.
    arch: Float[Array, "12 3"]  # Fine stage: op logits per cell.
    opt_a: optax.OptState


def run(config: config_lib.Config, workdir: str) -> dict:
    start_wall = time.time()
    data = phases.load_training_data(config, workdir)
    theta = [data.cases[i] for i in data.theta_ids]
    alpha = [data.cases[i] for i in data.alpha_ids]
    s, num_classes = config.search, data.dataset.num_classes
    in_channels = len(data.dataset.modalities)
    steps_per_epoch, num_steps = common.budget(config, len(theta))

    topologies = c2fnas.sample_topologies(np.random.default_rng(config.seed), s.num_topologies)
    groups = c2fnas.group_topologies(topologies, s.num_groups, seed=config.seed)
    num_groups = int(groups.max()) + 1
    per_group = max(1, round(num_steps * s.coarse_fraction) // num_groups)
    fine_steps = max(1, num_steps - per_group * num_groups)

    impl = phases.resolve_impl(s.impl)
    apply = functools.partial(c2fnas.apply_supernet, impl=impl)
    dice_ce = functools.partial(losses.dice_ce, num_classes=num_classes, ce_weight=s.ce_weight)

    def loss_fn(params, batch):  # Topology and op weights travel with the batch.
        logits = apply(params, batch["image"], batch["topology"], batch["op_weights"])
        return dice_ce(logits, batch["label"])

    tx_w, tx_a = bilevel.make_optimizers(lr_w=s.lr_w, betas_w=s.betas_w, lr_a=s.lr_a,
                                        betas_a=s.betas_a)
    mesh = sharding.mesh_from_spec(s.mesh)
    put_state, put = sharding.placers(mesh)
    # Topology and op weights are the step's third (replicated) argument.
    step_fn = sharding.compile_step(
        lambda state, batch, arch_in: fit.train_step(state, {**batch, **arch_in},
                                                     loss_fn=loss_fn, tx=tx_w), mesh)
    score_fn = jax.jit(lambda p, b, t, w: common.patch_dice(apply(p, b["image"], t, w),
                                                            b["label"]))
    alpha_fn = jax.jit(functools.partial(_alpha_step, loss_fn=loss_fn, tx=tx_a))
    val = common.val_batch(alpha, config)
    writer = writer_lib.MetricWriter(workdir)
    key = jax.random.key(config.seed)
    uniform, coarse_steps = c2fnas.uniform_weights(), per_group * num_groups
    members = [topologies[groups == g].astype(np.int32) for g in range(num_groups)]
    logging.info("c2fnas coarse stage: %d topologies in %d groups, %d steps each; fine "
                 "stage: %d steps; patch %s, width %d", len(topologies), num_groups,
                 per_group, fine_steps, config.data.patch_size, s.width)

    def group_state(g):
        return put_state(fit.init_state(c2fnas.init_supernet(
            jax.random.fold_in(key, g), in_channels=in_channels, num_classes=num_classes,
            width=s.width), tx_w))

    def fresh_state():
        first = group_state(0)
        arch = jnp.zeros((c2fnas.NUM_CELLS, len(c2fnas.OP_NAMES)), jnp.float32)
        return C2fnasState(step=jnp.asarray(0, jnp.int32), train=first,
                           best=jax.tree.map(jnp.copy, first),
                           best_dice=jnp.asarray(-1.0, jnp.float32),
                           best_topology=jnp.asarray(members[0][0]),
                           scores=jnp.full((len(topologies),), -1.0, jnp.float32),
                           arch=arch, opt_a=tx_a.init(arch))

    def coarse_step(state, step):
        """Group step // per_group trains on one of its topologies; its last step scores
        every member with the group's weights."""
        g = step // per_group
        train = group_state(g) if step % per_group == 0 and step else state.train
        draw = np.random.default_rng((config.seed, 1, step)).integers(len(members[g]))
        train, m = step_fn(train, put(phases.step_batch(theta, config, step, 0)), put_state(
            {"topology": members[g][draw], "op_weights": uniform}))
        state = state.replace(step=state.step + 1, train=train)
        if (step + 1) % per_group:
            return state, m
        first = int(np.sum(groups < g))  # Members are scored in topology order.
        scores, tick = state.scores, time.time()
        for i, topology in enumerate(members[g]):
            dice = float(np.mean(jax.device_get(score_fn(train.params, val, topology,
                                                         uniform))))
            scores = scores.at[first + i].set(dice)
            if dice > float(state.best_dice):
                state = state.replace(best=jax.tree.map(jnp.copy, train),  # train is donated.
                                      best_dice=jnp.float32(dice),
                                      best_topology=jnp.asarray(topology))
        writer.write_scalars(step + 1, {"coarse/best_val_dice": float(state.best_dice)})
        logging.info("coarse group %d/%d: %d topologies, best validation Dice so far %.4f "
                     "(%.1f s)", g + 1, num_groups, len(members[g]), float(state.best_dice),
                     time.time() - tick)
        return state.replace(scores=scores), m

    def fine_step(state, step):
        """DARTS on the chosen topology: a Theta step with softmax(arch), then an alpha step."""
        # The winning group's state goes on (a copy: the step donates its input).
        train = jax.tree.map(jnp.copy, state.best) if step == coarse_steps else state.train
        topology = state.best_topology
        train, m = step_fn(train, put(phases.step_batch(theta, config, step, 0)), {
            "topology": topology, "op_weights": jax.nn.softmax(state.arch, -1)})
        batch = {**phases.step_batch(alpha, config, step, 1), "topology": topology}
        arch, opt_a, loss_a = alpha_fn(state.arch, state.opt_a, train.params, batch)
        m = {**m, "train/loss_a": loss_a, "arch/entropy": jnp.mean(bilevel.arch_entropy(arch))}
        return state.replace(step=state.step + 1, train=train, arch=arch, opt_a=opt_a), m

    def iteration(state, step):
        return (coarse_step if step < coarse_steps else fine_step)(state, step)

    manager = checkpoints.make_manager(workdir)
    state = put_state(checkpoints.restore_or_init(manager, fresh_state))
    state = loop.run(state, schedule=loop.Schedule(coarse_steps + fine_steps, steps_per_epoch,
                                                   s.log_every, s.ckpt_every),
                     step_fn=iteration, loss_key="train/loss", manager=manager,
                     writer=writer, workdir=workdir, name="c2fnas")
    step, arch, coarse_dice = int(state.step), state.arch, float(state.best_dice)
    topology = tuple(int(v) for v in jax.device_get(state.best_topology))
    logging.info("coarse stage chose topology %s (validation Dice %.4f)", topology,
                 coarse_dice)
    scored = [{"topology": t.tolist(), "group": int(g), "val_dice": round(float(d), 4)}
              for t, g, d in zip(np.concatenate(members),
                                 np.concatenate([[g] * len(m) for g, m in enumerate(members)]),
                                 jax.device_get(state.scores))]
    search_seconds = time.time() - start_wall

    op_indices = tuple(int(o) for o in np.argmax(np.asarray(arch), -1))
    genotype = genotype_lib.macro_genotype("c2fnas", c2fnas.to_json(topology, op_indices))
    description = {"kind": "genotype", "source": "c2fnas search", "genotype": genotype,
                   "in_channels": in_channels, "num_classes": num_classes, "width": s.width}
    params = c2fnas.compact_params(state.train.params, topology, op_indices)
    probs = np.asarray(jax.nn.softmax(arch, -1)).round(4).tolist()
    summary = common.finish(
        config, workdir, data, writer, description=description, params=params, step=step,
        start_wall=start_wall, search_seconds=search_seconds,
        genotype_extra={"coarse_val_dice": round(coarse_dice, 4), "op_probs": probs,
                        "coarse": scored})
    logging.info("held-out Dice %s, mean foreground %.4f", summary["dice_per_class"],
                 summary["dice_mean_foreground"])
    return summary


def _alpha_step(arch, opt_a, params, batch, *, loss_fn, tx):
    """First-order DARTS step of the op logits (12, 3) on an alpha batch."""

    def loss_of_arch(a):
        return loss_fn(params, {**batch, "op_weights": jax.nn.softmax(a, -1)})

    loss, grads = jax.value_and_grad(loss_of_arch)(arch)
    updates, opt_a = tx.update(grads, opt_a, arch)
    return optax.apply_updates(arch, updates), opt_a, loss
