"""Prediction, NIfTI in and NIfTI out: `--mode=predict --input=PATH --output=DIR`.

PATH is one NIfTI file or a folder of them. Several modalities come either as one 4D file
(last axis = modality, as in MSD) or as nnU-Net-style channel files `CASE_0000.nii.gz`,
`CASE_0001.nii.gz`, ... grouped by the case prefix. Hidden files (`._x.nii.gz`) are skipped.

The shell around the prediction core (prediction.py: preprocessing, sliding window, back
onto the input grid): `find_inputs` and `load_input` read and validate files,
`predict_files` writes for each case
`DIR/<case>.nii.gz` (uint8 labels with the input's affine and header), optionally
`<case>_probs.nii.gz` (float32 (x, y, z, k)) and `<case>.png`. Every problem is a
`DataError` naming the file; existing outputs are never overwritten unless asked.
`plan`: see prediction.py.
"""

import dataclasses
import gzip
import os
import re

import numpy as np
from absl import logging

from jaxnas import metrics
from jaxnas import prediction
from jaxnas.data import msd
from jaxnas.data.msd import DataError
from jaxnas.io import fileio
from jaxnas.io import pictures as pictures_lib

_NIFTI_ENDINGS = (".nii.gz", ".nii")
# nnU-Net channel files: CASE_XXXX with exactly four digits.
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_AFFINE_ATOL = 1e-3  # As msd: channel files may differ by rounding only.



@dataclasses.dataclass(frozen=True)
class InputInfo:
    """What an output NIfTI copies from its input (the first channel file)."""

    path: str
    affine: np.ndarray  # The image's affine as nibabel reports it (best of sform/qform).
    header: object  # A copy of the nibabel header.
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    image_class: type  # nib.Nifti1Image or nib.Nifti2Image.


# ------------------------------------------------------------------------------------------
# Finding and loading inputs (shell: reads files).


def _stem(name: str) -> str | None:
    """File name without .nii/.nii.gz; None if not a NIfTI name."""
    for ending in _NIFTI_ENDINGS:
        if name.endswith(ending) and len(name) > len(ending):
            return name[: -len(ending)]
    return None


def _nifti_names(folder: str) -> list[str]:
    return sorted(n for n in os.listdir(folder)
                  if not n.startswith(".") and _stem(n) is not None
                  and os.path.isfile(os.path.join(folder, n)))


def _group(folder: str, names: list[str]) -> dict[str, dict[int, str] | str]:
    """case id -> {channel: path} for channel files, or the path of a single file.

    `X_dddd` names are channel files of case X when `X_0000` exists; otherwise (e.g.
    AMOS's `amos_0001.nii.gz`) a name is a case of its own.
    """
    stems = {n: _stem(n) for n in names}
    matches = {n: _CHANNEL_FILE.match(s) for n, s in stems.items()}
    with_first = {m["case"] for m in matches.values() if m and m["channel"] == "0000"}
    cases = {}
    for name in names:
        path, m = os.path.join(folder, name), matches[name]
        if m and m["case"] in with_first:
            case_id, channel = m["case"], int(m["channel"])
            channels = cases.setdefault(case_id, {})
            if isinstance(channels, str) or channel in channels:
                other = channels if isinstance(channels, str) else channels[channel]
                raise DataError(f"{path}: same case/channel as {other}; keep only one")
            channels[channel] = path
        else:
            case_id = stems[name]
            if case_id in cases:
                other = cases[case_id]
                other = other if isinstance(other, str) else next(iter(other.values()))
                raise DataError(f"{path}: case {case_id!r} is also given by {other}; keep "
                                "only one")
            cases[case_id] = path
    return cases


def _channel_hint(path: str, num_channels: int) -> str:
    case = _stem(os.path.basename(path))
    m = _CHANNEL_FILE.match(case or "")
    hint = (f"; give a 4D file (last axis = modality) or channel files "
            f"CASE_0000.nii.gz ... CASE_{num_channels - 1:04d}.nii.gz")
    if m:
        hint += (f" (no {m['case']}_0000 file is next to it, so it is not read as a "
                 "channel file)")
    return hint


