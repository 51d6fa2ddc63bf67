"""The search shell: data -> plan -> bi-level SCNAS loop -> genotype -> fine-tune -> evaluation.

`search_and_evaluate(config, workdir)` is the one long function (big_vision style); the
maths lives in `search.py`, `network.py`, `losses.py`, `schedules.py`, `inference.py`, the
loop in `loop.py`. `train_fixed` trains a fixed network (the fine-tune phase here, and
--mode=train in retrain.py). Outputs in the work dir: TensorBoard events, `ckpt/` and
`ckpt_finetune/` (orbax), `planned.json` + `budget.json` (planned runs), `genotype.json`,
`summary.json`.

SCNAS phases of a planned run (--budget_minutes): Theta warm-up, the bi-level search with
tau and Gumbel noise annealed (schedules.py), then fine-tuning of the derived network
with the searched Theta kept (--finetune_fraction). The summary reports the held-out Dice
of the fine-tuned network and, under `searched_theta`, of the searched Theta alone.
"""

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxnas import artifacts
from jaxnas import cell_drawing
from jaxnas import checkpoints
from jaxnas import config as config_lib
from jaxnas import cost
from jaxnas import evaluation
from jaxnas import fit
from jaxnas import fixed_network
from jaxnas import genotype as genotype_lib
from jaxnas import loop
from jaxnas import losses
from jaxnas import models
from jaxnas import network
from jaxnas import planner
from jaxnas import prepare
from jaxnas import search
from jaxnas import schedules
from jaxnas import sharding
from jaxnas import space
from jaxnas import writer as writer_lib
from jaxnas.data import patches


RunError = evaluation.RunError


def resolve_impl(impl: str) -> str:
    """"auto": the CPU-fast op forms on CPU, the XLA (cuDNN) forms on accelerators."""
    if impl != "auto":
        return impl
    return "fast" if jax.default_backend() == "cpu" else "xla"


def make_model(config: config_lib.Config, in_channels: int, num_classes: int):
    """(init_fn(key) -> params, apply_fn(params, image, choice) -> logits) of the supernet.

    The choice is what the strategy samples (search.SAMPLERS): an op pair per edge for
    SCNAS and GDAS, softmax weights over all ops for DARTS.
    """
    impl = resolve_impl(config.search.impl)
    init_fn = functools.partial(network.init_network, in_channels=in_channels,
                                num_classes=num_classes, width=config.search.width,
                                stem_stride=config.search.stem_stride,
                                node_scale=config.search.node_scale)
    _, dense = search.SAMPLERS[config.search.strategy]
    apply = network.apply_network_dense if dense else network.apply_network
    return init_fn, functools.partial(apply, impl=impl)


def step_batch(cases, config, step: int, stream: int, patch_size=None) -> dict:
    """The batch of (seed, step, stream): 0 trains Theta, 1 alpha (or scores candidates)."""
    # Theta and alpha batches are separate streams of one (seed, step) function.
    d = config.data
    return patches.make_batch(cases, seed=config.seed, step=2 * step + stream,
                              batch_size=d.batch_size, patch_size=patch_size or d.patch_size,
                              fg_fraction=d.fg_fraction, augment=d.augment,
                              augment_spatial=d.augment_spatial)


def time_steps(run_once, state, repeats: int = 3) -> float:
    """Seconds per call of run_once(state) -> state, after one warm-up (compile) call.

    Runs on a copy: the steps donate their state, and the real run starts from `state`.
    """
    probe = jax.tree.map(lambda x: x.copy() if hasattr(x, "copy") else x, state)
    probe = jax.block_until_ready(run_once(probe))
    start = time.time()
    for _ in range(repeats):
        probe = run_once(probe)
    jax.block_until_ready(probe)
    return (time.time() - start) / repeats


def training_seconds_left(config: config_lib.Config, start_wall: float) -> float:
    """Budget left for training: the whole budget less what has passed and the reserve."""
    budget = 60.0 * config.search.budget_minutes
    return budget * (1.0 - planner.EVAL_RESERVE) - (time.time() - start_wall)


def _arch_scalars(arch) -> dict:
    probs = np.asarray(search.arch_probs(arch))
    entropy = np.asarray(search.arch_entropy(arch))
    out = {}
    for t, cell in enumerate(space.CELL_TYPES):
        out[f"arch/entropy/{cell}"] = entropy[t]
        for o, op in enumerate(space.OP_NAMES):
            out[f"arch/prob/{cell}/{op}"] = probs[t, :, o].mean()
    return out


