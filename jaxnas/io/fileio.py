"""Atomic file writes: a reader (or a resumed run) never sees a half-written file."""

import json
import os
import tempfile

import numpy as np


def _to_json(obj):
    """json.dump fallback for numpy / jax scalars and arrays."""
    if hasattr(obj, "tolist"):
        return np.asarray(obj).tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_atomic(path: str, data: bytes | str) -> None:
    """Writes to a hidden temporary file next to `path`, then renames it onto `path`."""
    folder, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files.
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=1, default=_to_json) + "\n")
