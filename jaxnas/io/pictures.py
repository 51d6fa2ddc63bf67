"""PNG pictures for people: patches with their label overlay. Writes files; no jax."""

import io

import matplotlib

matplotlib.use("Agg")  # No screen on servers and CI.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxnas.io import fileio  # noqa: E402

# Label colours (RGBA); background transparent. Enough for MSD's largest label sets.
_COLOURS = plt.get_cmap("tab10")


def _overlay(label: np.ndarray, num_classes: int) -> np.ndarray:
    rgba = np.zeros(label.shape + (4,), np.float32)
    for k in range(1, num_classes):
        rgba[label == k] = (*_COLOURS((k - 1) % 10)[:3], 0.45)
    return rgba


def save_patch_grid(path: str, images: np.ndarray, labels: np.ndarray,
                    label_names: dict[int, str], title: str = "") -> None:
    """One row per patch: the centre slice along each axis, first channel, label overlaid.

    Args:
      images: (n, x, y, z, c) float. labels: (n, x, y, z) int.
    """
    n = images.shape[0]
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.6 * n), squeeze=False)
    num_classes = max(label_names) + 1
    for i in range(n):
        for axis in range(3):
            index = [slice(None)] * 3
            index[axis] = images.shape[1 + axis] // 2
            image = images[i][tuple(index)][..., 0]
            label = labels[i][tuple(index)]
            ax = axes[i, axis]
            ax.imshow(image.T, cmap="gray", origin="lower")
            ax.imshow(np.transpose(_overlay(label, num_classes), (1, 0, 2)), origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"patch {i}, {'xyz'[axis]} = {index[axis]}", fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=_COLOURS((k - 1) % 10))
               for k in range(1, num_classes)]
    fig.legend(handles, [label_names[k] for k in range(1, num_classes)], loc="lower center",
               ncol=min(4, num_classes - 1), fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    fileio.write_atomic(path, buf.getvalue())


def foreground_centre(*label_maps) -> tuple[int, int, int]:
    """Voxel nearest the centre of mass of the first map with foreground; else the middle."""
    shape = label_maps[0].shape
    for label in label_maps:
        if label is not None and np.any(label > 0):
            centre = np.argwhere(label > 0).mean(axis=0)
            return tuple(int(np.clip(round(c), 0, n - 1)) for c, n in zip(centre, shape))
    return tuple(n // 2 for n in shape)


# (name, fixed axis, horizontal axis, vertical axis) of the orthogonal views.
_VIEWS = (("axial", 2, 0, 1), ("coronal", 1, 0, 2), ("sagittal", 0, 1, 2))


def save_case_picture(path: str, image: np.ndarray, prediction: np.ndarray, label=None,
                      num_classes: int | None = None, *, label_names=None, spacing=None,
                      title: str = "") -> None:
    """Axial, coronal and sagittal slices through the foreground centre, overlays on top.

    Row 1 shows the prediction; row 2 the ground truth when `label` is given. Both rows cut
    through the same voxel (the prediction's foreground centre, else the label's).

    Args:
      image: (x, y, z) or (x, y, z, c) intensities (first channel shown). prediction and
        label: (x, y, z) int. num_classes: None takes the largest value present + 1.
      label_names: {class: name} for the legend. spacing: voxel size, for true aspect ratios.
    """
    image = np.asarray(image, np.float32)
    if image.ndim == 4:
        image = image[..., 0]
    rows = [("prediction", np.asarray(prediction))]
    if label is not None:
        rows.append(("ground truth", np.asarray(label)))
    if num_classes is None:
        num_classes = int(max(int(r.max()) for _, r in rows)) + 1
    label_names = label_names or {k: str(k) for k in range(num_classes)}
    spacing = spacing or (1.0, 1.0, 1.0)
    lo, hi = np.percentile(image, [0.5, 99.5])
    centre = foreground_centre(*(r for _, r in rows))
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3.2 * len(rows)), squeeze=False)
    for i, (row_name, labels) in enumerate(rows):
        for j, (view, fixed, h, v) in enumerate(_VIEWS):
            index = [slice(None)] * 3
            index[fixed] = centre[fixed]
            # After dropping the fixed axis the remaining axes keep their order (h < v).
            plane, overlay = image[tuple(index)], _overlay(labels[tuple(index)], num_classes)
            ax = axes[i, j]
            aspect = spacing[v] / spacing[h]
            ax.imshow(plane.T, cmap="gray", origin="lower", vmin=lo, vmax=max(hi, lo + 1e-6),
                      aspect=aspect)
            ax.imshow(np.transpose(overlay, (1, 0, 2)), origin="lower", aspect=aspect)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{row_name}: {view}, {'xyz'[fixed]} = {centre[fixed]}", fontsize=8)
    if num_classes > 1:
        handles = [plt.Rectangle((0, 0), 1, 1, color=_COLOURS((k - 1) % 10))
                   for k in range(1, num_classes)]
        fig.legend(handles, [str(label_names.get(k, k)) for k in range(1, num_classes)],
                   loc="lower center", ncol=min(4, num_classes - 1), fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    fileio.write_atomic(path, buf.getvalue())  # No half-written picture.