def _check_channel_headers(case_id: str, files: list[str]) -> msd.CaseHeader:
    """Headers of one case's files: each a single channel, all on the same grid."""
    first = msd.read_header(files[0])
    for path in files:
        header = first if path == files[0] else msd.read_header(path)
        if len(files) > 1 and header.num_channels != 1:
            raise DataError(f"{path}: a channel file of case {case_id!r} must be 3D; it has "
                            f"{header.num_channels} channels")
        if header.shape != first.shape:
            raise DataError(f"{path}: shape {header.shape} differs from {first.shape} of "
                            f"{files[0]} (same case {case_id!r})")
        if not np.allclose(header.affine, first.affine, atol=_AFFINE_ATOL):
            raise DataError(f"{path}: affine differs from that of {files[0]} (same case "
                            f"{case_id!r}):\n{header.affine}\nvs\n{first.affine}")
    return first


def _case_files(case_id: str, entry, num_channels: int, folder: str) -> list[str]:
    if isinstance(entry, str):
        header = msd.read_header(entry)
        if header.num_channels != num_channels:
            raise DataError(f"{entry}: has {header.num_channels} modalities (channels), the "
                            f"model expects {num_channels}"
                            + (_channel_hint(entry, num_channels) if num_channels > 1 else ""))
        return [entry]
    extra = sorted(c for c in entry if c >= num_channels)
    if extra:
        raise DataError(f"{entry[extra[0]]}: channel {extra[0]}, but the model expects "
                        f"{num_channels} channels ({case_id}_0000 ... "
                        f"{case_id}_{num_channels - 1:04d})")
    for c in range(num_channels):
        if c not in entry:
            raise DataError(f"{os.path.join(folder, f'{case_id}_{c:04d}.nii.gz')}: missing; "
                            f"case {case_id!r} has channel files "
                            f"{[os.path.basename(entry[k]) for k in sorted(entry)]} but the "
                            f"model expects {num_channels} ({case_id}_0000 ... "
                            f"{case_id}_{num_channels - 1:04d})")
    files = [entry[c] for c in range(num_channels)]
    _check_channel_headers(case_id, files)
    return files


def find_inputs(path: str, num_channels: int) -> list[tuple[str, list[str]]]:
    """The cases under `path`: [(case_id, [file per channel, or one 4D file])], by case id.

    Reads headers only (existence, NIfTI, channel counts, matching grids of channel files).
    A file given directly that is a channel file (`X_0000.nii.gz`) brings its siblings.
    """
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or folder (expected a NIfTI file or a folder "
                        "of them)")
    if os.path.isdir(path):
        folder, names, only = path, _nifti_names(path), None
        if not names:
            raise DataError(f"{path}: no NIfTI files (.nii or .nii.gz) in this folder")
    else:
        folder, only = os.path.dirname(path) or ".", os.path.basename(path)
        if _stem(only) is None:
            raise DataError(f"{path}: not a NIfTI file name (expected .nii or .nii.gz)")
        names = sorted(set(_nifti_names(folder)) | {only})
    cases = _group(folder, names)
    if only is not None:
        mine = os.path.join(folder, only)
        cases = {k: v for k, v in cases.items()
                 if v == mine or (isinstance(v, dict) and mine in v.values())}
    return [(case_id, _case_files(case_id, cases[case_id], num_channels, folder))
            for case_id in sorted(cases)]


def _load_channels(path: str):
    """(nibabel image, float32 voxels (x, y, z, c)) of one file."""
    img = msd.open_nifti(path)
    data = msd.read_voxels(img, path, np.float32)
    img.uncache()  # get_fdata keeps a copy otherwise.
    return img, (data[..., None] if data.ndim == 3 else data)


