"""Host-side (numpy) evaluation metrics: confusion counts and Dice per class.

Conventions: hard label maps of any equal shape (e.g. (x, y, z) or (b, x, y, z)), integer
values in [0, num_classes). Class 0 is background.

Empty ground truth AND empty prediction of a class gives Dice = NaN by default, as in
nnU-Net's evaluation (`compute_metrics`: tp + fp + fn == 0 -> nan): the class is then
left out of means (nanmean) instead of inflating them with a free 1.0. Pass empty=1.0
for the BraTS/MSD-leaderboard convention. A class present in only one of the two maps
scores 0.
"""

import numpy as np

EMPTY_NAN = float("nan")


def confusion_matrix(pred, label, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts: rows = ground truth, columns = prediction.

    Summable over cases and patches, so a global Dice can be computed from the total.
    """
    pred = np.asarray(pred).astype(np.int64).ravel()
    label = np.asarray(label).astype(np.int64).ravel()
    if pred.shape != label.shape:
        raise ValueError(f"pred has {pred.size} voxels, label {label.size}")
    for name, arr in (("pred", pred), ("label", label)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} values outside [0, {num_classes})")
    counts = np.bincount(label * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def dice_from_confusion(confusion: np.ndarray, *, empty: float = EMPTY_NAN) -> np.ndarray:
    """Dice per class (k,) float64 = 2 tp / (2 tp + fp + fn); `empty` where tp + fp + fn = 0."""
    confusion = np.asarray(confusion, np.float64)
    tp = np.diag(confusion)
    fp = confusion.sum(axis=0) - tp
    fn = confusion.sum(axis=1) - tp
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(denom > 0, 2 * tp / denom, empty)
    return dice


def dice_per_class(pred, label, num_classes: int, *, empty: float = EMPTY_NAN) -> np.ndarray:
    """Dice of each class (num_classes,) float64, background included at index 0."""
    return dice_from_confusion(confusion_matrix(pred, label, num_classes), empty=empty)


