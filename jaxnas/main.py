"""Command line: `python -m jaxnas.main --flagfile=brain.flags [--flag=value ...]`.

The only module that defines flags. Relative paths (in flags and in nested `--flagfile`)
resolve from the current directory; `run.sh` runs from `experiments/`.
"""

import dataclasses
import json
import os
import sys

from absl import app
from absl import flags
from absl import logging

from jaxnas import config as config_lib
from jaxnas.data import msd

_D = config_lib.DataConfig
_C = config_lib.Config

_MODE = flags.DEFINE_enum("mode", _C.mode, ["prepare"],
                          "prepare: validate, preprocess, cache, split and preview patches.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder that receives every output.",
                               required=True)
flags.DEFINE_string("data_dir", _D.data_dir, "MSD task folder holding dataset.json.")
flags.DEFINE_string("cache_dir", _D.cache_dir, "Preprocessed cases; empty: <workdir>/preprocessed.")
flags.DEFINE_list("spacing", [], "Target spacing x,y,z in mm; empty: median of the cases.")
flags.DEFINE_integer("image_order", _D.image_order, "Spline order of image resampling.")
flags.DEFINE_list("patch_size", [str(v) for v in _D.patch_size], "Patch size x,y,z.")
flags.DEFINE_integer("batch_size", _D.batch_size, "Patches per step.")
flags.DEFINE_float("fg_fraction", _D.fg_fraction, "Share of patches centred on foreground.")
flags.DEFINE_integer("num_folds", _D.num_folds, "Cross-validation folds.")
flags.DEFINE_integer("fold", _D.fold, "Fold whose validation cases are held out.")
flags.DEFINE_string("splits_file", _D.splits_file, "A splits.json to use instead of a new one.")
flags.DEFINE_float("alpha_fraction", _D.alpha_fraction, "Share of training cases for alpha.")
flags.DEFINE_integer("seed", _C.seed, "The one seed every random stream derives from.")


def _fail(message: str) -> None:
    # One line for the user instead of a traceback; non-zero exit status.
    sys.exit(f"jaxnas: error: {message}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
    config = config_lib.from_flags(flags.FLAGS)
    workdir = _WORKDIR.value
    try:
        config_lib.validate(config)
    except ValueError as e:
        _fail(str(e))
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "flags.txt"), "w") as f:
        f.write(flags.FLAGS.flags_into_string())
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(config), f, indent=1)
    from jaxnas import prepare  # Imported late: flag errors should not wait for jax.

    try:
        if config.mode == "prepare":
            prepare.run(config, workdir)
    except msd.DataError as e:
        _fail(str(e))
    logging.info("done: outputs in %s", os.path.abspath(workdir))


if __name__ == "__main__":
    app.run(main)
