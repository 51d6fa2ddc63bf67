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


def settings_key(dataset: msd.Dataset, spacing, image_order: int) -> dict:
    return {"version": CACHE_VERSION, "spacing": [round(float(s), 6) for s in spacing],
            "image_order": int(image_order), "modalities": list(dataset.modalities),
            "labels": {str(k): v for k, v in dataset.labels.items()}}


def cache_folder(cache_dir: str, dataset: msd.Dataset, settings: dict) -> str:
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    safe_name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in dataset.name)
    return os.path.join(cache_dir, f"{safe_name}-{digest}")


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


def _write_case(folder, dataset, case, header, target_spacing, image_order) -> None:
    image, label, _ = msd.load_case(dataset, case)
    image, label, meta = preprocess.preprocess_case(image, label, header.spacing,
                                                    target_spacing, image_order=image_order)
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
      (list of PreparedCase in dataset order, the cache subfolder, the target spacing).
    """
    headers = [msd.check_headers(dataset, case) for case in dataset.cases]
    if spacing is None:
        spacing = preprocess.median_spacing([h.spacing for h in headers])
    spacing = tuple(float(s) for s in spacing)
    settings = settings_key(dataset, spacing, image_order)
    folder = cache_folder(cache_dir, dataset, settings)
    os.makedirs(folder, exist_ok=True)
    fileio.write_json(os.path.join(folder, "settings.json"), settings, every_process=True)
    cases, start, fresh = [], time.time(), 0
    for i, (case, header) in enumerate(zip(dataset.cases, headers)):
        prepared = _load_cached(folder, case)
        if prepared is None:
            _write_case(folder, dataset, case, header, spacing, image_order)
            prepared, fresh = _load_cached(folder, case), fresh + 1
            logging.info("preprocessed %s (%d/%d)", case.case_id, i + 1, len(dataset.cases))
        cases.append(prepared)
    logging.info("cache %s: %d cases preprocessed, %d reused, %.1f s", folder, fresh,
                 len(cases) - fresh, time.time() - start)
    return cases, folder, spacing
