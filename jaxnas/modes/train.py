"""The train shell: a fixed architecture trained from scratch, then evaluated on the fold.

`--architecture` names it (models.describe): a genotype.json found by a search, on this
task or on another one (architecture transfer), "uresnet" (the paper's hand-designed
3D U-ResNet), "unet" (MONAI's UNet, jaxnas/baselines/unet.py) or "random[:SEED]" (a uniform random op per edge). Same data, patches,
optimiser, plateau rule, checkpoints and evaluation as the search, so results compare.
Outputs: events, `ckpt/`, `model.json`, `plan.json`, `final/`, `pictures/`, `summary.json`.
"""

import os
import time

import jax
from absl import logging

from jaxnas import config as config_lib
from jaxnas import evaluation
from jaxnas import models
from jaxnas import phases
from jaxnas import sharding
from jaxnas.io import artifacts
from jaxnas.io import writer as writer_lib
from jaxnas.spaces import cell_drawing


def train_and_evaluate(config: config_lib.Config, workdir: str) -> dict:
    """Trains (or resumes) `config.architecture` on the fold's training cases."""
    start_wall = time.time()
    data = phases.load_training_data(config, workdir)
    config = phases.planned_config(config, data, workdir)
    # No alpha here: the fixed network trains on every training case of the fold.
    train_cases = [data.cases[i] for i in data.theta_ids + data.alpha_ids]
    held_out = [data.cases[i] for i in data.val_ids]
    s, in_channels = config.search, len(data.dataset.modalities)
    description = models.describe(config.architecture, in_channels=in_channels,
                                  num_classes=data.dataset.num_classes, width=s.width,
                                  seed=config.seed, stem_stride=s.stem_stride,
                                  node_scale=s.node_scale, width_growth=s.width_growth,
                                  deep_supervision=s.deep_supervision)
    model = models.build(description, impl=phases.resolve_impl(s.impl), ce_weight=s.ce_weight,
                         dice_background=s.dice_background, batch_dice=s.batch_dice)
    init_key = jax.random.fold_in(jax.random.key(config.seed), 1)
    writer = writer_lib.MetricWriter(workdir)
    logging.info("train %s from scratch, width %d", description["source"], s.width)
    params, num_steps = phases.train_fixed(
        config, workdir, model, model.init(init_key), train_cases, writer,
        start_wall=start_wall, mesh=sharding.mesh_from_spec(s.mesh), phase="train",
        eval_shapes=[c.image.shape for c in held_out])
    train_seconds = time.time() - start_wall

    predict_fn = models.probabilities_fn(model, params)
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
    artifacts.save(workdir, description, params, artifacts.make_plan(
        config, spacing=data.spacing, num_channels=in_channels, labels=label_names,
        intensity=data.intensity))
    summary = evaluation.write_summary(workdir, writer, num_steps, data, result, {
        "fold": config.data.fold, "mode": "train", "architecture": description["source"],
        "derived": model.cost(config.data.patch_size),
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(time.time() - start_eval, 1),
        "wall_seconds": round(time.time() - start_wall, 1),
        "note": "Dice in the preprocessed (resampled, cropped) space of each held-out case."})
    writer.close()
    logging.info("held-out Dice %s, mean foreground %.4f", summary["dice_per_class"],
                 summary["dice_mean_foreground"])
    return summary
