"""PNG pictures for people: patches with their label overlay. Writes files; no jax."""

import matplotlib

matplotlib.use("Agg")  # No screen on servers and CI.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

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
    fig.savefig(path, dpi=90)
    plt.close(fig)
