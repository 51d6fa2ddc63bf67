"""Builds a small MSD-format brain-tissue task from the MNI template that nilearn ships.

`python -m jaxnas.data.demo --out DIR` writes `DIR/dataset.json`, `DIR/imagesTr/demo_XXX.nii.gz`
(3D float32 T1), `DIR/labelsTr/demo_XXX.nii.gz` (uint8: 0 background, 1 grey matter, 2 white
matter) and `DIR/README.md`. Nothing is downloaded: the MNI ICBM152 2009a nonlinear symmetric T1
and its GM/WM probability maps lie inside the nilearn package (197x233x189 at 1 mm, uint8).

Every case is the ONE template anatomy under random transforms (DESIGN.md section 6): a smooth
deformation plus a small rotation/scale/shift, a per-axis spacing jitter (so resampling to a
common spacing matters, as in real MSD), a multiplicative bias field, a gamma/contrast change
and Gaussian noise inside the head. It is a pipeline demo, not a generalisation benchmark, and
intensity alone already segments it well: `median_floor_dice` measures that floor and the
README reports it, so network Dice can be quoted next to it.

Array conventions: volumes are 3D `(x, y, z)` in nibabel voxel order, world units are mm,
affines are diagonal (4, 4). Images are float32 with background exactly 0 (crop-to-nonzero
works); labels are uint8 and are 0 wherever the image is 0. Displacements and sampling
coordinates are component-first `(3, x, y, z)`, the layout `scipy.ndimage.map_coordinates` takes.
Case i draws everything from `np.random.default_rng((seed, i))`, so a seed gives identical bytes.
"""

import argparse
import gzip
import json
import os
import re
import sys
import time
from typing import NamedTuple

import nibabel as nib
import numpy as np
from absl import logging
from scipy import ndimage

from jaxnas.io import fileio

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
LABELS = {"0": "background", "1": "grey matter", "2": "white matter"}
# The spatial task: grey matter split by hemisphere, so intensity alone cannot tell left
# from right and a network needs context (where the midline is, which side it is on).
SPATIAL_LABELS = {"0": "background", "1": "left grey matter", "2": "right grey matter",
                  "3": "white matter"}
TASKS = {"tissue": ("Demo_BrainTissue", LABELS), "hemispheres": ("Demo_BrainHemispheres",
                                                                 SPATIAL_LABELS)}
SPACING_JITTER = (0.9, 1.2)  # x --spacing, per axis: 2 mm -> 1.8..2.4 mm.
HEAD_THRESHOLD = 1.0  # Warped T1 (template units, 0..255) above this is inside the head.
GZIP_LEVEL = 6
CASE_RE = re.compile(r"^demo_\d+\.nii\.gz$")

DESCRIPTION = (
    "Pipeline demo, NOT a generalisation benchmark: every case is generated from ONE template "
    "anatomy (MNI ICBM152 2009a nonlinear symmetric T1 with its grey/white matter probability "
    "maps, as shipped inside nilearn) by random smooth deformations, rotation/scale, spacing "
    "jitter, bias field, gamma and noise. A nearest-class-median classifier on intensity alone "
    "already scores a high Dice (DESIGN.md section 6; see README.md), so report network Dice "
    "next to that floor."
)
REFERENCE = (
    "Fonov et al., NeuroImage 47 (2009) S102 and NeuroImage 54 (2011) 313-327; "
    "http://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009 ; files from nilearn"
)
LICENCE = (
    "Derived from the MNI ICBM152 2009 template, Copyright (C) 1993-2009 Louis Collins, McConnell "
    "Brain Imaging Centre, Montreal Neurological Institute, McGill University; see the MNI page "
    "for its terms (nilearn lists the licence as unknown)"
)


class Template(NamedTuple):
    """The template on a regular grid: T1 in 0..255, GM/WM probabilities in [0, 1]."""

    t1: np.ndarray  # (x, y, z) float32
    gm: np.ndarray  # (x, y, z) float32
    wm: np.ndarray  # (x, y, z) float32
    affine: np.ndarray  # (4, 4) diagonal, mm


def template_paths() -> dict[str, str]:
    """Paths of the T1, GM and WM template files inside the installed nilearn."""
    from nilearn import datasets  # Deferred: importing nilearn costs about a second.

    root = os.path.join(os.path.dirname(datasets.__file__), "data")
    return {k: os.path.join(root, v) for k, v in TEMPLATE_FILES.items()}


