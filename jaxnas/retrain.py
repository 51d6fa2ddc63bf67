"""The train shell: a fixed architecture trained from scratch, then evaluated on the fold.

`--architecture` names it (models.describe): a genotype.json found by a search, on this
task or on another one (architecture transfer), "uresnet" (the paper's hand-designed
3D U-ResNet) or "random[:SEED]" (a uniform random op per edge). Same data, patches,
optimiser, plateau rule, checkpoints and evaluation as the search, so results compare.
Outputs: events, `ckpt/`, `model.json`, `plan.json`, `final/`, `pictures/`, `summary.json`.
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
from jaxnas import evaluation
from jaxnas import fit
from jaxnas import models
from jaxnas import prepare
from jaxnas import sharding
from jaxnas import train
from jaxnas import writer as writer_lib


def train_and_evaluate(config: config_lib.Config, workdir: str) -> dict:
    """Trains (or resumes) `config.architecture` on the fold's training cases."""
    start_wall = time.time()
    data = prepare.load_training_data(config, workdir)
    # No alpha here: the fixed network trains on every training case of the fold.
    train_cases = [data.cases[i] for i in data.theta_ids + data.alpha_ids]
    held_out = [data.cases[i] for i in data.val_ids]
    s, in_channels = config.search, len(data.dataset.modalities)
    description = models.describe(config.architecture, in_channels=in_channels,
                                  num_classes=data.dataset.num_classes, width=s.width,
                                  seed=config.seed)
    model = models.build(description, impl=train.resolve_impl(s.impl), ce_weight=s.ce_weight)
    steps_per_epoch = s.steps_per_epoch or max(1, len(train_cases) // config.data.batch_size)
    num_steps = s.num_epochs * steps_per_epoch
    ckpt_steps = max(1, round(s.ckpt_every / steps_per_epoch)) * steps_per_epoch

    tx = fit.make_optimizer(s.lr_w, s.betas_w)
    mesh = sharding.mesh_from_spec(s.mesh)
    step_fn = sharding.compile_step(
        functools.partial(fit.train_step, loss_fn=model.loss, tx=tx), mesh, has_key=False)
    plateau_fn = jax.jit(functools.partial(fit.plateau_step, patience=s.plateau_patience))
    init_key = jax.random.fold_in(jax.random.key(config.seed), 1)
    manager = checkpoints.make_manager(workdir)
    state = checkpoints.restore_or_init(manager,
                                        lambda: fit.init_state(model.init(init_key), tx))
    put_state, put = sharding.placers(mesh)
    state = put_state(state)
    start = int(state.step)
    writer = writer_lib.MetricWriter(workdir)
    logging.info("train %s: %d steps (%d epochs x %d), patch %s, width %d, from step %d",
                 description["source"], num_steps, s.num_epochs, steps_per_epoch,
                 config.data.patch_size, s.width, start)
    epoch_losses, tick, tick_step = [], time.time(), start
    try:
        for step in range(start, num_steps):
            state, m = step_fn(state, put(train.step_batch(train_cases, config, step, 0)))
            epoch_losses.append(m["train/loss"])
            done = step + 1
            if done % steps_per_epoch == 0:
                state, reduced = plateau_fn(state, float(np.mean(jax.device_get(epoch_losses))))
                epoch_losses = []
                if bool(reduced):
                    logging.info("training loss plateau: learning rate divided by 10")
            save_now = done % ckpt_steps == 0 or done == num_steps
            if save_now or done % s.log_every == 0:
                m = jax.device_get(m)
                evaluation.check_finite(m, done, workdir)
                rate = (done - tick_step) / (time.time() - tick)
                tick, tick_step = time.time(), done
                writer.write_scalars(done, {**m, "train/lr": fit.search.learning_rate(state.opt),
                                            "train/steps_per_sec": rate})
                writer_lib.progress_line(done, num_steps, float(m["train/loss"]), rate)
            if save_now:
                checkpoints.save(manager, done, state)
    finally:
        manager.wait_until_finished()
    train_seconds = time.time() - start_wall

    predict_fn = models.probabilities_fn(model, state.params)
    start_eval, label_names = time.time(), dict(data.dataset.labels)
    picture_dir = os.path.join(workdir, "pictures")
    result = evaluation.evaluate_cases(predict_fn, held_out, num_classes=len(label_names),
                                       config=config, picture_dir=picture_dir,
                                       label_names=label_names)
    if description["kind"] == "genotype":
        name = cell_drawing.drawing_name(description["genotype"])
        writer.write_image(num_steps, f"genotype/{name[:-4]}", cell_drawing.save_genotype_drawing(
            os.path.join(picture_dir, name), description["genotype"]))
    evaluation.pictures_to_tensorboard(writer, num_steps, picture_dir)
    artifacts.save(workdir, description, state.params, artifacts.make_plan(
        config, spacing=data.spacing, num_channels=in_channels, labels=label_names))
    summary = evaluation.write_summary(workdir, writer, num_steps, data, result, {
        "fold": config.data.fold, "mode": "train", "architecture": description["source"],
        "derived": model.cost(config.data.patch_size),
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(time.time() - start_eval, 1),
        "wall_seconds": round(time.time() - start_wall, 1)})
    writer.close()
    logging.info("held-out Dice %s, mean foreground %.4f", summary["dice_per_class"],
                 summary["dice_mean_foreground"])
    return summary
