"""The evaluate shell: k-fold cross-validation of a search (SCNAS) or of a fixed architecture.

Fold k runs in `<workdir>/fold_k` (search, or train when `--architecture` is set) and
evaluates on fold k's held-out cases; a finished fold (its summary.json) is reused, so an
interrupted evaluation resumes. The work dir gets `summary.json` (Dice per class as
mean and std across folds, cost, time) and `summary.md` (the same as a markdown table).
"""

import dataclasses
import json
import os

import numpy as np
from absl import logging

from jaxnas import config as config_lib
from jaxnas.data import msd
from jaxnas.data import patches
from jaxnas.io import fileio
from jaxnas.modes import search as search_mode
from jaxnas.modes import train as train_mode


def aggregate(fold_summaries: list[dict]) -> dict:
    """Mean and std across folds of each class's Dice (pure; fold summaries in)."""
    labels = fold_summaries[0]["labels"]
    dice = np.array([[f["dice_per_class"][n] for n in labels] for f in fold_summaries])
    fg = np.array([f["dice_mean_foreground"] for f in fold_summaries])
    return {
        "labels": labels,
        "num_folds": len(fold_summaries),
        "dice_mean": dict(zip(labels, np.nanmean(dice, axis=0).tolist())),
        "dice_std": dict(zip(labels, np.nanstd(dice, axis=0).tolist())),
        "dice_mean_foreground": float(np.nanmean(fg)),
        "dice_mean_foreground_std": float(np.nanstd(fg)),
        "per_fold": [{"fold": f["fold"], "dice_per_class": f["dice_per_class"],
                      "val_cases": f["val_cases"]} for f in fold_summaries],
    }


def markdown_row(name: str, result: dict) -> str:
    """One table row: Dice per foreground class mean±std, params, GFLOPs, search time
    (summed over folds; "-" for fixed architectures) and wall time."""
    cells = [name]
    for label in result["labels"][1:]:
        cells.append(f"{result['dice_mean'][label]:.3f} ± {result['dice_std'][label]:.3f}")
    cells.append(f"{result['dice_mean_foreground']:.3f} ± "
                 f"{result['dice_mean_foreground_std']:.3f}")
    derived = result.get("derived") or {}
    cells.append(f"{derived.get('params', 0) / 1e6:.3f}M" if derived else "-")
    cells.append(f"{derived['gflops']:.3f}" if derived else "-")
    search = result.get("search_seconds")
    cells.append(f"{search / 60:.1f}" if search else "-")
    cells.append(f"{result.get('wall_seconds', 0) / 60:.1f}")
    return "| " + " | ".join(cells) + " |"


def markdown_header(labels: list[str]) -> str:
    names = [*(f"Dice {n}" for n in labels[1:]), "Dice mean fg"]
    columns = ["method", *names, "params", "GFLOPs", "search min", "wall min"]
    return "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns)


def _search_seconds(summary: dict) -> float:
    if summary.get("mode") != "search":
        return 0.0
    # Summaries written before search_seconds existed: the wall time less the evaluation.
    return summary.get("search_seconds",
                       summary.get("wall_seconds", 0.0) - summary.get("eval_seconds", 0.0))


def cross_validate(config: config_lib.Config, workdir: str) -> dict:
    """Runs every fold (search or train), then writes summary.json and summary.md."""
    run_fold = train_mode.train_and_evaluate if config.architecture else search_mode.run
    mode = "train" if config.architecture else "search"
    # One split for every fold, made (or read from --splits_file) before the first fold.
    splits_path = os.path.abspath(os.path.join(workdir, "splits.json"))
    case_ids = [c.case_id for c in msd.read_dataset(config.data.data_dir).cases]
    os.makedirs(workdir, exist_ok=True)
    patches.load_or_make_splits(splits_path, case_ids, config.data.num_folds, config.seed,
                                config.data.splits_file)
    # Every fold reads the same preprocessed cases: one cache, not one per fold dir.
    cache_dir = config.data.cache_dir or os.path.abspath(os.path.join(workdir, "preprocessed"))
    summaries = []
    for fold in range(config.data.num_folds):
        fold_dir = os.path.join(workdir, f"fold_{fold}")
        fold_config = dataclasses.replace(
            config, mode=mode, data=dataclasses.replace(config.data, fold=fold,
                                                        splits_file=splits_path,
                                                        cache_dir=cache_dir))
        done = os.path.join(fold_dir, "summary.json")
        if os.path.exists(done):
            logging.info("fold %d: reusing %s", fold, done)
            with open(done) as f:
                summaries.append(json.load(f))
            continue
        logging.info("fold %d/%d: %s", fold + 1, config.data.num_folds, mode)
        summaries.append(run_fold(fold_config, fold_dir))
    result = aggregate(summaries)
    derived = [s.get("derived") for s in summaries if s.get("derived")]
    result.update(
        mode="evaluate", architecture=config.architecture or f"{config.search.strategy} search",
        # One fold's cost: genotypes can differ per fold (search), so the mean is given.
        derived={"params": float(np.mean([d["params"] for d in derived])),
                 "gflops": float(np.mean([d["gflops"] for d in derived])),
                 "patch_size": list(config.data.patch_size)} if derived else None,
        wall_seconds=float(sum(s.get("wall_seconds", 0.0) for s in summaries)),
        # Searches only (train rows have none): the cost of finding the architecture.
        search_seconds=float(sum(_search_seconds(s) for s in summaries)) or None)
    name = config.architecture or f"{config.search.strategy.upper()} search"
    table = markdown_header(result["labels"]) + "\n" + markdown_row(name, result) + "\n"
    fileio.write_atomic(os.path.join(workdir, "summary.md"), table)
    fileio.write_json(os.path.join(workdir, "summary.json"), result)
    logging.info("cross-validation:\n%s", table)
    return result
