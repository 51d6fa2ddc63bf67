"""Reading and validating a Medical Segmentation Decathlon (MSD) task folder.

The folder is driven by its `dataset.json`, never by globbing (extracted archives carry
`._*` side-car files). Paths such as `./imagesTr/x.nii.gz` resolve against the JSON's folder.
Images are 3D or 4D NIfTI, the last axis of a 4D image being the modality; arrays come back
channels-last `(x, y, z, c)` in nibabel voxel order, float32; labels `(x, y, z)` uint8.

Every problem is raised as `DataError` with a message that names the file and what is wrong,
so the command line can print one line instead of a library traceback.
"""

import dataclasses
import gzip
import json
import os
import zlib

import nibabel as nib
import numpy as np

from jaxnas.errors import DataError  # Raised here; callers catch it as msd.DataError.

# Voxel-to-world matrices of an image and its label may differ by rounding only.
_AFFINE_ATOL = 1e-3


@dataclasses.dataclass(frozen=True)
class Case:
    case_id: str
    image_path: str
    label_path: str


@dataclasses.dataclass(frozen=True)
class Dataset:
    root: str
    name: str
    modalities: tuple[str, ...]
    labels: dict[int, str]
    cases: tuple[Case, ...]
    test_images: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1


@dataclasses.dataclass(frozen=True)
class CaseHeader:
    """What the NIfTI headers of a case say, read without loading voxels."""

    shape: tuple[int, int, int]
    num_channels: int
    spacing: tuple[float, float, float]
    affine: np.ndarray


def _case_id(path: str) -> str:
    name = os.path.basename(path)
    for ending in (".nii.gz", ".nii"):
        if name.endswith(ending):
            return name[: -len(ending)]
    return name


def _parse_modalities(meta: dict, path: str) -> tuple[str, ...]:
    # MSD says "modality"; nnU-Net v2 says "channel_names". Keys are "0", "1", ...
    entry = meta.get("modality", meta.get("channel_names"))
    if not isinstance(entry, dict) or not entry:
        raise DataError(f"{path}: needs a 'modality' (or 'channel_names') object like "
                        '{"0": "T1"}')
    try:
        keys = sorted(int(k) for k in entry)
    except ValueError as e:
        raise DataError(f"{path}: 'modality' keys must be channel numbers: {e}") from None
    if keys != list(range(len(keys))):
        raise DataError(f"{path}: 'modality' keys must be 0..{len(keys) - 1}, got {keys}")
    return tuple(str(entry[str(k)]) for k in keys)


def _parse_labels(meta: dict, path: str) -> dict[int, str]:
    entry = meta.get("labels")
    if not isinstance(entry, dict) or not entry:
        raise DataError(f"{path}: needs a 'labels' object like "
                        '{"0": "background", "1": "tumour"}')
    labels = {}
    for key, value in entry.items():
        # MSD maps value -> name; nnU-Net v2 maps name -> value.
        number, name = (key, value) if not isinstance(value, int) else (value, key)
        try:
            labels[int(number)] = str(name)
        except (TypeError, ValueError):
            raise DataError(f"{path}: label {key!r}: {value!r} is not an integer class "
                            "(region labels are not supported)") from None
    if 0 not in labels:
        raise DataError(f"{path}: 'labels' must declare 0 (background)")
    return dict(sorted(labels.items()))


def _parse_training(meta: dict, path: str, root: str) -> tuple[Case, ...]:
    entries = meta.get("training")
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{path}: needs a non-empty 'training' list of "
                        '{"image": ..., "label": ...} entries')
    cases, seen = [], set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise DataError(f"{path}: training[{i}] must have 'image' and 'label'")
        image = os.path.normpath(os.path.join(root, entry["image"]))
        label = os.path.normpath(os.path.join(root, entry["label"]))
        case_id = _case_id(image)
        if case_id in seen:
            raise DataError(f"{path}: training[{i}] repeats case {case_id!r}")
        seen.add(case_id)
        cases.append(Case(case_id, image, label))
    return tuple(cases)


def read_dataset(data_dir: str) -> Dataset:
    """Parses `data_dir/dataset.json`; checks its fields, not the image files."""
    path = os.path.join(data_dir, "dataset.json")
    if not os.path.isdir(data_dir):
        raise DataError(f"{data_dir}: no such folder (expected an MSD task folder)")
    if not os.path.isfile(path):
        raise DataError(f"{path}: missing; an MSD task folder holds dataset.json, "
                        "imagesTr/ and labelsTr/")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: must hold a JSON object")
    root = os.path.dirname(os.path.abspath(path))
    test = meta.get("test", [])
    # MSD lists test images as plain strings; some converters use {"image": ...}.
    test = [t["image"] if isinstance(t, dict) else t for t in test if t]
    return Dataset(
        root=root,
        name=str(meta.get("name", os.path.basename(root))),
        modalities=_parse_modalities(meta, path),
        labels=_parse_labels(meta, path),
        cases=_parse_training(meta, path, root),
        test_images=tuple(os.path.normpath(os.path.join(root, t)) for t in test),
    )


