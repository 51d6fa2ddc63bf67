"""The prepare job: validate an MSD task, cache its preprocessed cases, split, preview.

A shell: reads files, writes `splits.json`, `data_summary.json` and `patches.png` to the
work dir, and logs a summary. Every later mode starts with `load_training_data`.
"""

import json
import os
import time

import numpy as np
from absl import logging

from jaxnas import config as config_lib
from jaxnas import phases
from jaxnas.data import patches
from jaxnas.io import fileio
from jaxnas.io import pictures


def _class_fractions(labels: np.ndarray, num_classes: int) -> list[float]:
    counts = np.bincount(labels.ravel(), minlength=num_classes)
    return (counts / counts.sum()).round(4).tolist()


def run(config: config_lib.Config, workdir: str) -> dict:
    """Runs the prepare job; returns the summary it writes."""
    start = time.time()
    data = phases.load_training_data(config, workdir)
    prepared_s = time.time() - start
    theta_cases = [data.cases[i] for i in data.theta_ids]
    batches = [patches.make_batch(theta_cases, seed=config.seed, step=s,
                                  batch_size=config.data.batch_size,
                                  patch_size=config.data.patch_size,
                                  fg_fraction=config.data.fg_fraction)
               for s in range(config.num_preview_batches)]
    images = np.concatenate([b["image"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    shapes = np.array([c.image.shape[:3] for c in data.cases.values()])
    summary = {
        "dataset": data.dataset.name, "num_cases": len(data.cases),
        "modalities": list(data.dataset.modalities),
        "labels": {str(k): v for k, v in data.dataset.labels.items()},
        "spacing_mm": list(data.spacing),
        "shape_min": shapes.min(0).tolist(), "shape_max": shapes.max(0).tolist(),
        "fold": config.data.fold, "theta_cases": len(data.theta_ids),
        "alpha_cases": len(data.alpha_ids), "val_cases": len(data.val_ids),
        "patch_size": list(config.data.patch_size),
        "patch_class_fractions": _class_fractions(labels, data.dataset.num_classes),
        "prepare_seconds": round(prepared_s, 2),
    }
    fileio.write_json(os.path.join(workdir, "data_summary.json"), summary)
    pictures.save_patch_grid(os.path.join(workdir, "patches.png"), images[:6], labels[:6],
                             data.dataset.labels, title=f"{data.dataset.name}: training patches")
    for key, value in summary.items():
        logging.info("%-22s %s", key, value)
    return summary
