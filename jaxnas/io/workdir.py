"""The work-dir guard: a finished run is never redone, another run's outputs never overwritten.

A work dir holds one run: its `config.json` says which. Search and train runs checkpoint
in `<workdir>/ckpt`; an evaluate run's folds each run in `<workdir>/fold_k/` with their
own `ckpt/` and `summary.json`, so both places count as "started".
"""

import dataclasses
import glob
import json
import os

from absl import logging

from jaxnas import config as config_lib


def started(workdir: str) -> bool:
    """True once any part of a run in workdir has a checkpoint or a finished summary."""
    marks = [os.path.join(workdir, "ckpt"), os.path.join(workdir, "summary.json")]
    marks += glob.glob(os.path.join(workdir, "fold_*", "ckpt"))
    marks += glob.glob(os.path.join(workdir, "fold_*", "summary.json"))
    return any(os.path.exists(m) for m in marks)


def check(workdir: str, config: config_lib.Config) -> bool:
    """False if `workdir` holds this very run finished; raises if it holds another run.

    A finished run (summary.json) or a checkpointed one with other settings is never
    overwritten: the user picks another --workdir or deletes the old one.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path) or config.mode == "prepare":
        return True
    with open(path) as f:
        previous = json.load(f)
    current = json.loads(json.dumps(dataclasses.asdict(config)))
    # Settings added since that run was made count as their defaults.
    defaults = json.loads(json.dumps(dataclasses.asdict(config_lib.Config())))
    same = _with_defaults(previous, defaults) == current
    if started(workdir) and not same:
        raise ValueError(f"{workdir} holds a run with other settings (see its config.json); "
                         "use another --workdir, or delete that folder to start over")
    if os.path.exists(os.path.join(workdir, "summary.json")):
        logging.info("%s already holds this finished run (summary.json); nothing to do",
                     workdir)
        return False
    return True


def _with_defaults(previous, defaults):
    if not isinstance(previous, dict) or not isinstance(defaults, dict):
        return previous
    return {k: _with_defaults(previous.get(k, v), v) for k, v in defaults.items()} | {
        k: v for k, v in previous.items() if k not in defaults}