def open_nifti(path: str):
    if not os.path.isfile(path):
        raise DataError(f"{path}: listed in dataset.json but missing")
    try:
        img = nib.load(path)
    except Exception as e:  # nibabel raises many types for one cause: not a NIfTI file.
        raise DataError(f"{path}: unreadable or not NIfTI ({type(e).__name__}: {e})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(f"{path}: is a {type(img).__name__}, not NIfTI")
    return img


def read_header(path: str) -> CaseHeader:
    """Shape, channels, spacing and affine of one NIfTI file, without loading voxels."""
    img = open_nifti(path)
    shape = img.shape
    if len(shape) not in (3, 4):
        raise DataError(f"{path}: has {len(shape)} dimensions; expected 3D or 4D (x, y, z, c)")
    spacing = tuple(float(s) for s in img.header.get_zooms()[:3])
    if not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise DataError(f"{path}: invalid voxel spacing {spacing}")
    return CaseHeader(tuple(int(s) for s in shape[:3]), int(shape[3]) if len(shape) == 4 else 1,
                      spacing, np.asarray(img.affine, dtype=np.float64))


def check_headers(dataset: Dataset, case: Case) -> CaseHeader:
    """Checks a case's image against its label and dataset.json, from headers only."""
    image, label = read_header(case.image_path), read_header(case.label_path)
    if image.num_channels != len(dataset.modalities):
        raise DataError(f"{case.image_path}: has {image.num_channels} modalities, "
                        f"dataset.json declares {len(dataset.modalities)} {dataset.modalities}")
    if label.num_channels != 1:
        raise DataError(f"{case.label_path}: a label must be 3D, got shape "
                        f"{label.shape + (label.num_channels,)}")
    if image.shape != label.shape:
        raise DataError(f"{case.label_path}: shape {label.shape} differs from its image's "
                        f"{image.shape} ({case.image_path})")
    if not np.allclose(image.affine, label.affine, atol=_AFFINE_ATOL):
        raise DataError(f"{case.label_path}: affine differs from its image's "
                        f"({case.image_path}):\n{label.affine}\nvs\n{image.affine}")
    return image


def read_voxels(img, path: str, dtype) -> np.ndarray:
    try:
        return np.asarray(img.get_fdata(dtype=dtype) if dtype else img.dataobj)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as e:
        raise DataError(f"{path}: truncated or corrupt voxel data ({type(e).__name__}: {e})") \
            from None


def load_image(path: str, num_channels: int) -> np.ndarray:
    """Loads a 3D/4D NIfTI as float32 (x, y, z, c) and checks its voxel values."""
    data = read_voxels(open_nifti(path), path, np.float32)
    if data.ndim == 3:
        data = data[..., None]
    if data.shape[-1] != num_channels:
        raise DataError(f"{path}: has {data.shape[-1]} modalities, expected {num_channels}")
    if not np.all(np.isfinite(data)):
        raise DataError(f"{path}: contains {int(np.sum(~np.isfinite(data)))} NaN/Inf voxels")
    for c in range(num_channels):
        if not np.any(data[..., c]):
            raise DataError(f"{path}: modality {c} is all zero")
    return data


def load_label(path: str, labels: dict[int, str]) -> np.ndarray:
    """Loads an integer label map as uint8 (x, y, z); rejects undeclared values."""
    raw = read_voxels(open_nifti(path), path, None)
    if raw.ndim == 4 and raw.shape[-1] == 1:
        raw = raw[..., 0]
    if not np.all(np.isfinite(raw)) or np.any(raw != np.round(raw)):
        raise DataError(f"{path}: label values must be integers")
    values = np.unique(raw).astype(np.int64)
    unknown = sorted(set(values.tolist()) - set(labels))
    if unknown:
        raise DataError(f"{path}: label values {unknown} are not declared in dataset.json "
                        f"'labels' {sorted(labels)}")
    return raw.astype(np.uint8)


def load_case(dataset: Dataset, case: Case) -> tuple[np.ndarray, np.ndarray, CaseHeader]:
    """Loads and checks one training case: (image (x,y,z,c), label (x,y,z), header)."""
    header = check_headers(dataset, case)
    image = load_image(case.image_path, len(dataset.modalities))
    label = load_label(case.label_path, dataset.labels)
    return image, label, header
