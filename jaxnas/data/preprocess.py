"""Preprocessing as in SCNAS/nnU-Net: crop to nonzero, resample, z-normalise; plus its cache.

Pure functions of numpy arrays: channels-last `(x, y, z, c)` float32 images, `(x, y, z)`
uint8 labels. `cache.py` is the shell that reads NIfTI files and stores the results.

Order: crop first (cheaper; the crop box is recorded), then resample image (spline of
`image_order`), nonzero mask (nearest) and label (per-class linear then argmax, which never
invents a class), then normalise each channel:
- MR and other modalities: z-score inside the nonzero mask, 0 outside (per case).
- CT (the modality named "CT"): nnU-Net's rule. Hounsfield units mean the same in every
  case, so the statistics are the dataset's: clip to the 0.5 and 99.5 percentiles of the
  training cases' foreground (labelled) voxels, then z-score with their mean and std.
  A per-case z-score over a CT volume is ruled by air (-1000) and bone, and squeezes
  the soft tissue that is to be segmented into a sliver of the range.
"""

import numpy as np
from scipy import ndimage

# nnU-Net keeps up to 10000 foreground voxel locations per class for oversampling.
_MAX_FG_LOCATIONS = 10000


def median_spacing(spacings) -> tuple[float, float, float]:
    """Per-axis median of the cases' voxel spacings (nnU-Net's default target)."""
    return tuple(float(v) for v in np.median(np.asarray(spacings, dtype=np.float64), axis=0))


