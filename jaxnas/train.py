"""The search shell: data -> bi-level SCNAS loop -> genotype -> held-out evaluation.

`search_and_evaluate(config, workdir)` is the one long function (big_vision style); the
maths lives in `search.py`, `network.py`, `losses.py`, `inference.py`. Outputs in the work
dir: TensorBoard events, `ckpt/` (orbax), `genotype.json`, `summary.json`.
"""

import functools
import os
import time

import jax
import numpy as np
from absl import logging

from jaxnas import artifacts
from jaxnas import cell_drawing
from jaxnas import checkpoints
from jaxnas import config as config_lib
from jaxnas import cost
from jaxnas import evaluation
from jaxnas import fixed_network
from jaxnas import genotype as genotype_lib
from jaxnas import losses
from jaxnas import models
from jaxnas import network
from jaxnas import prepare
from jaxnas import search
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

    The choice is what the strategy samples (search.STRATEGIES): an op pair per edge for
    SCNAS and GDAS, softmax weights over all ops for DARTS.
    """
    impl = resolve_impl(config.search.impl)
    init_fn = functools.partial(network.init_network, in_channels=in_channels,
                                num_classes=num_classes, width=config.search.width)
    _, dense = search.STRATEGIES[config.search.strategy]
    apply = network.apply_network_dense if dense else network.apply_network
    return init_fn, functools.partial(apply, impl=impl)


def step_batch(cases, config, step: int, stream: int) -> dict:
    """The batch of (seed, step, stream): 0 trains Theta, 1 alpha (or scores candidates)."""
    # Theta and alpha batches are separate streams of one (seed, step) function.
    d = config.data
    return patches.make_batch(cases, seed=config.seed, step=2 * step + stream,
                              batch_size=d.batch_size, patch_size=d.patch_size,
                              fg_fraction=d.fg_fraction)


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
    # --- Data ---
    data = prepare.load_training_data(config, workdir)
    theta = [data.cases[i] for i in data.theta_ids]
    alpha = [data.cases[i] for i in data.alpha_ids]
    held_out = [data.cases[i] for i in data.val_ids]
    num_classes = data.dataset.num_classes
    s = config.search
    steps_per_epoch = s.steps_per_epoch or max(1, len(theta) // config.data.batch_size)
    num_steps = s.num_epochs * steps_per_epoch
    warmup_steps = s.warmup_epochs * steps_per_epoch
    ckpt_steps = max(1, round(s.ckpt_every / steps_per_epoch)) * steps_per_epoch

    # --- Model, optimizers, state ---
    init_key, loop_key = jax.random.split(jax.random.key(config.seed))
    init_params, apply_fn = make_model(config, len(data.dataset.modalities), num_classes)
    tx_w, tx_a = search.make_optimizers(lr_w=s.lr_w, betas_w=s.betas_w, lr_a=s.lr_a,
                                        betas_a=s.betas_a)
    tau_fn = search.make_tau_fn(steps_per_epoch, rate=s.tau_rate, tau_min=s.tau_min)
    loss_fn = functools.partial(losses.dice_ce, num_classes=num_classes, ce_weight=s.ce_weight)
    sample_fn, _ = search.STRATEGIES[s.strategy]
    step_w, step_a = search.make_steps(apply_fn=apply_fn, loss_fn=loss_fn, tx_w=tx_w,
                                       tx_a=tx_a, tau_fn=tau_fn, sample_fn=sample_fn)
    mesh = sharding.mesh_from_spec(s.mesh)
    step_w, step_a = sharding.compile_step(step_w, mesh), sharding.compile_step(step_a, mesh)
    plateau_fn = jax.jit(functools.partial(search.plateau_step, patience=s.plateau_patience))

    def init_state():
        return search.init_state(init_params(init_key), search.init_arch(), tx_w, tx_a)

    manager = checkpoints.make_manager(workdir)
    state = checkpoints.restore_or_init(manager, init_state)
    # On a mesh every process draws the whole batch and uploads its slices.
    put_state, put = sharding.placers(mesh)
    state = put_state(state)
    start = int(state.step)
    if start:
        logging.info("resumed from checkpoint at step %d", start)
    writer = writer_lib.MetricWriter(workdir)

    # --- Loop ---
    logging.info("search: %d steps (%d epochs x %d), patch %s, width %d, impl %s", num_steps,
                 s.num_epochs, steps_per_epoch, config.data.patch_size, s.width,
                 resolve_impl(s.impl))
    epoch_losses, tick, tick_step = [], time.time(), start
    try:
        for step in range(start, num_steps):
            key = jax.random.fold_in(loop_key, step)  # One sample Z for both steps.
            state, m = step_w(state, put(step_batch(theta, config, step, 0)), key)
            if step >= warmup_steps:
                state, m_a = step_a(state, put(step_batch(alpha, config, step, 1)), key)
                m = {**m, **m_a}
            epoch_losses.append(m["train/loss_w"])
            done = step + 1
            if done % steps_per_epoch == 0:
                epoch_loss = float(np.mean(jax.device_get(epoch_losses)))
                epoch_losses = []
                state, reduced = plateau_fn(state, epoch_loss)
                if bool(reduced):
                    logging.info("training loss plateau: learning rates divided by 10")
            save_now = done % ckpt_steps == 0 or done == num_steps
            if save_now or done % s.log_every == 0:
                m = jax.device_get(m)
                evaluation.check_finite(m, done, workdir)  # Never checkpoint a NaN state.
            if done % s.log_every == 0 or done == num_steps:
                rate = (done - tick_step) / (time.time() - tick)
                tick, tick_step = time.time(), done
                scalars = {**m, "train/lr_w": search.learning_rate(state.opt_w),
                           "train/lr_a": search.learning_rate(state.opt_a),
                           "train/steps_per_sec": rate, **_arch_scalars(state.arch)}
                writer.write_scalars(done, scalars)
                writer_lib.progress_line(done, num_steps, float(m["train/loss_w"]), rate)
            # Checkpoints at epoch ends only, so a resumed run replays whole epochs and its
            # plateau rule sees the same epoch losses.
            if save_now:
                checkpoints.save(manager, done, state)
    finally:
        # An error or interrupt must not lose the checkpoint still being written.
        manager.wait_until_finished()

    search_seconds = time.time() - start_wall

    # --- Derive, evaluate, keep the derived network for predict ---
    genotype = genotype_lib.derive_genotype(state.arch)
    index = genotype_lib.genotype_to_indices(genotype)
    in_channels = len(data.dataset.modalities)
    description = {"kind": "genotype", "source": f"{s.strategy} search",
                   "genotype": genotype, "in_channels": in_channels,
                   "num_classes": num_classes, "width": s.width}
    model = models.build(description, impl=resolve_impl(s.impl))
    params = fixed_network.compact_from_supernet(state.params, index)
    predict_fn = models.probabilities_fn(model, params)
    start_eval = time.time()
    label_names = dict(data.dataset.labels)
    result = evaluation.evaluate_cases(predict_fn, held_out, num_classes=num_classes,
                                       config=config, label_names=label_names,
                                       picture_dir=os.path.join(workdir, "pictures"))
    derived_cost = cost.derived_cost(index, state.params, in_channels=in_channels,
                                     num_classes=num_classes, width=s.width,
                                     patch_size=config.data.patch_size)
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
        "search_seconds": round(search_seconds, 1),
        "eval_seconds": round(time.time() - start_eval, 1),
        "wall_seconds": round(time.time() - start_wall, 1),
        "note": "Dice in the preprocessed (resampled, cropped) space of each held-out case; "
                "the derived architecture keeps the Theta learned during search."})
    writer.close()
    logging.info("held-out Dice %s, mean foreground %.4f", summary["dice_per_class"],
                 summary["dice_mean_foreground"])
    return summary