def search_and_evaluate(config: config_lib.Config, workdir: str) -> dict:
    """Runs (or resumes) the SCNAS search, writes genotype.json and summary.json."""
    start_wall = time.time()
    # --- Data and plan ---
    data = prepare.load_training_data(config, workdir)
    config = prepare.planned_config(config, data, workdir)
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
    init_params, apply_fn = make_model(config, in_channels, num_classes)
    tx_w, tx_a = search.make_optimizers(lr_w=s.lr_w, betas_w=s.betas_w, lr_a=s.lr_a,
                                        betas_a=s.betas_a)
    sample_fn, _ = search.SAMPLERS[s.strategy]
    if planned:
        schedule_fn = functools.partial(_planned_schedule, tau_min=s.tau_min,
                                        lr_kind=s.lr_schedule)
    else:
        schedule_fn = search.paper_schedule(
            search.make_tau_fn(steps_per_epoch, rate=s.tau_rate, tau_min=s.tau_min))
    step_w, step_a = search.make_steps(apply_fn=apply_fn, loss_fn=losses.from_settings(s, num_classes),
                                       tx_w=tx_w, tx_a=tx_a, schedule_fn=schedule_fn,
                                       sample_fn=sample_fn)
    mesh = sharding.mesh_from_spec(s.mesh)
    step_w, step_a = sharding.compile_step(step_w, mesh), sharding.compile_step(step_a, mesh)
    plateau_fn = None
    if s.lr_schedule == "constant":
        plateau_fn = jax.jit(functools.partial(search.plateau_step,
                                               patience=s.plateau_patience))
    put_state, put = sharding.placers(mesh)

    def iteration(state, step):
        key = jax.random.fold_in(loop_key, step)  # One sample Z for both steps.
        state, m = step_w(state, put(step_batch(theta, config, step, 0, search_patch)), key)
        if step >= warmup_steps:
            state, m_a = step_a(state, put(step_batch(alpha, config, step, 1, search_patch)),
                                key)
            m = {**m, **m_a}
        return state, m

    # --- Budget: steps from the measured iteration time, fixed once (budget.json) ---
    def fresh_state():
        return search.init_state(init_params(init_key), search.init_arch(), tx_w, tx_a)

    if planned:
        def measure():
            probe_state = put_state(fresh_state())
            key = jax.random.fold_in(loop_key, 0)
            wb = put(step_batch(theta, config, 0, 0, search_patch))
            ab = put(step_batch(alpha, config, 0, 1, search_patch))
            seconds = time_steps(lambda st: step_a(step_w(st, wb, key)[0], ab, key)[0],
                                 probe_state)
            left = training_seconds_left(config, start_wall) * (1.0 - s.finetune_fraction)
            logging.info("search iteration %.3f s; %.0f s for the search", seconds, left)
            return planner.steps_in(left, seconds)

        num_steps = prepare.budget_steps(workdir, "search_steps", measure)
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
                 warmup_steps, search_patch, s.width, resolve_impl(s.impl))

    def scalars(st):
        return {"train/lr_w": search.learning_rate(st.opt_w),
                "train/lr_a": search.learning_rate(st.opt_a), **_arch_scalars(st.arch)}

    state = loop.run(state, schedule=loop.Schedule(num_steps, steps_per_epoch, s.log_every,
                                                   s.ckpt_every),
                     step_fn=iteration, loss_key="train/loss_w", manager=manager,
                     writer=writer, workdir=workdir, plateau_fn=plateau_fn,
                     scalars_fn=scalars, name="search")
    search_seconds = time.time() - start_wall

    # --- Derive; keep the searched Theta (compact: one op per edge) ---
    genotype = genotype_lib.derive_genotype(state.arch)
    index = genotype_lib.genotype_to_indices(genotype)
    description = {"kind": "genotype", "source": f"{s.strategy} search",
                   "genotype": genotype, "in_channels": in_channels,
                   "num_classes": num_classes, "width": s.width,
                   "stem_stride": s.stem_stride, "node_scale": s.node_scale}
    model = models.build(description, impl=resolve_impl(s.impl), ce_weight=s.ce_weight,
                         dice_background=s.dice_background, batch_dice=s.batch_dice)
    params = fixed_network.compact_from_supernet(state.params, index)
    searched_params, extra = params, {}
    if s.finetune_fraction > 0:
        # A copy: the fine-tune steps donate (and so delete) the buffers they start from.
        searched_params = jax.tree.map(jnp.copy, params)
        # Evaluated twice: the fine-tuned network and the searched Theta alone.
        params, extra["finetune_steps"] = finetune(
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
                                     node_scale=s.node_scale)
    genotype_lib.save_genotype(os.path.join(workdir, "genotype.json"), genotype,
                               extra={"derived": derived_cost})
    genotype_png = os.path.join(workdir, "pictures", "cells.png")
    writer.write_image(num_steps, "genotype/cells",
                       cell_drawing.save_genotype_drawing(genotype_png, genotype))
    evaluation.pictures_to_tensorboard(writer, num_steps, os.path.join(workdir, "pictures"))
    artifacts.save(workdir, description, params, artifacts.make_plan(
        config, spacing=data.spacing, num_channels=in_channels, labels=label_names))
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
    lr = schedules.lr_factor(step, horizon, warmup_steps=LR_WARMUP_STEPS, kind=lr_kind)
    return {"tau": schedules.annealed_tau(step, horizon, tau_min=tau_min),
            "noise": schedules.gumbel_noise_scale(step, horizon), "lr_w": lr, "lr_a": lr}


