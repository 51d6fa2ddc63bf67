"""The gradient strategies (scnas, gdas, darts): data -> plan -> bi-level SCNAS loop ->
genotype -> fine-tune -> evaluation.

`search_and_evaluate(config, workdir)` is the one long function (big_vision style); the
maths lives in `search/bilevel.py`, `spaces/scnas/network.py`, `nn/losses.py`,
`search/schedules.py` and `inference.py`, the loop in `loop.py`; `phases.train_fixed`
runs the fine-tune phase (and --mode=train, modes/train.py). Outputs in the work dir:
TensorBoard events, `ckpt/` and `ckpt_finetune/` (orbax), `planned.json` +
`budget.json` (planned runs), `genotype.json`, `summary.json`.

SCNAS phases of a planned run (--budget_minutes): Theta warm-up, the bi-level search with
tau and Gumbel noise annealed (schedules.py), then fine-tuning of the derived network
with the searched Theta kept (--finetune_fraction). The summary reports the held-out Dice
of the fine-tuned network and, under `searched_theta`, of the searched Theta alone.
"""

import functools
import os
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from jaxnas import config as config_lib
from jaxnas import evaluation
from jaxnas import loop
from jaxnas import models
from jaxnas import phases
from jaxnas import planner
from jaxnas import sharding
from jaxnas.io import artifacts
from jaxnas.io import checkpoints
from jaxnas.io import writer as writer_lib
from jaxnas.nn import losses
from jaxnas.search import bilevel
from jaxnas.search import schedules
from jaxnas.spaces import cell_drawing
from jaxnas.spaces import genotype as genotype_lib
from jaxnas.spaces.scnas import cost
from jaxnas.spaces.scnas import fixed_network
from jaxnas.spaces.scnas import space


RunError = evaluation.RunError


def _arch_scalars(arch) -> dict:
    probs = np.asarray(bilevel.arch_probs(arch))
    entropy = np.asarray(bilevel.arch_entropy(arch))
    out = {}
    for t, cell in enumerate(space.CELL_TYPES):
        out[f"arch/entropy/{cell}"] = entropy[t]
        for o, op in enumerate(space.OP_NAMES):
            out[f"arch/prob/{cell}/{op}"] = probs[t, :, o].mean()
    return out


class SearchPrograms(NamedTuple):
    """What a search compiles: the supernet's init, both optimizers, the jitted steps."""
    init_params: Callable  # key -> supernet params
    tx_w: optax.GradientTransformation
    tx_a: optax.GradientTransformation
    # (state, batch, key) -> (state, metrics), state donated: two jitted steps, or both
    # calling one compiled bilevel.search_step (--one_step_program).
    step_w: Callable
    step_a: Callable
    plateau_fn: Callable | None  # the plateau rule under --lr_schedule=constant
    mesh: object  # jax.sharding.Mesh, or None for one device


@functools.lru_cache(maxsize=4)
def search_programs(s: config_lib.SearchConfig, in_channels: int, num_classes: int,
                    steps_per_epoch: int, planned: bool, train_patch: tuple = (),
                    batch_size: int = 1) -> SearchPrograms:
    """The search's programs for these static settings, built once per process.

    --memory_weight > 0 adds weight x the derived network's expected activation memory
    (GiB of a training step at train_patch and batch_size, `cost.memory_cost`) to
    alpha's loss.

    Memoized so that runs in one process with the same settings (a resumed run, the
    tests, experiments/device_check.py) reuse the jitted steps instead of tracing the
    supernet again (about 20 s a time on 2 CPU cores); the device check times these very
    steps, so its compiles are the search's.
    """
    init_params, apply_fn = phases.make_model(s, in_channels, num_classes)
    tx_w, tx_a = bilevel.make_optimizers(lr_w=s.lr_w, betas_w=s.betas_w, lr_a=s.lr_a,
                                        betas_a=s.betas_a)
    sample_fn, _ = bilevel.SAMPLERS[s.strategy]
    if planned:
        schedule_fn = functools.partial(_planned_schedule, tau_min=s.tau_min,
                                        lr_kind=s.lr_schedule)
    else:
        schedule_fn = bilevel.paper_schedule(
            bilevel.make_tau_fn(steps_per_epoch, rate=s.tau_rate, tau_min=s.tau_min))
    arch_cost_fn = None
    if s.memory_weight > 0:
        table = cost.edge_memory_table(width=s.width, patch_size=train_patch,
                                       batch_size=batch_size, node_scale=s.node_scale,
                                       width_growth=s.width_growth,
                                       stem_stride=s.stem_stride)
        arch_cost_fn = lambda arch: s.memory_weight * cost.memory_cost(arch, table)  # noqa: E731
    common = dict(apply_fn=apply_fn, loss_fn=losses.from_settings(s, num_classes), tx_w=tx_w,
                  tx_a=tx_a, schedule_fn=schedule_fn, sample_fn=sample_fn,
                  arch_cost_fn=arch_cost_fn)
    mesh = sharding.mesh_from_spec(s.mesh)
    if s.one_step_program:
        step_w, step_a = bilevel.split_search_step(sharding.compile_step(
            functools.partial(bilevel.search_step, **common), mesh))
    else:
        step_w, step_a = (sharding.compile_step(step, mesh)
                          for step in bilevel.make_steps(**common))
    plateau_fn = None
    if s.lr_schedule == "constant":
        plateau_fn = jax.jit(functools.partial(bilevel.plateau_step,
                                               patience=s.plateau_patience))
    return SearchPrograms(init_params, tx_w, tx_a, step_w, step_a, plateau_fn, mesh)


