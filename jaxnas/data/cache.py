"""The preprocessing shell: validate an MSD task, preprocess each case once, cache it.

Layout: `cache_dir/<dataset name>-<settings hash>/` holds `settings.json` and per case
`<id>_image.npy` (float32 (x, y, z, c)), `<id>_label.npy` (uint8 (x, y, z)),
`<id>_fg.npz` (foreground voxel coordinates per class) and `<id>.json` (metadata). The hash
covers every setting that changes the arrays, so changed settings never reuse a stale
cache. Each file is written under a temporary name and renamed; `<id>.json` is written last
and records the source files' size and mtime, so a case is trusted only when complete and
when its NIfTI files have not changed since.
"""

import dataclasses
import hashlib
import json
import io
import os
import time

import numpy as np
from absl import logging

from jaxnas.data import msd
from jaxnas.data import preprocess
from jaxnas.io import fileio

# Bump when the preprocessing code changes what it writes, so old caches are not trusted.
CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class PreparedCase:
    """A preprocessed case; image and label are read-only memory maps."""

    case_id: str
    image: np.ndarray
    label: np.ndarray
    fg_locations: dict[int, np.ndarray]
    meta: dict


def _fingerprint(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def settings_key(dataset: msd.Dataset, spacing, image_order: int, intensity=None) -> dict:
    settings = {"version": CACHE_VERSION, "spacing": [round(float(s), 6) for s in spacing],
                "image_order": int(image_order), "modalities": list(dataset.modalities),
                "labels": {str(k): v for k, v in dataset.labels.items()}}
    if intensity is not None:  # CT channels only: MR caches keep their folder.
        settings["intensity"] = intensity
    return settings


def intensity_of(folder: str):
    """The CT statistics per channel a cache folder was normalised with (None: no CT)."""
    with open(os.path.join(folder, "settings.json")) as f:
        return json.load(f).get("intensity")


def _safe_name(dataset: msd.Dataset) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in dataset.name)


def dataset_intensity(dataset: msd.Dataset, cache_dir: str):
    """Per channel: CT normalisation statistics (`preprocess.intensity_stats`) from the
    foreground voxels of every case, or None for the other modalities; None when no
    channel is CT. Kept in `cache_dir/<name>-intensity.json` while the case files and
    modalities are unchanged, so a rerun does not read every case twice."""
    ct = [preprocess.is_ct(m) for m in dataset.modalities]
    if not any(ct):
        return None
    sources = [[_fingerprint(c.image_path), _fingerprint(c.label_path)] for c in dataset.cases]
    path = os.path.join(cache_dir, f"{_safe_name(dataset)}-intensity.json")
    try:
        with open(path) as f:
            stored = json.load(f)
        if stored["sources"] == sources and stored["modalities"] == list(dataset.modalities):
            return stored["intensity"]
    except (OSError, KeyError, json.JSONDecodeError):
        pass
    start = time.time()
    samples = []
    for i, case in enumerate(dataset.cases):
        image, label, _ = msd.load_case(dataset, case)
        samples.append(preprocess.foreground_intensities(image, label, seed=i))
    samples = np.concatenate(samples)
    if not len(samples):
        raise msd.DataError(f"{dataset.root}: no case has a foreground voxel to take the CT "
                            "intensity statistics from")
    intensity = [preprocess.intensity_stats(samples[:, c]) if is_ct else None
                 for c, is_ct in enumerate(ct)]
    logging.info("CT intensity statistics from %d foreground voxels of %d cases (%.1f s): %s",
                 len(samples), len(dataset.cases), time.time() - start, intensity)
    os.makedirs(cache_dir, exist_ok=True)
    fileio.write_json(path, {"sources": sources, "modalities": list(dataset.modalities),
                             "intensity": intensity}, every_process=True)
    return intensity


def cache_folder(cache_dir: str, dataset: msd.Dataset, settings: dict) -> str:
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return os.path.join(cache_dir, f"{_safe_name(dataset)}-{digest}")