def load_template(spacing: float = 1.8) -> Template:
    """Loads the nilearn MNI template and downsamples it (linear) to about `spacing` mm.

    Args:
      spacing: target grid spacing in mm; the exact step per axis keeps the 1 mm field of view.

    Returns:
      A `Template`; `affine` maps its voxels to the template's world (mm) coordinates.
    """
    volumes = {}
    for key, path in template_paths().items():
        img = nib.load(path)
        affine, in_shape = img.affine, np.array(img.shape)
        data = np.asarray(img.dataobj, dtype=np.float32)
        volumes[key] = ndimage.zoom(data, 1.0 / spacing, order=1).astype(np.float32)
    if not np.allclose(affine[:3, :3], np.diag(np.diag(affine)[:3])):
        raise ValueError("Expected a diagonal template affine.")
    out_shape = np.array(volumes["t1"].shape)
    step = np.diag(affine)[:3] * (in_shape - 1) / (out_shape - 1)  # zoom maps corner to corner.
    new_affine = np.diag([*step, 1.0])
    new_affine[:3, 3] = affine[:3, 3]
    gm = np.clip(volumes["gm"] / 255.0, 0.0, 1.0)
    wm = np.clip(volumes["wm"] / 255.0, 0.0, 1.0)
    return Template(t1=np.clip(volumes["t1"], 0.0, None), gm=gm, wm=wm, affine=new_affine)


def _zoom_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix that applies `ndimage.zoom(order=3)` along one axis."""
    return ndimage.zoom(np.eye(n_in), (n_out / n_in, 1.0), order=3)


def smooth_field(coarse: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Upsamples a coarse 3D grid to `shape`, equal to `ndimage.zoom(coarse, ., order=3)`.

    Cubic-spline zoom is separable, so it is applied as three 1D matrices (about 20x faster).
    """
    mats = [_zoom_matrix(n_in, n_out) for n_in, n_out in zip(coarse.shape, shape, strict=True)]
    return np.einsum("ai,bj,ck,ijk->abc", *mats, coarse, optimize=True)


def random_deformation(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    *,
    control_points: int = 6,
    sigma_mm: float = 2.5,
    max_mm: float = 6.0,
) -> np.ndarray:
    """Smooth random displacement field: normal values on a coarse grid, cubic upsampling.

    Args:
      rng: NumPy generator.
      shape: (x, y, z) of the grid the field lives on.
      control_points: coarse grid size per axis.
      sigma_mm: standard deviation of the coarse displacements (mm).
      max_mm: coarse displacements are clipped to +-max_mm.

    Returns:
      (3, x, y, z) float64 displacement in mm.
    """
    coarse = rng.normal(0.0, sigma_mm, size=(3,) + (control_points,) * 3)
    coarse = np.clip(coarse, -max_mm, max_mm)
    return np.stack([smooth_field(c, shape) for c in coarse])


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix Rz @ Ry @ Rx for angles (radians) about x, y, z."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_affine(
    rng: np.random.Generator,
    *,
    max_rotation_deg: float = 8.0,
    max_scale: float = 0.08,
    max_shift_mm: float = 4.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Small random rotation times per-axis scale, and a shift; returns ((3, 3), (3,) mm)."""
    angles = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, size=3))
    scale = rng.uniform(1.0 - max_scale, 1.0 + max_scale, size=3)
    shift = rng.uniform(-max_shift_mm, max_shift_mm, size=3)
    return _rotation(angles) @ np.diag(scale), shift


def case_grid(
    rng: np.random.Generator, template: Template, spacing: float
) -> tuple[tuple[int, int, int], np.ndarray]:
    """Draws per-axis spacing around `spacing`; returns the grid covering the template FOV.

    Returns:
      (shape, affine): the case's (x, y, z) and its diagonal (4, 4) affine (template origin).
    """
    lo, hi = SPACING_JITTER
    case_spacing = rng.uniform(lo * spacing, hi * spacing, size=3)
    extent = (np.array(template.t1.shape) - 1) * np.diag(template.affine)[:3]
    shape = tuple(int(n) for n in np.floor(extent / case_spacing + 1e-6) + 1)
    affine = np.diag([*case_spacing, 1.0])
    affine[:3, 3] = template.affine[:3, 3]
    return shape, affine


def sampling_coordinates(
    shape: tuple[int, int, int],
    affine: np.ndarray,
    template_affine: np.ndarray,
    matrix: np.ndarray,
    shift: np.ndarray,
    disp: np.ndarray,
) -> np.ndarray:
    """Template voxel coordinates (3, x, y, z) read by each voxel of the case grid.

    World point p of a case voxel reads the template at q = c + matrix @ (p - c) + shift + disp(p),
    c being the grid centre. Spatial warp and resampling thus cost a single interpolation.
    """
    spacing, origin = np.diag(affine)[:3], affine[:3, 3]
    center = origin + (np.array(shape) - 1) * spacing / 2
    axes = [origin[k] + spacing[k] * np.arange(n) - center[k] for k, n in enumerate(shape)]
    axes = [axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]]
    t_step, t_origin = np.diag(template_affine)[:3], template_affine[:3, 3]
    coords = np.empty((3, *shape))
    for j in range(3):
        q = disp[j] + (center[j] + shift[j])
        q += matrix[j, 0] * axes[0] + matrix[j, 1] * axes[1] + matrix[j, 2] * axes[2]
        coords[j] = (q - t_origin[j]) / t_step[j]
    return coords


def warp(volume: np.ndarray, coords: np.ndarray, order: int = 1) -> np.ndarray:
    """Samples `volume` at `coords` (3, x, y, z); outside the volume reads 0."""
    out = ndimage.map_coordinates(volume, coords, order=order, mode="constant", cval=0.0)
    return out.astype(np.float32)


def labels_from_probs(gm: np.ndarray, wm: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """argmax over (1 - gm - wm clipped, gm, wm) inside `mask`, 0 outside; uint8 (x, y, z)."""
    background = np.clip(1.0 - gm - wm, 0.0, 1.0)
    label = np.argmax(np.stack([background, gm, wm]), axis=0).astype(np.uint8)
    return np.where(mask, label, 0).astype(np.uint8)


def intensity_augment(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Gamma and contrast change, smooth bias field (+-18%) and noise, all inside `mask`.

    Args:
      rng: NumPy generator.
      image: (x, y, z) non-negative intensities.
      mask: (x, y, z) bool head mask; the output is exactly 0 outside it and nonzero inside.

    Returns:
      (x, y, z) float32 image.
    """
    top = float(image[mask].max())
    gamma = rng.uniform(0.7, 1.4)
    contrast = rng.uniform(0.75, 1.33)
    out = top * contrast * (np.clip(image, 0.0, None) / top) ** gamma
    log_bias = smooth_field(rng.normal(0.0, 0.1, size=(4, 4, 4)), image.shape)
    out = out * np.exp(np.clip(log_bias, -0.18, 0.18))
    noise_sd = rng.uniform(0.01, 0.04) * float(out[mask].max())
    inside = out[mask] + rng.normal(0.0, noise_sd, size=int(mask.sum()))
    result = np.zeros(image.shape, np.float32)
    result[mask] = np.maximum(inside, 1e-3 * top)  # Keeps every head voxel nonzero.
    return result


