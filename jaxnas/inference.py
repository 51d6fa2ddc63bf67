"""Sliding-window inference: window placement, Gaussian weights, host-side stitching.

Volumes are channels-last `(x, y, z, c)` numpy arrays; `predict_fn` maps a batch of
windows `(b, wx, wy, wz, c)` to per-class scores `(b, wx, wy, wz, k)`. Every call of
`predict_fn` gets the same batch shape (the last batch is padded), so it traces once.
Mirroring test-time augmentation (nnU-Net's) also predicts each batch flipped along every
subset of the chosen spatial axes, flips the scores back and averages them.
"""

import itertools

import numpy as np
from scipy import ndimage


def extract_patch(volume: np.ndarray, start, patch_size) -> np.ndarray:
    """Crops `volume[start:start+patch]` over the 3 spatial axes, zero-padding outside."""
    out = np.zeros(tuple(patch_size) + volume.shape[3:], dtype=volume.dtype)
    src, dst = [], []
    for s, p, n in zip(start, patch_size, volume.shape[:3]):
        a, b = max(s, 0), min(s + p, n)
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def window_starts(shape, window, overlap: float = 0.5) -> list[tuple[int, ...]]:
    """Start corners covering `shape` with windows of `window`, `overlap` shared per axis.

    The last window on each axis ends at the border; a volume smaller than the window gets
    one start at 0 (the window is zero-padded).
    """
    axes = []
    for n, w in zip(shape, window):
        if n <= w:
            axes.append([0])
            continue
        step = max(1, int(w * (1.0 - overlap)))
        count = int(np.ceil((n - w) / step)) + 1
        axes.append(sorted({int(round(v)) for v in np.linspace(0, n - w, count)}))
    return list(itertools.product(*axes))


def gaussian_weights(window, sigma_scale: float = 1.0 / 8) -> np.ndarray:
    """nnU-Net's importance map: a Gaussian centred in the window, clamped above 0."""
    weights = np.zeros(window, np.float32)
    weights[tuple(w // 2 for w in window)] = 1.0
    weights = ndimage.gaussian_filter(weights, [w * sigma_scale for w in window], mode="constant")
    weights /= weights.max()
    # Zero weights would divide by zero at the borders (nnU-Net's note).
    return np.maximum(weights, weights[weights > 0].min()).astype(np.float32)


def mirror_flips(mirror_axes=(0, 1, 2)) -> list[tuple[int, ...]]:
    """Every subset of the spatial `mirror_axes`, the empty one (no flip) first."""
    axes = tuple(sorted({int(a) for a in mirror_axes}))
    if any(a not in (0, 1, 2) for a in axes):
        raise ValueError(f"mirror_axes must be spatial axes 0, 1, 2; got {mirror_axes}")
    return [f for r in range(len(axes) + 1) for f in itertools.combinations(axes, r)]


def _predict_batch(predict_fn, batch: np.ndarray, flips) -> np.ndarray:
    """Mean over `flips` of predict_fn on the flipped batch, flipped back; (b, ..., k)."""
    total = None
    for flip in flips:
        axes = tuple(a + 1 for a in flip)  # Axis 0 of the batch is the window index.
        x = np.flip(batch, axes) if axes else batch
        scores = np.asarray(predict_fn(np.ascontiguousarray(x)), np.float32)
        scores = np.flip(scores, axes) if axes else scores
        total = scores.copy() if total is None else total + scores
    return total / len(flips)


def sliding_window_predict(predict_fn, volume: np.ndarray, *, window, num_classes: int,
                           overlap: float = 0.5, batch_size: int = 1,
                           gaussian: bool = False, mirror: bool = False,
                           mirror_axes=(0, 1, 2)) -> np.ndarray:
    """Averages `predict_fn` over overlapping windows; returns (x, y, z, k) float32.

    With `mirror`, each batch is also predicted flipped along every subset of
    `mirror_axes` (all 8 combinations for (0, 1, 2): 8 times the calls) and the flipped-back
    scores are averaged before stitching.
    """
    flips = mirror_flips(mirror_axes) if mirror else [()]
    shape = volume.shape[:3]
    out = np.zeros(shape + (num_classes,), np.float32)
    norm = np.zeros(shape + (1,), np.float32)
    weights = gaussian_weights(window) if gaussian else np.ones(window, np.float32)
    starts = window_starts(shape, window, overlap)
    for i in range(0, len(starts), batch_size):
        group = starts[i:i + batch_size]
        windows = [extract_patch(volume, s, window) for s in group]
        windows += [windows[0]] * (batch_size - len(group))  # Pad: one batch shape.
        scores = _predict_batch(predict_fn, np.stack(windows), flips)
        for start, score in zip(group, scores):
            region = tuple(slice(s, min(s + w, n)) for s, w, n in zip(start, window, shape))
            crop = tuple(slice(0, r.stop - r.start) for r in region)
            out[region] += score[crop] * weights[crop][..., None]
            norm[region] += weights[crop][..., None]
    return out / norm