def load_input(files: list[str], num_channels: int) -> tuple[np.ndarray, InputInfo]:
    """Loads one case (one 4D/3D file or one file per channel) as float32 (x, y, z, c).

    Checks channel count, grids of channel files, NaN/Inf and all-zero channels; each
    error names the file. The InputInfo comes from the first file.
    """
    for path in files:
        if not os.path.isfile(path):
            raise DataError(f"{path}: missing")
    stem = _stem(os.path.basename(files[0])) or os.path.basename(files[0])
    m = _CHANNEL_FILE.match(stem) if len(files) > 1 else None
    first = _check_channel_headers(m["case"] if m else stem, files)
    channels = first.num_channels if len(files) == 1 else len(files)
    if channels != num_channels:
        raise DataError(f"{files[0]}: has {channels} modalities (channels), the model "
                        f"expects {num_channels}"
                        + (_channel_hint(files[0], num_channels) if num_channels > 1 else ""))
    parts, info = [], None
    for path in files:
        img, data = _load_channels(path)
        if info is None:
            info = InputInfo(path=path, affine=np.asarray(img.affine),
                             header=img.header.copy(), spacing=first.spacing,
                             shape=first.shape, image_class=type(img))
        if not np.all(np.isfinite(data)):
            raise DataError(f"{path}: contains {int(np.sum(~np.isfinite(data)))} NaN/Inf "
                            "voxels")
        for c in range(data.shape[-1]):
            if not np.any(data[..., c]):
                what = f"modality {c}" if data.shape[-1] > 1 else "the image"
                raise DataError(f"{path}: {what} is all zero")
        parts.append(data)
    image = np.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
    return image.astype(np.float32, copy=False), info


def override_plan(plan: dict, overrides: dict) -> dict:
    """The plan with sliding-window settings replaced; ValueError naming a bad flag."""
    plan = prediction.check_plan(plan)
    unknown = set(overrides) - {"overlap", "gaussian", "mirror", "batch_size"}
    if unknown:
        raise ValueError(f"cannot override plan keys {sorted(unknown)}")
    if "overlap" in overrides and not 0.0 <= overrides["overlap"] < 1.0:
        raise ValueError(f"--eval_overlap must be in [0, 1), got {overrides['overlap']}")
    if "batch_size" in overrides and overrides["batch_size"] < 1:
        raise ValueError(f"--eval_batch_size must be >= 1, got {overrides['batch_size']}")
    return {**plan, **overrides}


# ------------------------------------------------------------------------------------------
# Writing outputs (shell).


def nifti_bytes(data: np.ndarray, info: InputInfo, gz: bool = True) -> bytes:
    """`data` as a NIfTI file with the input's header and affine; dtype and shape updated.

    The header is copied (qform/sform and their codes, units, description); nibabel only
    rewrites shape, dtype and scaling, and it leaves the s/q-forms alone because the
    affine passed is the header's own.
    """
    header = info.header.copy()
    header.set_data_dtype(data.dtype)
    header["cal_min"], header["cal_max"] = 0, 0  # Display window of the input: unset.
    img = info.image_class(data, info.affine, header)
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=1, mtime=0) if gz else raw


def _write_new(path: str, data: bytes, overwrite: bool) -> None:
    if not overwrite and os.path.lexists(path):
        raise DataError(f"{path}: already exists; choose another --output folder (outputs "
                        "are never overwritten)")
    fileio.write_atomic(path, data)


def _label_file(label_path: str | None, case_id: str, num_cases: int) -> str | None:
    if label_path is None:
        return None
    if os.path.isfile(label_path):
        if num_cases != 1:
            raise DataError(f"{label_path}: a single label file, but the input holds "
                            f"{num_cases} cases; give a folder of <case>.nii.gz labels")
        return label_path
    if not os.path.isdir(label_path):
        raise DataError(f"{label_path}: no such label file or folder")
    for ending in _NIFTI_ENDINGS:
        candidate = os.path.join(label_path, case_id + ending)
        if os.path.isfile(candidate):
            return candidate
    raise DataError(f"{os.path.join(label_path, case_id + '.nii.gz')}: missing (no ground "
                    f"truth label for case {case_id!r})")


