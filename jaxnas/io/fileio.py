"""Atomic file writes: a reader (or a resumed run) never sees a half-written file."""

import json
import os
import sys
import tempfile

import numpy as np


def _to_json(obj):
    """json.dump fallback for numpy / jax scalars and arrays."""
    if hasattr(obj, "tolist"):
        return np.asarray(obj).tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def is_primary() -> bool:
    """False on processes 1, 2, ... of a multi-process run: a run's outputs are process 0's
    to write (orbax checkpoints are written by all together). Without jax: True."""
    jax = sys.modules.get("jax")
    return jax is None or jax.process_index() == 0


def write_atomic(path: str, data: bytes | str, *, every_process: bool = False) -> None:
    """Writes to a hidden temporary file next to `path`, then renames it onto `path`.

    Only process 0 writes unless `every_process` (per-machine files such as the cache).
    """
    if not every_process and not is_primary():
        return
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


def write_json(path: str, obj, *, every_process: bool = False) -> None:
    write_atomic(path, json.dumps(obj, indent=1, default=_to_json) + "\n",
                 every_process=every_process)
