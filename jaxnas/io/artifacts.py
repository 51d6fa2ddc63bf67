"""What a finished run leaves for `predict`: the model, its params and the inference plan.

    <workdir>/model.json   models.py description (architecture, channels, classes, width)
    <workdir>/plan.json    preprocessing and sliding-window settings (predict.py `plan`)
    <workdir>/final/       the trained params (orbax), compact: one op per edge

Written last by `search` and `train`, so a work dir that holds them holds a usable model.
"""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxnas import config as config_lib
from jaxnas import models
from jaxnas.io import fileio


def make_plan(config: config_lib.Config, *, spacing, num_channels: int, labels: dict,
              intensity=None) -> dict:
    """The inference plan of a run: how a new image is preprocessed and swept."""
    plan = {
        "target_spacing": [float(s) for s in spacing],
        "image_order": config.data.image_order,
        "num_channels": num_channels,
        "num_classes": len(labels),
        "patch_size": list(config.data.patch_size),
        "overlap": config.eval.overlap,
        "gaussian": config.eval.gaussian,
        "mirror": config.eval.mirror,
        "batch_size": config.eval.batch_size,
        "labels": {str(k): v for k, v in sorted(labels.items())},
    }
    if intensity is not None:  # CT channels: the training set's statistics (preprocess.py).
        plan["intensity"] = intensity
    return plan


def _host_copy(x):
    """A params leaf as one host array: a mesh run's replicated params are saved without
    their device layout, so predict loads them on any device count."""
    if isinstance(x, jax.Array) and x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def save(workdir: str, description: dict, params, plan: dict) -> None:
    path = os.path.join(os.path.abspath(workdir), "final")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, jax.tree.map(_host_copy, params), force=True)
    checkpointer.wait_until_finished()
    fileio.write_json(os.path.join(workdir, "plan.json"), plan)
    fileio.write_json(os.path.join(workdir, "model.json"), description)  # Last: complete.


def load(workdir: str, *, impl: str):
    """(Model, params, plan, description) of a finished run; FileNotFoundError if none."""
    paths = [os.path.join(workdir, n) for n in ("model.json", "plan.json", "final")]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(
            f"{workdir} holds no finished search or train run (missing {missing[0]}); "
            "run --mode=search or --mode=train with this --workdir first")
    with open(paths[0]) as f:
        description = json.load(f)
    with open(paths[1]) as f:
        plan = json.load(f)
    model = models.build(description, impl=impl)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                            jax.eval_shape(model.init, jax.random.key(0)))
    try:
        params = ocp.StandardCheckpointer().restore(os.path.abspath(paths[2]), abstract)
    except (ValueError, KeyError, TypeError) as e:  # orbax's tree or shape mismatch
        raise ValueError(
            f"{paths[2]}: its params do not fit the network {paths[0]} describes (saved by "
            f"another jaxnas version, or the files were mixed): {str(e).splitlines()[0][:200]}"
        ) from None
    return model, params, plan, description