def search_and_evaluate(config: config_lib.Config, workdir: str) -> dict:
    """Runs (or resumes) the SCNAS search, writes genotype.json and summary.json."""
    start_wall = time.time()
    # --- Data and plan ---
    data = phases.load_training_data(config, workdir)
    config = phases.planned_config(config, data, workdir)
    theta = [data.cases[i] for i in data.theta_ids]
    alpha = [data.cases[i] for i in data.alpha_ids]
    held_out = [data.cases[i] for i in data.val_ids]
    num_classes = data.dataset.num_classes
    in_channels = len(data.dataset.modalities)
    s = config.search
    search_patch = config.data.search_patch_size or config.data.patch_size
    steps_per_epoch = s.steps_per_epoch or max(1, len(theta) // config.data.batch_size)
    planned = s.budget_minutes > 0

    # --- Model, optimizers, steps ---
    init_key, loop_key = jax.random.split(jax.random.key(config.seed))
    programs = search_programs(s, in_channels, num_classes, steps_per_epoch, planned,
                               tuple(config.data.patch_size), config.data.batch_size)
    init_params, tx_w, tx_a = programs.init_params, programs.tx_w, programs.tx_a
    step_w, step_a, mesh = programs.step_w, programs.step_a, programs.mesh
    put_state, put = sharding.placers(mesh)

    def iteration(state, step):
        key = jax.random.fold_in(loop_key, step)  # One sample Z for both steps.
        state, m = step_w(state, put(phases.step_batch(theta, config, step, 0, search_patch)), key)
        # A planned search freezes alpha once tau and the noise are annealed: Adam moves
        # alpha by ~lr_a a step whatever the gradient's size, so near-tied ops kept
        # swapping after the anneal (a 25-step search changed its argmax there). The last
        # steps then train the derived network's Theta only (one op per edge: the
        # schedule's "argmax"), at about 0.4x the cost of an iteration.
        if step >= warmup_steps and not (planned and step >= horizon[1]):
            state, m_a = step_a(state, put(phases.step_batch(alpha, config, step, 1, search_patch)),
                                key)
            m = {**m, **m_a}
        return state, m

    # --- Budget: steps from the measured iteration time, fixed once (budget.json) ---
    def fresh_state():
        return bilevel.init_state(init_params(init_key), bilevel.init_arch(), tx_w, tx_a)

    if planned:
        def measure():
            probe_state = put_state(fresh_state())
            key = jax.random.fold_in(loop_key, 0)
            wb = put(phases.step_batch(theta, config, 0, 0, search_patch))
            ab = put(phases.step_batch(alpha, config, 0, 1, search_patch))
            seconds = phases.time_steps(lambda st: step_a(step_w(st, wb, key)[0], ab, key)[0],
                                 probe_state)
            left = phases.training_seconds_left(config, start_wall) * (1.0 - s.finetune_fraction)
            logging.info("search iteration %.3f s; %.0f s for the search", seconds, left)
            return planner.steps_in(left, seconds)

        num_steps = phases.budget_steps(workdir, "search_steps", measure)
        horizon = planner.search_horizon(num_steps, warmup_fraction=s.warmup_fraction,
                                         anneal_fraction=s.anneal_fraction)
        warmup_steps = horizon[0]
    else:
        num_steps = s.num_epochs * steps_per_epoch
        warmup_steps = s.warmup_epochs * steps_per_epoch
        horizon = (warmup_steps, 0, num_steps)

    manager = checkpoints.make_manager(workdir)
    state = checkpoints.restore_or_init(
        manager, lambda: fresh_state().replace(horizon=jnp.asarray(horizon, jnp.int32)))
    state = put_state(state)
    writer = writer_lib.MetricWriter(workdir)
    logging.info("search: %d steps (warm-up %d), patch %s, width %d, impl %s", num_steps,
                 warmup_steps, search_patch, s.width, phases.resolve_impl(s.impl))

    def scalars(st):
        return {"train/lr_w": bilevel.learning_rate(st.opt_w),
                "train/lr_a": bilevel.learning_rate(st.opt_a), **_arch_scalars(st.arch)}

    state = loop.run(state, schedule=loop.Schedule(num_steps, steps_per_epoch, s.log_every,
                                                   s.ckpt_every),
                     step_fn=iteration, loss_key="train/loss_w", manager=manager,
                     writer=writer, workdir=workdir, plateau_fn=programs.plateau_fn,
                     scalars_fn=scalars, name="search")
    search_seconds = time.time() - start_wall

    # --- Derive; keep the searched Theta (compact: one op per edge) ---
    genotype = genotype_lib.derive_genotype(state.arch)
    index = genotype_lib.genotype_to_indices(genotype)
    description = {"kind": "genotype", "source": f"{s.strategy} search",
                   "genotype": genotype, "in_channels": in_channels,
                   "num_classes": num_classes, "width": s.width,
                   **models.scnas_options(stem_stride=s.stem_stride, node_scale=s.node_scale,
                                          width_growth=s.width_growth,
                                          deep_supervision=s.deep_supervision)}
    model = models.build(description, impl=phases.resolve_impl(s.impl), ce_weight=s.ce_weight,
                         dice_background=s.dice_background, batch_dice=s.batch_dice)
    params = fixed_network.compact_from_supernet(state.params, index)
    searched_params, extra = params, {}
    if s.finetune_fraction > 0:
        # A copy: the fine-tune steps donate (and so delete) the buffers they start from.
        searched_params = jax.tree.map(jnp.copy, params)
        # Evaluated twice: the fine-tuned network and the searched Theta alone.
        params, extra["finetune_steps"] = phases.finetune(
            config, workdir, model, params, theta + alpha, writer, start_wall=start_wall,
            mesh=mesh, eval_shapes=[c.image.shape for c in held_out], eval_passes=2)

    # --- Evaluate, keep the derived network for predict ---
    start_eval = time.time()
    label_names = dict(data.dataset.labels)
    result = evaluation.evaluate_cases(models.probabilities_fn(model, params), held_out,
                                       num_classes=num_classes, config=config,
                                       label_names=label_names,
                                       picture_dir=os.path.join(workdir, "pictures"))
    if s.finetune_fraction > 0:
        # The searched Theta alone, as SCNAS would stop: the row next to the fine-tuned one.
        searched = evaluation.evaluate_cases(
            models.probabilities_fn(model, searched_params), held_out,
            num_classes=num_classes, config=config, label_names=label_names)
        names = [label_names.get(k, str(k)) for k in range(num_classes)]
        extra["searched_theta"] = {
            "dice_per_class": dict(zip(names, searched["dice_per_class"])),
            "dice_mean_foreground": searched["dice_mean_foreground"]}
    derived_cost = cost.derived_cost(index, state.params, in_channels=in_channels,
                                     num_classes=num_classes, width=s.width,
                                     patch_size=config.data.patch_size,
                                     node_scale=s.node_scale,
                                     width_growth=s.width_growth)
    genotype_lib.save_genotype(os.path.join(workdir, "genotype.json"), genotype,
                               extra={"derived": derived_cost})
    genotype_png = os.path.join(workdir, "pictures", "cells.png")
    writer.write_image(num_steps, "genotype/cells",
                       cell_drawing.save_genotype_drawing(genotype_png, genotype))
    evaluation.pictures_to_tensorboard(writer, num_steps, os.path.join(workdir, "pictures"))
    artifacts.save(workdir, description, params, artifacts.make_plan(
        config, spacing=data.spacing, num_channels=in_channels, labels=label_names,
        intensity=data.intensity))
    summary = evaluation.write_summary(workdir, writer, num_steps, data, result, {
        "fold": config.data.fold, "mode": "search", "architecture": f"{s.strategy} search",
        "strategy": s.strategy, "derived": derived_cost,
        "search_steps": num_steps, **extra,
        "search_seconds": round(search_seconds, 1),
        "eval_seconds": round(time.time() - start_eval, 1),
        "wall_seconds": round(time.time() - start_wall, 1),
        "note": "Dice in the preprocessed (resampled, cropped) space of each held-out case; "
                "the derived architecture keeps the Theta learned during search"
                + (", then fine-tuned on every training case." if s.finetune_fraction > 0
                   else ".")})
    writer.close()
    logging.info("held-out Dice %s, mean foreground %.4f", summary["dice_per_class"],
                 summary["dice_mean_foreground"])
    if "searched_theta" in extra:
        logging.info("searched Theta alone (before fine-tuning): mean foreground %.4f",
                     extra["searched_theta"]["dice_mean_foreground"])
    return summary


def _planned_schedule(step, horizon, *, tau_min: float, lr_kind: str):
    """schedule_fn of a planned search: schedules.py's tau, noise and lr factor."""
    lr = schedules.lr_factor(step, horizon, warmup_steps=phases.LR_WARMUP_STEPS, kind=lr_kind)
    return {"tau": schedules.annealed_tau(step, horizon, tau_min=tau_min),
            "noise": schedules.gumbel_noise_scale(step, horizon), "lr_w": lr, "lr_a": lr,
            "argmax": schedules.annealed(step, horizon)}


