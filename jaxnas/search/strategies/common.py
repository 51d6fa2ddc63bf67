"""What the sample-and-score strategies (random, ronasmis, c2fnas) share.

- `budget`: every strategy gets the same num_epochs x steps_per_epoch iterations.
- `val_batch` + `patch_dice`: candidates are scored by hard Dice on a fixed batch of
  validation patches, one per alpha case (the fold's architecture-validation cases,
  never its held-out ones): "patient-wise Dice" (RONASMIS) at the cost of one forward
  pass per candidate instead of a sliding window over whole volumes.
- `finish`: the tail of every search: held-out evaluation of the derived network,
  genotype.json, model.json + final/ (what predict loads), summary.json.
"""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from jaxnas import config as config_lib
from jaxnas import evaluation
from jaxnas import models
from jaxnas import phases
from jaxnas.data import patches
from jaxnas.io import artifacts
from jaxnas.spaces import cell_drawing
from jaxnas.spaces import genotype as genotype_lib


def budget(config: config_lib.Config, num_train_cases: int) -> tuple[int, int]:
    """(steps_per_epoch, num_steps) of a search, as modes/search.py counts them."""
    s = config.search
    steps_per_epoch = s.steps_per_epoch or max(1, num_train_cases // config.data.batch_size)
    return steps_per_epoch, s.num_epochs * steps_per_epoch


def val_batch(cases, config: config_lib.Config) -> dict:
    """One foreground-centred patch per case (at most num_val_patches cases), fixed."""
    rng = np.random.default_rng((config.seed, 7919))  # Its own stream, same every call.
    chosen = cases[: config.search.num_val_patches]
    pairs = [patches.sample_patch(rng, c.image, c.label, c.fg_locations,
                                  config.data.patch_size, foreground=True) for c in chosen]
    return {"image": np.stack([p[0] for p in pairs]).astype(np.float32),
            "label": np.stack([p[1] for p in pairs]).astype(np.int32)}


def patch_dice(logits: Float[Array, "b x y z k"], labels: Int[Array, "b x y z"]
               ) -> Float[Array, "b"]:
    """Hard mean foreground Dice per patch; classes absent from both maps are left out
    (nnU-Net), a patch with none defined scores 1."""
    k = logits.shape[-1]
    pred = jax.nn.one_hot(jnp.argmax(logits, -1), k)[..., 1:]
    true = jax.nn.one_hot(labels, k)[..., 1:]
    inter = jnp.sum(pred * true, axis=(1, 2, 3))
    denom = jnp.sum(pred + true, axis=(1, 2, 3))
    defined = denom > 0
    dice = jnp.where(defined, 2 * inter / jnp.maximum(denom, 1), 0.0)
    count = jnp.sum(defined, axis=-1)
    return jnp.where(count > 0, jnp.sum(dice, -1) / jnp.maximum(count, 1), 1.0)


def finish(config: config_lib.Config, workdir: str, data, writer, *, description: dict,
           params, step: int, start_wall: float, search_seconds: float,
           genotype_extra: dict | None = None) -> dict:
    """Evaluates the derived network on the held-out cases and writes every output."""
    s = config.search
    model = models.build(description, impl=phases.resolve_impl(s.impl))
    predict_fn = models.probabilities_fn(model, params)
    start_eval, label_names = time.time(), dict(data.dataset.labels)
    picture_dir = os.path.join(workdir, "pictures")
    held_out = [data.cases[i] for i in data.val_ids]
    result = evaluation.evaluate_cases(predict_fn, held_out, num_classes=len(label_names),
                                       config=config, label_names=label_names,
                                       picture_dir=picture_dir)
    derived = model.cost(config.data.patch_size)
    genotype = description["genotype"]
    genotype_lib.save_genotype(os.path.join(workdir, "genotype.json"), genotype,
                               extra={"derived": derived, **(genotype_extra or {})})
    name = cell_drawing.drawing_name(genotype)
    writer.write_image(step, f"genotype/{name[:-4]}", cell_drawing.save_genotype_drawing(
        os.path.join(picture_dir, name), genotype))
    evaluation.pictures_to_tensorboard(writer, step, picture_dir)
    artifacts.save(workdir, description, params, artifacts.make_plan(
        config, spacing=data.spacing, num_channels=description["in_channels"],
        labels=label_names, intensity=data.intensity))
    summary = evaluation.write_summary(workdir, writer, step, data, result, {
        "fold": config.data.fold, "mode": "search", "architecture": description["source"],
        "strategy": s.strategy, "derived": derived,
        "search_seconds": round(search_seconds, 1),
        "eval_seconds": round(time.time() - start_eval, 1),
        "wall_seconds": round(time.time() - start_wall, 1),
        "note": "Dice in the preprocessed (resampled, cropped) space of each held-out case; "
                "the derived network keeps the weights learned during the search."})
    writer.close()
    return summary