def _npy_bytes(save_fn, *args, **kwargs) -> bytes:
    buf = io.BytesIO()
    save_fn(buf, *args, **kwargs)
    return buf.getvalue()


def _load_cached(folder: str, case: msd.Case) -> PreparedCase | None:
    """The cached case if complete and made from the current source files, else None."""
    meta_path = os.path.join(folder, case.case_id + ".json")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        if meta["source"] != [_fingerprint(case.image_path), _fingerprint(case.label_path)]:
            return None
        image = np.load(os.path.join(folder, case.case_id + "_image.npy"), mmap_mode="r")
        label = np.load(os.path.join(folder, case.case_id + "_label.npy"), mmap_mode="r")
        with np.load(os.path.join(folder, case.case_id + "_fg.npz")) as fg:
            fg_locations = {int(k): fg[k] for k in fg.files}
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None
    if list(image.shape[:3]) != meta["shape"] or list(label.shape) != meta["shape"]:
        return None
    return PreparedCase(case.case_id, image, label, fg_locations, meta)


def _write_case(folder, dataset, case, header, target_spacing, image_order, intensity) -> None:
    image, label, _ = msd.load_case(dataset, case)
    image, label, meta = preprocess.preprocess_case(image, label, header.spacing,
                                                    target_spacing, image_order=image_order,
                                                    intensity=intensity)
    fg = preprocess.foreground_locations(label)
    stem = os.path.join(folder, case.case_id)
    fileio.write_atomic(stem + "_image.npy", _npy_bytes(np.save, image), every_process=True)
    fileio.write_atomic(stem + "_label.npy", _npy_bytes(np.save, label), every_process=True)
    fg_arrays = {str(k): v for k, v in fg.items()}
    fileio.write_atomic(stem + "_fg.npz", _npy_bytes(np.savez, **fg_arrays), every_process=True)
    meta.update(case_id=case.case_id, spacing=list(target_spacing),
                original_spacing=list(header.spacing), original_shape=list(header.shape),
                original_affine=header.affine.tolist(), image_path=case.image_path,
                source=[_fingerprint(case.image_path), _fingerprint(case.label_path)])
    # Last: its presence marks the case complete. Every process: caches are per machine.
    fileio.write_json(stem + ".json", meta, every_process=True)


def prepare_dataset(dataset: msd.Dataset, cache_dir: str, *, spacing=None, image_order=3):
    """Validates every case's headers, then preprocesses (or reuses) each case.

    Args:
      dataset: from `msd.read_dataset`.
      cache_dir: root of the cache; a subfolder per dataset and settings is used.
      spacing: target voxel spacing in mm; None takes the median of the training cases.
      image_order: spline order for image resampling.
    Returns:
      (list of PreparedCase in dataset order, the cache subfolder, the target spacing);
      `intensity_of(subfolder)` gives the CT statistics the cases were normalised with.
    """
    headers = [msd.check_headers(dataset, case) for case in dataset.cases]
    if spacing is None:
        spacing = preprocess.median_spacing([h.spacing for h in headers])
    spacing = tuple(float(s) for s in spacing)
    intensity = dataset_intensity(dataset, cache_dir)
    settings = settings_key(dataset, spacing, image_order, intensity)
    folder = cache_folder(cache_dir, dataset, settings)
    os.makedirs(folder, exist_ok=True)
    fileio.write_json(os.path.join(folder, "settings.json"), settings, every_process=True)
    cases, start, fresh = [], time.time(), 0
    for i, (case, header) in enumerate(zip(dataset.cases, headers)):
        prepared = _load_cached(folder, case)
        if prepared is None:
            _write_case(folder, dataset, case, header, spacing, image_order, intensity)
            prepared, fresh = _load_cached(folder, case), fresh + 1
            logging.info("preprocessed %s (%d/%d)", case.case_id, i + 1, len(dataset.cases))
        cases.append(prepared)
    logging.info("cache %s: %d cases preprocessed, %d reused, %.1f s", folder, fresh,
                 len(cases) - fresh, time.time() - start)
    return cases, folder, spacing
