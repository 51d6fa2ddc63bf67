"""Held-out evaluation shared by the search and train shells: Dice, pictures, summary.json.

Dice is computed in the preprocessed (cropped, resampled) space of each held-out case, the
space the network sees; `predict` maps predictions back to the original grid.
"""

import os

import numpy as np
from matplotlib import image as mpimg

from jaxnas import config as config_lib
from jaxnas import inference
from jaxnas import metrics as metrics_lib
from jaxnas.io import fileio
from jaxnas.io import pictures


class RunError(RuntimeError):
    """A run that cannot go on (e.g. a non-finite loss); the message says what to do."""


def check_finite(metrics: dict, step: int, workdir: str) -> None:
    """Raises RunError on a non-finite metric: called before every checkpoint."""
    if not all(np.isfinite(v) for v in metrics.values()):
        raise RunError(f"non-finite loss at step {step} ({metrics}); the last good "
                       f"checkpoint in {workdir}/ckpt is kept. Lower --lr_w or "
                       "--lr_a, or add --ce_weight=1, and rerun to resume.")


def evaluate_cases(predict_fn, cases, *, num_classes: int, config: config_lib.Config,
                   picture_dir: str | None = None, label_names=None) -> dict:
    """Sliding-window Dice per held-out case and their mean; a PNG per case if asked."""
    per_case, confusion = {}, np.zeros((num_classes, num_classes), np.int64)
    for case in cases:
        scores = inference.sliding_window_predict(
            predict_fn, np.asarray(case.image), window=config.data.patch_size,
            num_classes=num_classes, overlap=config.eval.overlap,
            batch_size=config.eval.batch_size, gaussian=config.eval.gaussian,
            mirror=config.eval.mirror)
        pred = scores.argmax(-1)
        label = np.asarray(case.label)
        per_case[case.case_id] = metrics_lib.dice_per_class(pred, label, num_classes).tolist()
        confusion += metrics_lib.confusion_matrix(pred, label, num_classes)
        if picture_dir:
            os.makedirs(picture_dir, exist_ok=True)
            pictures.save_case_picture(
                os.path.join(picture_dir, f"{case.case_id}.png"), np.asarray(case.image), pred,
                label, num_classes, label_names=label_names, spacing=case.meta.get("spacing"),
                title=case.case_id)
    mean = np.nanmean(np.array(list(per_case.values()), dtype=np.float64), axis=0)
    return {"per_case": per_case, "dice_per_class": mean.tolist(),
            "dice_mean_foreground": float(np.nanmean(mean[1:])),
            "dice_pooled": metrics_lib.dice_from_confusion(confusion).tolist()}


def write_summary(workdir: str, writer, step: int, data, result: dict, extra: dict) -> dict:
    """summary.json of a finished run (its presence marks the run finished); returns it.

    `extra` carries what the caller knows: fold, mode, architecture, times and a note.
    """
    num_classes = data.dataset.num_classes
    names = [data.dataset.labels.get(k, str(k)) for k in range(num_classes)]
    summary = {
        "dataset": data.dataset.name, "steps": step,
        "val_cases": data.val_ids, "labels": names,
        "dice_per_class": dict(zip(names, result["dice_per_class"])),
        "dice_mean_foreground": result["dice_mean_foreground"],
        "dice_per_case": result["per_case"],
        **extra,
    }
    writer.write_scalars(step, {f"val/dice/{n.replace(' ', '_')}": v
                                for n, v in summary["dice_per_class"].items()})
    writer.write_scalars(step, {"val/dice_mean": summary["dice_mean_foreground"]})
    fileio.write_json(os.path.join(workdir, "summary.json"), summary)
    return summary


def pictures_to_tensorboard(writer, step: int, picture_dir: str) -> None:
    """Every PNG of picture_dir as a TensorBoard image (tag: its file name)."""
    if not os.path.isdir(picture_dir):
        return
    for name in sorted(os.listdir(picture_dir)):
        if name.endswith(".png"):
            rgb = mpimg.imread(os.path.join(picture_dir, name))[..., :3]
            writer.write_image(step, f"{os.path.basename(picture_dir)}/{name[:-4]}",
                               (rgb * 255).astype(np.uint8))
