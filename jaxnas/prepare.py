"""The prepare job: validate an MSD task, cache its preprocessed cases, split, preview.

A shell: reads files, writes `splits.json`, `data_summary.json` and `patches.png` to the
work dir, and logs a summary. Every later mode starts with `load_training_data`.
"""

import dataclasses
import json
import os
import time

import numpy as np
from absl import logging

from jaxnas import config as config_lib
from jaxnas import fileio
from jaxnas import planner
from jaxnas import pictures
from jaxnas.data import cache
from jaxnas.data import msd
from jaxnas.data import patches


@dataclasses.dataclass(frozen=True)
class TrainingData:
    dataset: msd.Dataset
    cases: dict  # case_id -> cache.PreparedCase
    spacing: tuple[float, float, float]
    splits: list
    theta_ids: list  # Trains the network weights.
    alpha_ids: list  # Trains the architecture logits.
    val_ids: list  # Held out: the fold's validation cases.


def load_training_data(config: config_lib.Config, workdir: str) -> TrainingData:
    """Reads, validates and caches the dataset, then fixes the fold's splits."""
    d = config.data
    dataset = msd.read_dataset(d.data_dir)
    os.makedirs(workdir, exist_ok=True)
    cache_dir = d.cache_dir or os.path.join(workdir, "preprocessed")
    prepared, _, spacing = cache.prepare_dataset(dataset, cache_dir, spacing=d.spacing,
                                                 image_order=d.image_order)
    cases = {c.case_id: c for c in prepared}
    splits = patches.load_or_make_splits(os.path.join(workdir, "splits.json"), list(cases),
                                         d.num_folds, config.seed, d.splits_file)
    if d.fold >= len(splits):
        raise msd.DataError(f"--fold={d.fold} but the splits have {len(splits)} folds")
    fold = splits[d.fold]
    theta_ids, alpha_ids = patches.bilevel_split(fold["train"], config.seed, d.alpha_fraction)
    return TrainingData(dataset, cases, spacing, splits, theta_ids, alpha_ids, fold["val"])


def planned_config(config: config_lib.Config, data: TrainingData,
                   workdir: str) -> config_lib.Config:
    """The config a planned run (--budget_minutes > 0) uses; unchanged without a budget.

    Writes `<workdir>/planned.json` (the fingerprint and every choice with its reason)
    and logs each choice. Flags the user gave stay as given (planner.apply).
    """
    if config.search.budget_minutes <= 0:
        return config
    import jax  # The backend decides the voxel caps.

    train_ids = data.theta_ids + data.alpha_ids
    fp = planner.fingerprint([data.cases[i].image.shape for i in train_ids],
                             spacing=data.spacing, num_classes=data.dataset.num_classes,
                             num_channels=len(data.dataset.modalities))
    planned = planner.plan(fp, budget_minutes=config.search.budget_minutes,
                           backend=jax.default_backend())
    config, record = planner.apply(config, planned)
    try:  # A flag kept by the user may not fit a planned choice (a patch and the stem).
        config_lib.validate(config)
    except ValueError as e:
        raise msd.DataError(f"with the planned settings (planned.json): {e}") from None
    fileio.write_json(os.path.join(workdir, "planned.json"),
                      {"fingerprint": fp, "budget_minutes": config.search.budget_minutes,
                       "choices": record})
    logging.info("plan from %s (budget %g min):", fp, config.search.budget_minutes)
    for name, choice in record.items():
        logging.info("  %s = %s: %s", name, choice["value"], choice["reason"])
    return config


def budget_steps(workdir: str, phase: str, compute_fn) -> int:
    """A phase's planned step count: read from `<workdir>/budget.json`, else computed once.

    compute_fn() -> int runs only on the first run; a resumed run reads the stored count,
    so it replays exactly the same schedule (DESIGN.md section 10).
    """
    path = os.path.join(workdir, "budget.json")
    stored = {}
    if os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
    if phase not in stored:
        stored[phase] = int(compute_fn())
        fileio.write_json(path, stored)
    return int(stored[phase])


def store_resized_steps(workdir: str, phase: str, num_steps: int) -> None:
    """Replaces a phase's planned count by the one its own first steps measured, once."""
    path = os.path.join(workdir, "budget.json")
    with open(path) as f:
        stored = json.load(f)
    stored[phase] = int(num_steps)
    stored["resized"] = sorted(set(stored.get("resized", [])) | {phase})
    fileio.write_json(path, stored)


def budget_resized(workdir: str, phase: str) -> bool:
    """Whether a phase's count was already re-set from its steps (a resume keeps it)."""
    path = os.path.join(workdir, "budget.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return phase in json.load(f).get("resized", [])


def _class_fractions(labels: np.ndarray, num_classes: int) -> list[float]:
    counts = np.bincount(labels.ravel(), minlength=num_classes)
    return (counts / counts.sum()).round(4).tolist()


def run(config: config_lib.Config, workdir: str) -> dict:
    """Runs the prepare job; returns the summary it writes."""
    start = time.time()
    data = load_training_data(config, workdir)
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
    with open(os.path.join(workdir, "data_summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    pictures.save_patch_grid(os.path.join(workdir, "patches.png"), images[:6], labels[:6],
                             data.dataset.labels, title=f"{data.dataset.name}: training patches")
    for key, value in summary.items():
        logging.info("%-22s %s", key, value)
    return summary