def nonzero_bbox(image: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Bounding box [start, stop) per spatial axis of voxels nonzero in any channel."""
    mask = np.any(image != 0, axis=-1)
    box = []
    for axis in range(3):
        nz = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != axis)))
        box.append((int(nz[0]), int(nz[-1]) + 1))
    return tuple(box)


def crop(array: np.ndarray, box) -> np.ndarray:
    return array[tuple(slice(a, b) for a, b in box)]


def resampled_shape(shape, spacing, target_spacing) -> tuple[int, int, int]:
    """Voxel counts that keep the physical extent: shape * spacing / target, rounded."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target_spacing))


def _zoom(volume: np.ndarray, new_shape, order: int) -> np.ndarray:
    factors = [n / o for n, o in zip(new_shape, volume.shape)]
    # grid_mode: voxels are cells, so the first and last voxel edges map onto each other and
    # the physical extent is kept.
    return ndimage.zoom(volume, factors, order=order, mode="grid-constant", grid_mode=True,
                        prefilter=order > 1)


def resample_image(image: np.ndarray, new_shape, order: int = 3) -> np.ndarray:
    if tuple(image.shape[:3]) == tuple(new_shape):
        return image.astype(np.float32)
    return np.stack([_zoom(image[..., c], new_shape, order) for c in range(image.shape[-1])],
                    axis=-1).astype(np.float32)


def resample_label(label: np.ndarray, new_shape) -> np.ndarray:
    """Per-class linear interpolation then argmax: smooth, and never a new class value."""
    if tuple(label.shape) == tuple(new_shape):
        return label.astype(np.uint8)
    present = np.unique(label)
    best = np.full(new_shape, -1.0, np.float32)
    out = np.zeros(new_shape, np.uint8)
    for value in present:
        score = _zoom((label == value).astype(np.float32), new_shape, order=1)
        better = score > best
        out[better], best[better] = value, score[better]
    return out


def resample_mask(mask: np.ndarray, new_shape) -> np.ndarray:
    if tuple(mask.shape) == tuple(new_shape):
        return mask
    return _zoom(mask.astype(np.float32), new_shape, order=0) > 0.5


def zscore_nonzero(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Z-scores each channel over `mask` voxels; voxels outside the mask become 0."""
    out = np.zeros_like(image, dtype=np.float32)
    for c in range(image.shape[-1]):
        values = image[..., c][mask]
        std = values.std()
        out[..., c] = np.where(mask, (image[..., c] - values.mean()) / max(std, 1e-8), 0.0)
    return out


# nnU-Net samples up to 10000 foreground voxels per case for its intensity fingerprint.
INTENSITY_SAMPLES_PER_CASE = 10000


def is_ct(modality: str) -> bool:
    """Whether a dataset.json modality name is CT (case and spaces ignored, as nnU-Net)."""
    return str(modality).strip().lower() == "ct"


def foreground_intensities(image: np.ndarray, label: np.ndarray, *,
                           samples: int = INTENSITY_SAMPLES_PER_CASE,
                           seed: int = 0) -> np.ndarray:
    """Up to `samples` voxels (n, c) of image where label > 0, drawn without replacement."""
    values = image[np.asarray(label) > 0]
    if len(values) > samples:
        values = values[np.random.default_rng(seed).choice(len(values), samples, replace=False)]
    return np.asarray(values, np.float64).reshape(-1, image.shape[-1])


def intensity_stats(samples: np.ndarray) -> dict:
    """CT normalisation of one channel from its foreground samples (n,): clip range
    (0.5 and 99.5 percentiles), mean and std (of the unclipped samples, as nnU-Net)."""
    samples = np.asarray(samples, np.float64)
    if samples.size == 0:
        raise ValueError("no foreground voxels to take CT intensity statistics from")
    lo, hi = np.percentile(samples, [0.5, 99.5])
    return {"clip": [float(lo), float(hi)], "mean": float(samples.mean()),
            "std": float(samples.std())}


def normalize(image: np.ndarray, mask: np.ndarray, intensity=None) -> np.ndarray:
    """Each channel normalised: by `intensity[c]` (CT statistics from `intensity_stats`:
    clip, then z-score over the whole volume) where given, else z-scored over `mask` with
    0 outside (`zscore_nonzero`). intensity: None or one entry (dict or None) per channel."""
    intensity = list(intensity or [None] * image.shape[-1])
    if len(intensity) != image.shape[-1]:
        raise ValueError(f"intensity statistics for {len(intensity)} channels, the image "
                         f"has {image.shape[-1]}")
    out = np.empty(image.shape, np.float32)
    for c, stats in enumerate(intensity):
        if stats is None:
            out[..., c] = zscore_nonzero(image[..., c:c + 1], mask)[..., 0]
        else:
            lo, hi = stats["clip"]
            out[..., c] = (np.clip(image[..., c], lo, hi) - stats["mean"]) / max(
                stats["std"], 1e-8)
    return out


def preprocess_case(image, label, spacing, target_spacing, *, image_order=3, intensity=None):
    """Crop, resample and normalise one case.

    Args:
      image: (x, y, z, c) float32. label: (x, y, z) integer. spacing: voxel size in mm.
      intensity: per channel, CT statistics (`intensity_stats`) or None (see `normalize`).
    Returns:
      (image (X, Y, Z, c) float32, label (X, Y, Z) uint8, meta dict with the crop box and
      shapes needed to map a prediction back to the original grid).
    """
    box = nonzero_bbox(image)
    image, label = crop(image, box), crop(label, box)
    mask = np.any(image != 0, axis=-1)
    new_shape = resampled_shape(image.shape[:3], spacing, target_spacing)
    image = resample_image(image, new_shape, image_order)
    label = resample_label(label, new_shape)
    mask = resample_mask(mask, new_shape)
    image = normalize(image, mask, intensity)
    meta = {"crop_box": [list(b) for b in box], "cropped_shape": [b - a for a, b in box],
            "shape": list(new_shape)}
    return image, label, meta


def preprocess_image(image, spacing, target_spacing, *, image_order=3, intensity=None):
    """`preprocess_case` for an image without a label (prediction): crop, resample, normalise.

    Args:
      image: (x, y, z, c) float32 with some nonzero voxel. spacing: voxel size in mm.
      intensity: the training run's CT statistics per channel (see `normalize`).
    Returns:
      (image (X, Y, Z, c) float32, meta) with meta as `preprocess_case`'s plus
      "original_shape", the (x, y, z) the crop box lies in.
    """
    original_shape = [int(n) for n in image.shape[:3]]
    box = nonzero_bbox(image)
    image = crop(image, box)
    mask = np.any(image != 0, axis=-1)
    new_shape = resampled_shape(image.shape[:3], spacing, target_spacing)
    image = resample_image(image, new_shape, image_order)
    mask = resample_mask(mask, new_shape)
    image = normalize(image, mask, intensity)
    meta = {"crop_box": [list(b) for b in box], "cropped_shape": [b - a for a, b in box],
            "shape": list(new_shape), "original_shape": original_shape}
    return image, meta


def foreground_locations(label: np.ndarray, seed: int = 0) -> dict[int, np.ndarray]:
    """Up to _MAX_FG_LOCATIONS voxel coordinates (n, 3) per foreground class present."""
    rng = np.random.default_rng(seed)
    out = {}
    for value in np.unique(label):
        if value == 0:
            continue
        coords = np.argwhere(label == value).astype(np.int32)
        if len(coords) > _MAX_FG_LOCATIONS:
            coords = coords[np.sort(rng.choice(len(coords), _MAX_FG_LOCATIONS, replace=False))]
        out[int(value)] = coords
    return out