def split_hemispheres(label: np.ndarray, left: np.ndarray) -> np.ndarray:
    """Tissue labels (0 bg, 1 GM, 2 WM) -> 0 bg, 1 left GM, 2 right GM, 3 WM; uint8."""
    out = np.zeros_like(label)
    out[(label == 1) & left] = 1
    out[(label == 1) & ~left] = 2
    out[label == 2] = 3
    return out


def template_left(template: Template) -> np.ndarray:
    """float32 (x, y, z): 1 where the template's world x < 0 (RAS: the left side)."""
    x_world = template.affine[0, 0] * np.arange(template.t1.shape[0]) + template.affine[0, 3]
    return np.broadcast_to((x_world < 0)[:, None, None], template.t1.shape).astype(np.float32)


def make_case(
    template: Template, rng: np.random.Generator, spacing: float = 2.0, task: str = "tissue"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One random case from the template.

    Args:
      template: from `load_template`.
      rng: NumPy generator; the case is a pure function of its state.
      spacing: nominal case spacing in mm (jittered per axis, see `SPACING_JITTER`).

    Returns:
      (image, label, affine): float32 (x, y, z), uint8 (x, y, z) and the shared (4, 4) affine.
    """
    shape, affine = case_grid(rng, template, spacing)
    matrix, shift = random_affine(rng)
    disp = random_deformation(rng, shape)
    coords = sampling_coordinates(shape, affine, template.affine, matrix, shift, disp)
    t1 = warp(template.t1, coords)
    mask = t1 > HEAD_THRESHOLD
    label = labels_from_probs(warp(template.gm, coords), warp(template.wm, coords), mask)
    image = intensity_augment(rng, t1, mask)
    if task == "hemispheres":  # Drawn after everything else: the same cases as "tissue".
        label = split_hemispheres(label, warp(template_left(template), coords) > 0.5)
    return image, label, affine


def median_floor_dice(image: np.ndarray, label: np.ndarray, num_classes: int = 3) -> np.ndarray:
    """Dice per class of a nearest-class-median classifier on intensity (DESIGN.md section 6).

    The class medians come from the case's own labels (an optimistic floor). Voxels where the
    image is 0 are predicted background. Returns (num_classes,) float64; NaN for absent classes.
    """
    inside = image != 0
    values, truth = image[inside], label[inside].astype(np.int64)
    medians = np.array(
        [
            np.median(values[truth == k]) if np.any(truth == k) else np.inf
            for k in range(num_classes)
        ]
    )
    pred = np.argmin(np.abs(values[:, None] - medians[None, :]), axis=1)
    dice = np.full(num_classes, np.nan)
    for k in range(num_classes):
        denom = np.sum(pred == k) + np.sum(truth == k)
        if denom:
            dice[k] = 2.0 * np.sum((pred == k) & (truth == k)) / denom
    return dice


def _nifti_gz_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """Gzipped NIfTI-1 bytes; mtime 0 and no file name in the gzip header, so deterministic."""
    img = nib.Nifti1Image(array, affine)
    img.set_data_dtype(array.dtype)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=GZIP_LEVEL, mtime=0)


def _dataset_json(names: list[str], task: str = "tissue") -> dict:
    """The MSD dataset.json for training cases `names` (file names, e.g. demo_000.nii.gz)."""
    name, labels = TASKS[task]
    return {
        "name": name,
        "description": DESCRIPTION,
        "reference": REFERENCE,
        "licence": LICENCE,
        "tensorImageSize": "3D",
        "modality": {"0": "T1"},
        "labels": dict(labels),
        "numTraining": len(names),
        "numTest": 0,
        "training": [{"image": f"./imagesTr/{n}", "label": f"./labelsTr/{n}"} for n in names],
        "test": [],
    }


def _readme(num_cases: int, seed: int, spacing: float, floor: np.ndarray,
            task: str = "tissue") -> str:
    """README.md text: what the data is, and the intensity-only Dice floor to report beside."""
    lo, hi = (f * spacing for f in SPACING_JITTER)
    name, labels = TASKS[task]
    floors = ", ".join(f"{labels[str(k)]} {floor[k]:.3f}" for k in range(1, len(labels)))
    if task == "hemispheres":
        return f"""# {name}: spatial context needed, one anatomy

{num_cases} cases in MSD layout, written by `python -m jaxnas.data.demo --task=hemispheres`
with seed {seed} and spacing {spacing:g} mm: the very cases of the tissue demo (same seed,
same transforms: a smooth deformation, rotation/scale/shift, spacing {lo:.2f}-{hi:.2f} mm,
bias field, gamma/contrast and noise) with grey matter split at the template's midline
(world x < 0 is left). Labels: 0 background, 1 left grey matter, 2 right grey matter,
3 white matter. Left and right grey matter look the same: only their position tells them
apart, so no left/right flips may be used as augmentation.

**The intensity-only floor.** The nearest-class-median rule of the tissue demo scores
{floors} (mean over these cases). The two sides' grey-matter medians are nearly equal,
so the rule splits grey matter by noise, not by side: about half right per side. Every case is the same anatomy under different
transforms: a pipeline and context check, not a measure of generalisation to new subjects.
"""
    return f"""# Demo_BrainTissue: a pipeline demo, not a benchmark

{num_cases} cases in Medical Segmentation Decathlon layout (`dataset.json`, `imagesTr/`,
`labelsTr/`), written by `python -m jaxnas.data.demo` with seed {seed} and spacing {spacing:g} mm.

**Every case is the same anatomy.** All cases are generated from ONE template, the MNI ICBM152
2009a nonlinear symmetric T1 with its grey/white matter probability maps (the files that ship
inside nilearn, nothing downloaded), by random transforms: a smooth deformation (6^3 control
points, a few mm), a small rotation/scale/shift, a per-axis spacing of {lo:.2f}-{hi:.2f} mm, a
smooth multiplicative bias field (+-18%), a gamma/contrast change and Gaussian noise inside the
head (background is exactly 0). Use it to check that the pipeline runs end to end, NOT to
measure how well a network generalises to new subjects. The template is exactly left/right
symmetric, so never split it left/right (DESIGN.md section 6).

Labels: 0 background (including CSF and everything outside the brain), 1 grey matter,
2 white matter (argmax of the warped probability maps).

**Intensity alone is a strong baseline.** A nearest-class-median classifier on the image
intensity (class medians taken from each case's own labels) scores, averaged over these cases,
Dice grey matter {floor[1]:.3f}, white matter {floor[2]:.3f} (background inside the head
{floor[0]:.3f}). DESIGN.md section 6 measured 0.93 / 0.96 for GM / WM on the clean template.
Report any network's Dice next to this floor.
"""


def _remove_stale(out_dir: str, keep: set[str]) -> None:
    """Removes demo_*.nii.gz case files left by an earlier, larger build."""
    for sub in ("imagesTr", "labelsTr"):
        for name in os.listdir(os.path.join(out_dir, sub)):
            if CASE_RE.match(name) and name not in keep:
                os.remove(os.path.join(out_dir, sub, name))


def _write_cases(
    out_dir: str, template: Template, num_cases: int, seed: int, spacing: float,
    task: str = "tissue"
) -> tuple[list[str], np.ndarray]:
    """Makes and writes the image/label pairs; returns file names and the mean median floor."""
    names, floors = [], []
    num_classes = len(TASKS[task][1])
    for i in range(num_cases):
        image, label, affine = make_case(template, np.random.default_rng((seed, i)), spacing,
                                         task)
        names.append(f"demo_{i:03d}.nii.gz")
        for sub, array in (("imagesTr", image), ("labelsTr", label)):
            fileio.write_atomic(os.path.join(out_dir, sub, names[-1]), _nifti_gz_bytes(array, affine))
        floors.append(median_floor_dice(image, label, num_classes))
        logging.info(
            "Wrote %s: shape %s, spacing %s mm.",
            names[-1],
            image.shape,
            np.round(np.diag(affine)[:3], 3).tolist(),
        )
    return names, np.nanmean(np.array(floors), axis=0)


def _prepare_out_dir(out_dir: str, overwrite: bool) -> str:
    """Refuses (or, with `overwrite`, unpublishes) an existing build; returns dataset.json path."""
    json_path = os.path.join(out_dir, "dataset.json")
    if os.path.exists(json_path):
        if not overwrite:
            raise FileExistsError(f"{json_path} exists; pass overwrite=True (--overwrite).")
        os.remove(json_path)  # An interrupted rebuild must not look complete.
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    return json_path


def build_demo(
    out_dir: str,
    num_cases: int = 12,
    seed: int = 0,
    spacing: float = 2.0,
    template_spacing: float | None = None,
    overwrite: bool = False,
    task: str = "tissue",
) -> str:
    """Writes the demo task to `out_dir`; dataset.json is written last.

    Args:
      out_dir: task folder; created if missing.
      num_cases: number of training cases.
      seed: case i uses `np.random.default_rng((seed, i))`; same seed, same bytes.
      spacing: nominal case spacing in mm (tests use 6 for ~33x39x32 volumes).
      template_spacing: template grid in mm; default the finest case spacing, 0.9 * spacing.
      overwrite: replace an existing build; otherwise an existing dataset.json is an error.
      task: "tissue" (GM / WM) or "hemispheres" (left / right GM, WM: needs context).

    Returns:
      Path of the written dataset.json.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    if num_cases < 1 or seed < 0 or spacing <= 0:
        raise ValueError(
            f"Need num_cases >= 1, seed >= 0, spacing > 0; got {num_cases}, {seed}, {spacing}."
        )
    json_path = _prepare_out_dir(out_dir, overwrite)
    template = load_template(template_spacing or SPACING_JITTER[0] * spacing)
    names, floor = _write_cases(out_dir, template, num_cases, seed, spacing, task)
    _remove_stale(out_dir, set(names))
    fileio.write_atomic(
        os.path.join(out_dir, "README.md"),
        _readme(num_cases, seed, spacing, floor, task).encode()
    )
    fileio.write_atomic(json_path,
                        (json.dumps(_dataset_json(names, task), indent=2) + "\n").encode())
    logging.info("Intensity-median floor Dice %s; wrote %s.",
                 np.round(floor[1:], 3).tolist(), json_path)
    return json_path


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description="Build the MSD-format MNI-template demo task.")
    parser.add_argument("--out", required=True, help="Task folder to write.")
    parser.add_argument("--num_cases", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spacing", type=float, default=2.0, help="Nominal spacing (mm).")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing build.")
    parser.add_argument("--task", default="tissue", choices=sorted(TASKS),
                        help="tissue: GM / WM; hemispheres: left / right GM and WM.")
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.INFO)
    start = time.perf_counter()
    try:
        path = build_demo(
            args.out, args.num_cases, args.seed, args.spacing, overwrite=args.overwrite,
            task=args.task)
    except (FileExistsError, ValueError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
    logging.info("Built %s in %.1f s.", path, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