LR_WARMUP_STEPS = 20  # Fixed (not a share): the first steps never depend on the budget.


RESIZE_AT_STEP = 12  # <= LR_WARMUP_STEPS: the steps before it never see the length.


def train_fixed(config: config_lib.Config, workdir: str, model, params, cases, writer, *,
                start_wall: float, mesh, phase: str, eval_shapes=(), eval_passes: int = 1):
    """Trains a fixed network from `params`: the fine-tune phase and --mode=train.

    Planned (--budget_minutes): the step count is what fits before the budget's end less
    the evaluation of `eval_shapes` (held-out cases, `eval_passes` networks), first from
    timed calls, then re-set once from the loop's own first steps (loop.Resize); both are
    stored in budget.json under `phase`. The lr warms up and decays over it. Else
    num_epochs x steps_per_epoch with the plateau rule. Checkpoints in `<workdir>/ckpt`
    (train) or `<workdir>/ckpt_<phase>`; returns (params, num_steps).
    """
    s = config.search
    patch = config.data.patch_size
    steps_per_epoch = s.steps_per_epoch or max(1, len(cases) // config.data.batch_size)
    tx = fit.make_optimizer(s.lr_w, s.betas_w)
    planned = s.budget_minutes > 0
    lr_fn = functools.partial(schedules.lr_factor, warmup_steps=LR_WARMUP_STEPS,
                              kind=s.lr_schedule) if s.lr_schedule != "constant" else None
    step_fn = sharding.compile_step(
        functools.partial(fit.train_step, loss_fn=model.loss, tx=tx, lr_fn=lr_fn), mesh,
        has_key=False)
    put_state, put = sharding.placers(mesh)
    stream = 0 if phase == "train" else 2  # Fine-tune batches: a stream of their own.

    def batch(step):
        return put(step_batch(cases, config, step, stream, patch))

    resize = None
    if planned:
        def end_time(seconds_per_step):
            """time.time() by which training must end: the budget less the evaluation."""
            return start_wall + 60.0 * s.budget_minutes - planner.eval_seconds(
                eval_shapes, window=patch, overlap=config.eval.overlap,
                mirror=config.eval.mirror, step_seconds=seconds_per_step,
                batch_size=config.data.batch_size, passes=eval_passes)

        def measure():
            probe = put_state(fit.init_state(params, tx))
            b = batch(0)
            seconds_per_step = time_steps(lambda st: step_fn(st, b)[0], probe)
            left = end_time(seconds_per_step) - time.time()
            logging.info("%s step %.3f s; %.0f s left for it", phase, seconds_per_step, left)
            return planner.steps_in(left, seconds_per_step)

        key = f"{phase}_steps"
        num_steps = prepare.budget_steps(workdir, key, measure)
        if not prepare.budget_resized(workdir, key):
            def resize_fn(state, n):
                prepare.store_resized_steps(workdir, key, n)
                return put_state(state.replace(horizon=jnp.asarray((0, 0, n), jnp.int32)))

            resize = loop.Resize(at_step=RESIZE_AT_STEP, end_fn=end_time, resize_fn=resize_fn)
    else:
        num_steps = s.num_epochs * steps_per_epoch
    plateau_fn = None
    if lr_fn is None:
        plateau_fn = jax.jit(functools.partial(fit.plateau_step, patience=s.plateau_patience))
    manager = checkpoints.make_manager(workdir, "ckpt" if phase == "train" else f"ckpt_{phase}")
    state = checkpoints.restore_or_init(
        manager, lambda: fit.init_state(params, tx, horizon=(0, 0, num_steps)))
    state = put_state(state)
    logging.info("%s: %d steps, patch %s, batch %d", phase, num_steps, patch,
                 config.data.batch_size)
    state = loop.run(state, schedule=loop.Schedule(num_steps, steps_per_epoch, s.log_every,
                                                   s.ckpt_every),
                     step_fn=lambda st, step: step_fn(st, batch(step)), loss_key="train/loss",
                     manager=manager, writer=writer, workdir=workdir, plateau_fn=plateau_fn,
                     scalars_fn=lambda st: {"train/lr": search.learning_rate(st.opt)},
                     name=phase, resize=resize)
    return state.params, int(state.step)


def finetune(config, workdir, model, params, cases, writer, *, start_wall, mesh,
             eval_shapes=(), eval_passes=1):
    """SCNAS's third phase: the derived network, Theta kept, on every training case.

    Returns (params, num_steps)."""
    return train_fixed(config, workdir, model, params, cases, writer, start_wall=start_wall,
                       mesh=mesh, phase="finetune", eval_shapes=eval_shapes,
                       eval_passes=eval_passes)
