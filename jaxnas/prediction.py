"""The prediction core: one image (x, y, z, c) in its own grid -> labels and probabilities.

Pure numpy and scipy around a `predict_fn` of windows: the training preprocessing (crop to
nonzero, resample, z-score), the sliding window (inference.py), and the way back onto the
input grid. `--mode=predict` (modes/predict.py) runs it between reading and writing NIfTI
files; an exported model (modes/export.py) carries this module, inference.py,
data/preprocess.py and errors.py beside its StableHLO program, so these four import
nothing else of jaxnas.

`plan` is a dict: target_spacing, num_channels, num_classes, patch_size (required);
image_order, overlap, gaussian, mirror, batch_size, labels ({"0": "background", ...}),
intensity (CT statistics per channel, preprocess.normalize).
"""

import numpy as np
from scipy import ndimage

from jaxnas import inference
from jaxnas.data import preprocess
from jaxnas.errors import DataError

_REQUIRED_PLAN_KEYS = ("target_spacing", "num_channels", "num_classes", "patch_size")
PLAN_DEFAULTS = {"image_order": 3, "overlap": 0.5, "gaussian": True, "mirror": False,
                 "batch_size": 1}


def check_plan(plan: dict) -> dict:
    """The plan with defaults filled in; DataError for a missing or bad required key."""
    missing = [k for k in _REQUIRED_PLAN_KEYS if k not in plan]
    if missing:
        raise DataError(f"prediction plan lacks {missing}")
    out = dict(PLAN_DEFAULTS, **plan)
    if len(out["target_spacing"]) != 3 or min(out["target_spacing"]) <= 0:
        raise DataError(f"prediction plan: bad target_spacing {out['target_spacing']}")
    if len(out["patch_size"]) != 3 or min(out["patch_size"]) <= 0:
        raise DataError(f"prediction plan: bad patch_size {out['patch_size']}")
    intensity = out.get("intensity")
    if intensity is not None and len(intensity) != int(out["num_channels"]):
        raise DataError(f"prediction plan: intensity has {len(intensity)} channels, "
                        f"num_channels is {out['num_channels']}")
    if not 1 <= int(out["num_classes"]) <= 256:
        raise DataError(f"prediction plan: num_classes {out['num_classes']} not in 1..256")
    out.setdefault("labels", {str(k): str(k) for k in range(int(out["num_classes"]))})
    return out


def preprocess_for_inference(image: np.ndarray, spacing, plan: dict):
    """Training's preprocessing of one image: (image_pp (X, Y, Z, c), meta to undo it)."""
    plan = check_plan(plan)
    if not np.any(image):
        raise DataError("the image is all zero; there is nothing to segment")
    return preprocess.preprocess_image(image, spacing, plan["target_spacing"],
                                       image_order=int(plan["image_order"]),
                                       intensity=plan.get("intensity"))


def restore_to_original(probs_pp: np.ndarray, meta: dict, *, order: int = 1) -> np.ndarray:
    """Maps per-class scores (X, Y, Z, k) of the preprocessed grid onto the original grid.

    Resamples to the cropped shape (order 1: linear, 0: nearest; cell-aligned like the
    forward resampling), renormalises to sum 1, and puts the result into the crop box of an
    (x, y, z, k) volume that is background (class 0 probability 1) elsewhere.
    """
    if tuple(probs_pp.shape[:3]) != tuple(meta["shape"]):
        raise ValueError(f"scores of shape {probs_pp.shape[:3]}, the preprocessed image had "
                         f"{tuple(meta['shape'])}")
    cropped = tuple(int(n) for n in meta["cropped_shape"])
    k = probs_pp.shape[-1]
    if tuple(probs_pp.shape[:3]) == cropped:
        restored = np.asarray(probs_pp, np.float32)
    else:
        factors = [n / o for n, o in zip(cropped, probs_pp.shape[:3])]
        restored = np.stack([ndimage.zoom(np.asarray(probs_pp[..., c], np.float32), factors,
                                          order=order, mode="nearest", grid_mode=True)
                             for c in range(k)], axis=-1)
        total = restored.sum(-1, keepdims=True)
        restored = np.where(total > 0, restored / np.maximum(total, 1e-12), 1.0 / k)
    out = np.zeros(tuple(int(n) for n in meta["original_shape"]) + (k,), np.float32)
    out[..., 0] = 1.0
    out[tuple(slice(a, b) for a, b in meta["crop_box"])] = restored
    return out


def predict_case(predict_fn, image: np.ndarray, spacing, plan: dict):
    """Segments one image (x, y, z, c) in its own grid.

    `predict_fn` maps preprocessed windows (b, *patch_size, c) to class probabilities
    (b, *patch_size, k). Returns (labels uint8 (x, y, z), probs float32 (x, y, z, k)).
    """
    plan = check_plan(plan)
    image_pp, meta = preprocess_for_inference(image, spacing, plan)
    scores = inference.sliding_window_predict(
        predict_fn, image_pp, window=tuple(int(n) for n in plan["patch_size"]),
        num_classes=int(plan["num_classes"]), overlap=float(plan["overlap"]),
        batch_size=int(plan["batch_size"]), gaussian=bool(plan["gaussian"]),
        mirror=bool(plan["mirror"]))
    probs = restore_to_original(scores, meta)
    return probs.argmax(-1).astype(np.uint8), probs
