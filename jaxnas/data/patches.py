"""Patches, batches and case splits: pure functions of arrays and a seed.

A batch is `{"image": (b, x, y, z, c) float32, "label": (b, x, y, z) int32}`, a pure
function of (seed, step) through `np.random.default_rng((seed, step))`, so a resumed run
replays it. Volumes smaller than the patch are padded with 0 (the normalised background).
"""

import json
import os

import numpy as np

from jaxnas import inference
from jaxnas.data import msd
from jaxnas.io import fileio


def _patch_start(rng, shape, patch_size, center=None) -> np.ndarray:
    """Start corner of a patch: uniform, or centred on `center`, kept inside the volume.

    Where the volume is smaller than the patch the start is negative (the gap is padded),
    and the volume sits at a random offset inside the patch.
    """
    shape, patch = np.asarray(shape), np.asarray(patch_size)
    low = np.minimum(0, shape - patch)  # Negative where the patch overhangs.
    high = np.maximum(0, shape - patch)
    if center is None:
        return np.array([rng.integers(lo, hi + 1) for lo, hi in zip(low, high)])
    return np.clip(np.asarray(center) - patch // 2, low, high)


def sample_patch(rng, image, label, fg_locations, patch_size, foreground: bool,
                 spatial: bool = False):
    """One (image patch, label patch), centred on a foreground voxel if `foreground`.

    For a foreground patch a present class is picked uniformly, then one of its voxels
    (nnU-Net's class-balanced oversampling). A case without foreground gets a random crop.
    spatial: a rotation and scaling about the patch centre (`spatial_transform`), drawn
    after the crop.
    """
    center = None
    classes = sorted(k for k, v in fg_locations.items() if len(v))
    if foreground and classes:
        coords = fg_locations[classes[rng.integers(len(classes))]]
        center = coords[rng.integers(len(coords))]
    start = _patch_start(rng, label.shape, patch_size, center)
    matrix = spatial_transform(rng) if spatial else None
    if matrix is None:
        return (inference.extract_patch(image, start, patch_size),
                inference.extract_patch(label, start, patch_size))
    return resample_patch(image, label, start, patch_size, matrix)


# nnU-Net's rotation and scaling augmentation, with smaller ranges: the budgets here are
# minutes, not 1000 epochs, and both left/right labels and anatomy keep their handedness
# (no flips). Each of rotation and scaling fires with p 0.2 per patch.
ROTATION_DEGREES = 15.0
SCALE_RANGE = (0.85, 1.15)


def spatial_transform(rng) -> np.ndarray | None:
    """A 3x3 matrix mapping patch offsets to volume offsets, or None (no change)."""
    rotate, scale = rng.random() < 0.2, rng.random() < 0.2
    if not (rotate or scale):
        return None
    matrix = np.eye(3)
    if rotate:
        for axis, angle in enumerate(np.deg2rad(rng.uniform(-1, 1, 3) * ROTATION_DEGREES)):
            i, j = [a for a in range(3) if a != axis]
            r = np.eye(3)
            r[i, i] = r[j, j] = np.cos(angle)
            r[i, j], r[j, i] = -np.sin(angle), np.sin(angle)
            matrix = r @ matrix
    if scale:
        matrix = matrix * rng.uniform(*SCALE_RANGE)  # > 1 zooms out (more context).
    return matrix


def resample_patch(image, label, start, patch_size, matrix):
    """The patch at `start`, its grid rotated/scaled by `matrix` about the patch centre:
    linear for the image, nearest for the label, zeros outside the volume."""
    from scipy import ndimage  # Only runs that augment spatially pay the import.

    patch = np.asarray(patch_size, np.float64)
    centre = np.asarray(start, np.float64) + (patch - 1) / 2
    grid = np.stack(np.meshgrid(*[np.arange(p) - (p - 1) / 2 for p in patch],
                                indexing="ij"), axis=0).reshape(3, -1)
    coords = (matrix @ grid + centre[:, None]).reshape(3, *patch_size)
    channels = [ndimage.map_coordinates(image[..., c], coords, order=1, mode="constant",
                                        cval=0.0) for c in range(image.shape[-1])]
    out_label = ndimage.map_coordinates(label, coords, order=0, mode="constant", cval=0)
    return np.stack(channels, axis=-1).astype(image.dtype), out_label.astype(label.dtype)


def num_foreground(rng, batch_size: int, fg_fraction: float) -> int:
    """floor(b * f) patches plus one more with the fractional probability: mean b * f.

    nnU-Net's rule (the last round(b * f) patches) gives batch size 1 no foreground patch
    at f = 1/3; this keeps the expected rate at every batch size.
    """
    expected = batch_size * fg_fraction
    return int(np.floor(expected)) + int(rng.random() < expected - np.floor(expected))


def augment_intensity(rng, image: np.ndarray) -> np.ndarray:
    """nnU-Net-style intensity augmentation of one patch (x, y, z, c), float32.

    Per channel: contrast (x 0.75..1.25 about the mean, p 0.15), brightness (x 0.75..1.25,
    p 0.15), gamma 0.7..1.5 on the patch's own range (p 0.3) and Gaussian noise of
    variance 0..0.1 (p 0.15). No spatial change: labels stay as they are, and no flips
    (a left/right label would swap).
    """
    out = image.astype(np.float32, copy=True)
    for c in range(out.shape[-1]):
        x = out[..., c]
        if rng.random() < 0.15:
            mean = x.mean()
            x = (x - mean) * rng.uniform(0.75, 1.25) + mean
        if rng.random() < 0.15:
            x = x * rng.uniform(0.75, 1.25)
        if rng.random() < 0.3:
            low, high = x.min(), x.max()
            if high > low:
                x = low + (high - low) * ((x - low) / (high - low)) ** rng.uniform(0.7, 1.5)
        if rng.random() < 0.15:
            x = x + rng.normal(0.0, np.sqrt(rng.uniform(0.0, 0.1)), x.shape)
        out[..., c] = x
    return out


def make_batch(cases, *, seed: int, step: int, batch_size: int, patch_size,
               fg_fraction: float, augment: bool = False,
               augment_spatial: bool = False) -> dict[str, np.ndarray]:
    """The batch of `step`: cases drawn uniformly, a `fg_fraction` share foreground-centred.

    Args:
      cases: sequence of objects with `image`, `label`, `fg_locations` (cache.PreparedCase).
      augment: intensity augmentation (`augment_intensity`) of each patch, drawn from the
        same (seed, step) stream right after that patch; without it the draws, and so the
        batches, are those of earlier versions.
      augment_spatial: rotation and scaling of each patch (`spatial_transform`); off, the
        stream and the batches are unchanged.
    """
    rng = np.random.default_rng((seed, step))
    n_fg = num_foreground(rng, batch_size, fg_fraction)
    images, labels = [], []
    for i in range(batch_size):
        case = cases[rng.integers(len(cases))]
        image, label = sample_patch(rng, case.image, case.label, case.fg_locations,
                                    patch_size, foreground=i < n_fg,
                                    spatial=augment_spatial)
        if augment:
            image = augment_intensity(rng, image)
        images.append(image)
        labels.append(label)
    return {"image": np.stack(images).astype(np.float32),
            "label": np.stack(labels).astype(np.int32)}


# --- Splits ---


def kfold_splits(case_ids, num_folds: int, seed: int = 0) -> list[dict[str, list[str]]]:
    """Deterministic k-fold split: a seeded shuffle of the sorted ids, dealt round-robin."""
    ids = sorted(case_ids)
    if not 2 <= num_folds <= len(ids):
        raise ValueError(f"num_folds={num_folds} needs 2 <= folds <= {len(ids)} cases")
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    folds = [sorted(order[k::num_folds]) for k in range(num_folds)]
    return [{"train": sorted(set(ids) - set(val)), "val": val} for val in folds]


def bilevel_split(train_ids, seed: int = 0, alpha_fraction: float = 0.5):
    """Splits training cases into the Theta part and the alpha part of the bi-level search."""
    ids = sorted(train_ids)
    if len(ids) < 2:
        raise ValueError(f"the bi-level search needs >= 2 training cases, got {len(ids)}")
    order = [ids[i] for i in np.random.default_rng((seed, 1)).permutation(len(ids))]
    n_alpha = min(len(ids) - 1, max(1, int(round(len(ids) * alpha_fraction))))
    return sorted(order[n_alpha:]), sorted(order[:n_alpha])


def load_or_make_splits(path: str, case_ids, num_folds: int, seed: int = 0,
                        user_file: str = ""):
    """Reads `user_file` or an existing `path`, else writes a new k-fold split to `path`.

    A split read from a file must name only known cases and use each once per fold.
    """
    source = user_file or (path if os.path.exists(path) else "")
    if not source:
        if not 2 <= num_folds <= len(case_ids):
            raise msd.DataError(
                f"{len(case_ids)} training cases cannot make {num_folds} folds: set "
                f"--num_folds to a value from 2 to {len(case_ids)}")
        splits = kfold_splits(case_ids, num_folds, seed)
        fileio.write_json(path, splits)
        return splits
    try:
        with open(source) as f:
            splits = json.load(f)
        known = set(case_ids)
        for k, fold in enumerate(splits):
            train, val = set(fold["train"]), set(fold["val"])
            if (train | val) - known:
                raise ValueError(f"fold {k} names unknown cases {sorted((train | val) - known)}")
            if train & val:
                raise ValueError(f"fold {k} has cases in both train and val")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise msd.DataError(f"{source}: bad splits file: {e}") from None
    if user_file and user_file != path:
        fileio.write_json(path, splits)
    return splits