def output_paths(output_dir: str, case_id: str, *, save_probabilities: bool,
                 pictures: bool) -> list[str]:
    """The files `predict_files` writes for one case, in writing order."""
    stem = os.path.join(output_dir, case_id)
    return ([stem + ".nii.gz"] + ([stem + "_probs.nii.gz"] if save_probabilities else [])
            + ([stem + ".png"] if pictures else []))


def predict_files(predict_fn, input_path: str, output_dir: str, plan: dict, *,
                  save_probabilities: bool = False, pictures: bool = True,
                  overwrite: bool = False, label_path: str | None = None) -> list[str]:
    """Predicts every case under `input_path` and writes them to `output_dir`.

    Writes `<case>.nii.gz` (uint8 labels, the input's header and affine), optionally
    `<case>_probs.nii.gz` (float32 (x, y, z, k)) and `<case>.png` (orthogonal slices with
    the prediction, and the ground truth from `label_path`, a file or a folder of
    `<case>.nii.gz`, when given). Everything is checked (inputs' headers, existing outputs,
    labels) before the first prediction; each file is written atomically.
    Returns the written paths.
    """
    plan = prediction.check_plan(plan)
    num_classes = int(plan["num_classes"])
    cases = find_inputs(input_path, int(plan["num_channels"]))
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise DataError(f"{output_dir}: exists and is not a folder; choose another --output")
    input_folder = input_path if os.path.isdir(input_path) else os.path.dirname(input_path)
    if os.path.realpath(output_dir) == os.path.realpath(input_folder or "."):
        raise DataError(f"{output_dir}: is the input folder; choose another --output folder")
    label_files = {case_id: _label_file(label_path, case_id, len(cases)) for case_id, _ in cases}
    targets = {case_id: output_paths(output_dir, case_id,
                                     save_probabilities=save_probabilities, pictures=pictures)
               for case_id, _ in cases}
    every = [p for paths in targets.values() for p in paths]
    clash = sorted({p for p in every if every.count(p) > 1})
    if clash:
        raise DataError(f"{clash[0]}: two cases would write this file (a case named like "
                        "another's probability map); rename one input")
    existing = [p for p in every if os.path.lexists(p)]
    if existing and not overwrite:
        raise DataError(f"{existing[0]}: already exists ({len(existing)} of the outputs do); "
                        "choose another --output folder (outputs are never overwritten)")
    os.makedirs(output_dir, exist_ok=True)
    label_names = {int(k): str(v) for k, v in plan["labels"].items()}
    written = []
    for i, (case_id, files) in enumerate(cases):
        image, info = load_input(files, int(plan["num_channels"]))
        truth = None
        if label_files[case_id]:  # Checked before anything of this case is written.
            truth = msd.load_label(label_files[case_id], label_names)
            if truth.shape != info.shape:
                raise DataError(f"{label_files[case_id]}: shape {truth.shape} differs from "
                                f"its image's {info.shape} ({files[0]})")
        labels, probs = prediction.predict_case(predict_fn, image, info.spacing, plan)
        seg_path, *rest = targets[case_id]
        _write_new(seg_path, nifti_bytes(labels, info), overwrite)
        written.append(seg_path)
        if save_probabilities:
            probs_path = rest.pop(0)
            _write_new(probs_path, nifti_bytes(probs.astype(np.float32), info), overwrite)
            written.append(probs_path)
        dice_text = ""
        if truth is not None:
            dice = metrics.dice_per_class(labels, truth, num_classes)
            dice_text = " Dice " + " ".join(f"{label_names.get(k, k)}={dice[k]:.3f}"
                                            for k in range(1, num_classes))
        if pictures:
            png_path = rest.pop(0)
            if not overwrite and os.path.lexists(png_path):
                raise DataError(f"{png_path}: already exists; choose another --output folder")
            pictures_lib.save_case_picture(png_path, image, labels, truth, num_classes,
                                           label_names=label_names, spacing=info.spacing,
                                           title=f"{case_id}{dice_text}")
            written.append(png_path)
        logging.info("predicted %s (%d/%d) -> %s%s", case_id, i + 1, len(cases), seg_path,
                     dice_text)
    return written
