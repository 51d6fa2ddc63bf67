"""Preprocessing as in SCNAS/nnU-Net: crop to nonzero, resample, z-normalise; plus its cache.

Pure functions of numpy arrays: channels-last `(x, y, z, c)` float32 images, `(x, y, z)`
uint8 labels. `cache.py` is the shell that reads NIfTI files and stores the results.

Order: crop first (cheaper; the crop box is recorded), then resample image (spline of
`image_order`), nonzero mask (nearest) and label (per-class linear then argmax, which never
invents a class), then z-score each channel inside the mask and set the outside to 0.
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


def preprocess_case(image, label, spacing, target_spacing, *, image_order=3):
    """Crop, resample and normalise one case.

    Args:
      image: (x, y, z, c) float32. label: (x, y, z) integer. spacing: voxel size in mm.
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
    image = zscore_nonzero(image, mask)
    meta = {"crop_box": [list(b) for b in box], "cropped_shape": [b - a for a, b in box],
            "shape": list(new_shape)}
    return image, label, meta


def preprocess_image(image, spacing, target_spacing, *, image_order=3):
    """`preprocess_case` for an image without a label (prediction): crop, resample, z-score.

    Args:
      image: (x, y, z, c) float32 with some nonzero voxel. spacing: voxel size in mm.
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
    image = zscore_nonzero(image, mask)
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
