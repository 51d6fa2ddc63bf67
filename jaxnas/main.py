"""Command line: `python -m jaxnas.main --flagfile=brain.flags [--flag=value ...]`.

The only module that defines flags. Relative paths (in flags and in nested `--flagfile`)
resolve from the current directory; `run.sh` runs from `experiments/`.
"""

import dataclasses
import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging

from jaxnas import config as config_lib
from jaxnas.data import msd
from jaxnas.io import fileio
from jaxnas.io import workdir as workdir_lib

_D = config_lib.DataConfig
_C = config_lib.Config

_S = config_lib.SearchConfig
_E = config_lib.EvalConfig

_MODE = flags.DEFINE_enum(
    "mode", _C.mode, ["prepare", "search", "train", "evaluate", "predict", "export"],
    "prepare: validate, preprocess, cache, split and preview patches; "
    "search: --strategy search on --fold, derive the genotype, evaluate it on the fold; "
    "train: train --architecture from scratch on --fold and evaluate it; "
    "evaluate: k-fold cross-validation of the search (or of --architecture); "
    "predict: label NIfTI files of --input into --output with the model of --workdir; "
    "export: the model of --workdir as a folder --output that runs without jaxnas "
    "(jax.export StableHLO program, plan.json, predict.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder that receives every output.",
                               required=True)
flags.DEFINE_string("data_dir", _D.data_dir, "MSD task folder holding dataset.json.")
flags.DEFINE_string("cache_dir", _D.cache_dir, "Preprocessed cases; empty: <workdir>/preprocessed.")
flags.DEFINE_list("spacing", [], "Target spacing x,y,z in mm; empty: median of the cases.")
flags.DEFINE_integer("image_order", _D.image_order, "Spline order of image resampling.")
flags.DEFINE_list("patch_size", [str(v) for v in _D.patch_size], "Patch size x,y,z.")
flags.DEFINE_list("search_patch_size", [], "Supernet patch x,y,z during a search; empty: "
                  "--patch_size (the planner picks a smaller one under --budget_minutes).")
flags.DEFINE_bool("augment", _D.augment, "Intensity augmentation of training patches "
                  "(scale/shift, gamma, noise; no flips).")
flags.DEFINE_bool("augment_spatial", _D.augment_spatial, "Rotation (up to 15 degrees "
                  "per axis) and scaling (0.85-1.15) of training patches, each with p 0.2; "
                  "no flips.")
flags.DEFINE_integer("batch_size", _D.batch_size, "Patches per step.")
flags.DEFINE_float("fg_fraction", _D.fg_fraction, "Share of patches centred on foreground.")
flags.DEFINE_integer("num_folds", _D.num_folds, "Cross-validation folds.")
flags.DEFINE_integer("fold", _D.fold, "Fold whose validation cases are held out.")
flags.DEFINE_string("splits_file", _D.splits_file, "A splits.json to use instead of a new one.")
flags.DEFINE_float("alpha_fraction", _D.alpha_fraction, "Share of training cases for alpha.")
flags.DEFINE_string("architecture", _C.architecture,
                    "train / evaluate: a genotype.json (from a search, on this task or "
                    "another: transfer), uresnet (the paper's 3D U-ResNet), unet (MONAI's UNet "
                    "recipe: channels width..16 width, 2 residual units) or random[:SEED].")
_INPUT = flags.DEFINE_string("input", "", "predict: a NIfTI file or a folder of them (MSD "
                             "4D files or nnU-Net-style CASE_0000.nii.gz channel files).")
_OUTPUT = flags.DEFINE_string("output", "", "predict: folder for <case>.nii.gz label maps; "
                               "export: a new folder for the exported model.")
_LABELS = flags.DEFINE_string("labels", "", "predict: ground-truth label file or folder, "
                              "drawn in the pictures with Dice in the log (optional).")
_SAVE_PROBS = flags.DEFINE_bool("save_probabilities", False,
                                "predict: also write <case>_probs.nii.gz (float32, k channels).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "predict: replace existing output files.")
flags.DEFINE_integer("seed", _C.seed, "The one seed every random stream derives from.")
flags.DEFINE_integer("num_preview_batches", _C.num_preview_batches,
                     "prepare mode: batches drawn for data_summary.json and patches.png.")
flags.DEFINE_integer("width", _S.width, "Stem channels; cell widths grow from it.")
flags.DEFINE_enum("strategy", _S.strategy, list(config_lib.STRATEGIES),
                  "Search strategy. SCNAS space: scnas (2 sampled ops per edge), gdas "
                  "(1 op, straight-through hard Gumbel), darts (all 8 ops, softmax weights), "
                  "random (train --num_candidates genotypes briefly, keep the best). "
                  "ronasmis: LSTM controller + REINFORCE over a macro U-Net space, shared "
                  "weights. c2fnas: coarse topology search (12 cells' resolutions), then "
                  "fine op search (2D/3D/P3D) on the chosen topology.")
flags.DEFINE_integer("num_candidates", _S.num_candidates,
                     "random: genotypes trained, each for 1/num_candidates of the steps.")
flags.DEFINE_integer("num_topologies", _S.num_topologies,
                     "c2fnas: topologies sampled for the coarse stage.")
flags.DEFINE_integer("num_groups", _S.num_groups,
                     "c2fnas: groups of similar topologies, each with its shared supernet.")
flags.DEFINE_float("coarse_fraction", _S.coarse_fraction,
                   "c2fnas: share of the iterations spent on the coarse (topology) stage.")
flags.DEFINE_integer("num_children", _S.num_children,
                     "ronasmis: child architectures rewarded per controller step (paper: 20).")
flags.DEFINE_float("lr_controller", _S.lr_controller,
                   "ronasmis: Adam lr of the controller (ENAS: 3.5e-4 for ~2000 controller "
                   "steps; a search with a few dozen needs ~0.05 for the policy to move).")
flags.DEFINE_float("entropy_weight", _S.entropy_weight,
                   "ronasmis: entropy bonus weight of the REINFORCE loss.")
flags.DEFINE_integer("num_val_patches", _S.num_val_patches,
                     "random, ronasmis, c2fnas: validation patches (one per alpha case, at "
                     "most this many) that score candidate architectures by Dice.")
flags.DEFINE_enum("impl", _S.impl, ["auto", "fast", "xla"],
                  "Op forms: fast (CPU shifted-matmul), xla (GPU/cuDNN), auto by backend.")
flags.DEFINE_integer("num_epochs", _S.num_epochs, "Search epochs.")
flags.DEFINE_integer("steps_per_epoch", _S.steps_per_epoch,
                     "Iterations per epoch; 0: one patch per Theta case.")
flags.DEFINE_integer("warmup_epochs", _S.warmup_epochs, "Theta-only epochs before alpha moves.")
flags.DEFINE_float("budget_minutes", _S.budget_minutes,
                   "Wall-clock budget of the run on this machine, compile and evaluation "
                   "included. > 0: the planner sizes the run from the data (plan.json says "
                   "why) and turns the budget into steps; any flag given overrides its "
                   "choice. 0: --num_epochs x --steps_per_epoch, no planner.")
flags.DEFINE_float("memory_gb", _S.memory_gb,
                   "Planned runs: device memory (GiB) a training step's activations may use; "
                   "the planner shrinks the patches to fit (the estimate is in planned.json). "
                   "0: no memory cap.")
flags.DEFINE_float("memory_weight", _S.memory_weight,
                   "scnas/gdas/darts: adds this x the derived network's expected activation "
                   "memory (GiB of a training step at --patch_size and --batch_size, under "
                   "softmax(alpha)) to alpha's loss. 0: no memory term.")
flags.DEFINE_integer("stem_stride", _S.stem_stride,
                     "SCNAS space: 2 runs the cells on a grid half as fine (8x fewer voxels) "
                     "with a full-resolution refinement head; 1 is the paper's network.")
flags.DEFINE_float("node_scale", _S.node_scale,
                   "SCNAS space: node width / cell level width; 1/4 gives cell outputs of "
                   "width * 2**level (the paper's channel counts), 1/2 twice the node width.")
flags.DEFINE_integer("width_growth", _S.width_growth,
                     "SCNAS space: node width factor per level down (2: the paper's "
                     "doubling; 3 puts more channels on the coarse, cheap grids). Planned.")
flags.DEFINE_bool("deep_supervision", _S.deep_supervision,
                  "SCNAS derived network (fine-tune, train mode): loss heads on the decoder's "
                  "1/4 and 1/8 resolution levels, weighted as nnU-Net. Planned.")
flags.DEFINE_bool("one_step_program", _S.one_step_program,
                  "SCNAS/GDAS/DARTS: compile the Theta and alpha steps as one program (one "
                  "compile; each alpha step also computes Theta's gradient). Planned.")
flags.DEFINE_float("finetune_fraction", _S.finetune_fraction,
                   "Share of the training time that fine-tunes the derived network after a "
                   "search (Theta kept, all training cases).")
flags.DEFINE_float("warmup_fraction", _S.warmup_fraction,
                   "Planned search: share of the steps that train Theta only.")
flags.DEFINE_float("anneal_fraction", _S.anneal_fraction,
                   "Planned search: share of the bi-level steps over which tau falls to "
                   "--tau_min and the Gumbel noise to 0 (then the argmax network trains).")
flags.DEFINE_enum("lr_schedule", _S.lr_schedule, ["constant", "cosine", "poly"],
                  "constant (with the plateau rule), or warm-up then cosine / poly decay.")
flags.DEFINE_bool("dice_background", _S.dice_background,
                  "Count background in the Dice loss (SCNAS) or not (nnU-Net).")
flags.DEFINE_bool("batch_dice", _S.batch_dice, "Dice summed over the batch (nnU-Net).")
flags.DEFINE_float("lr_w", _S.lr_w, "Adam learning rate of the network weights Theta.")
flags.DEFINE_list("betas_w", [str(v) for v in _S.betas_w], "Adam betas of Theta.")
flags.DEFINE_float("lr_a", _S.lr_a, "Adam learning rate of the architecture logits alpha.")
flags.DEFINE_list("betas_a", [str(v) for v in _S.betas_a], "Adam betas of alpha.")
flags.DEFINE_float("tau_rate", _S.tau_rate, "tau = max(tau_min, exp(-tau_rate * epoch)).")
flags.DEFINE_float("tau_min", _S.tau_min, "Floor of the Gumbel-softmax temperature.")
flags.DEFINE_float("ce_weight", _S.ce_weight, "Weight of cross-entropy added to the Dice loss.")
flags.DEFINE_integer("plateau_patience", _S.plateau_patience,
                     "The lr is divided by 10 once more than this many epochs in a row fail to "
                     "lower the training loss (PyTorch ReduceLROnPlateau).")
flags.DEFINE_integer("log_every", _S.log_every, "Steps between log lines and TensorBoard points.")
flags.DEFINE_integer("ckpt_every", _S.ckpt_every, "Steps between checkpoints.")
flags.DEFINE_string("mesh", _S.mesh,
                    "Devices of the search/train steps, e.g. data:2,space:2 (batch over data, "
                    "patch depth x over space); empty: one device.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "",
                                   "Several machines: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1,
                                      "Several machines: processes (one per machine).")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "Several machines: this process, 0-based.")
_PEER_TIMEOUT = flags.DEFINE_integer(
    "peer_timeout_seconds", 60, "Several machines: a process that has not been heard from "
    "for this long fails the others (instead of a hang).")
_JIT_CACHE = flags.DEFINE_string(
    "jit_cache_dir", os.path.join(os.path.expanduser("~"), ".cache", "jaxnas", "xla"),
    "Persistent XLA compilation cache: a rerun or resume skips most of the compile time. "
    "Empty: off.")
flags.DEFINE_float("eval_overlap", _E.overlap, "Sliding-window overlap.")
flags.DEFINE_integer("eval_batch_size", _E.batch_size, "Windows per inference batch.")
flags.DEFINE_bool("eval_gaussian", _E.gaussian, "Gaussian weighting of sliding windows.")
flags.DEFINE_bool("eval_mirror", _E.mirror, "Mirroring test-time augmentation (8 flips).")


def _fail(message: str) -> None:
    # One line for the user instead of a traceback; non-zero exit status.
    sys.exit(f"jaxnas: error: {message}")


def _predict(workdir: str, impl: str) -> None:
    """predict mode: the work dir's model over --input, label NIfTI files into --output."""
    from jaxnas import models
    from jaxnas import phases
    from jaxnas.io import artifacts
    from jaxnas.modes import predict

    if not _INPUT.value or not _OUTPUT.value:
        raise ValueError("--mode=predict needs --input (NIfTI file or folder) and --output")
    try:
        model, params, plan, description = artifacts.load(workdir, impl=phases.resolve_impl(impl))
    except FileNotFoundError as e:
        raise msd.DataError(str(e)) from None
    # Sliding-window flags given on this command line override the run's plan.json.
    overrides = {key: flags.FLAGS[name].value for name, key in _EVAL_FLAGS.items()
                 if flags.FLAGS[name].present}
    plan = predict.override_plan(plan, overrides)
    logging.info("predict: window %s, overlap %s, gaussian %s, mirror %s, batch %s",
                 plan["patch_size"], plan["overlap"], plan["gaussian"], plan["mirror"],
                 plan["batch_size"])
    predict_fn = models.probabilities_fn(model, params)
    written = predict.predict_files(
        predict_fn, _INPUT.value, _OUTPUT.value, plan, save_probabilities=_SAVE_PROBS.value,
        overwrite=_OVERWRITE.value, label_path=_LABELS.value or None)
    from jaxnas import evaluation
    from jaxnas.io import writer as writer_lib

    writer = writer_lib.MetricWriter(_OUTPUT.value)  # The pictures, for TensorBoard too.
    evaluation.pictures_to_tensorboard(writer, 0, _OUTPUT.value)
    writer.close()
    logging.info("predict (%s): wrote %d files to %s", description.get("source"),
                 len(written), _OUTPUT.value)


# Flags of the sliding window -> plan.json keys (predict mode).
_EVAL_FLAGS = {"eval_overlap": "overlap", "eval_gaussian": "gaussian",
               "eval_mirror": "mirror", "eval_batch_size": "batch_size"}


def _quiet_libraries() -> None:
    """Drops the INFO lines of orbax (dozens per checkpoint); warnings still show."""

    def keep(record) -> bool:
        return record.levelno > std_logging.INFO or "orbax" not in record.pathname

    logging.get_absl_handler().addFilter(keep)


# XLA:CPU's backend at LLVM -O1 instead of the default: 10-14% less compile time, steps
# within noise (experiments/bench_xla_flags.py, BENCHMARKS.md). Not on GPU installs,
# where the same flag would also lower the GPU backend's optimisation.
CPU_XLA_FLAGS = ("--xla_backend_optimization_level=1",)
# Several processes: XLA:CPU ends a process whose local devices wait more than 40 s for
# each other at a collective, which a peer still compiling its step or a loaded 2-core
# machine exceeds. Dead peers are caught by --peer_timeout_seconds' heartbeat instead.
CPU_MULTIPROCESS_XLA_FLAGS = ("--xla_cpu_collective_call_terminate_timeout_seconds=1800",
                              "--xla_cpu_collective_call_warn_stuck_timeout_seconds=300")
GPU_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
               "jax_rocm7_plugin")


def with_cpu_xla_flags(xla_flags: str, *, gpu_plugin: bool, several_processes: bool = False,
                       unoptimised: bool = False) -> str:
    """XLA_FLAGS plus CPU_XLA_FLAGS (and CPU_MULTIPROCESS_XLA_FLAGS), unless a GPU plugin
    is installed; flags the user already set (by name) are kept as given.

    `unoptimised` (JAX_DISABLE_MOST_OPTIMIZATIONS set, as the test suite does): no -O1, so
    XLA_FLAGS, part of the persistent cache key, is the same as in a process that never
    came through main, and the two share compiled programs."""
    if gpu_plugin:
        return xla_flags
    ours = (() if unoptimised else CPU_XLA_FLAGS) + (
        CPU_MULTIPROCESS_XLA_FLAGS if several_processes else ())
    add = [f for f in ours if f.split("=")[0] not in xla_flags]
    return " ".join([xla_flags, *add]).strip()


def _set_cpu_xla_flags() -> None:
    import importlib.util  # Before jax starts: XLA reads XLA_FLAGS once.

    gpu = any(importlib.util.find_spec(p) is not None for p in GPU_PLUGINS)
    os.environ["XLA_FLAGS"] = with_cpu_xla_flags(
        os.environ.get("XLA_FLAGS", ""), gpu_plugin=gpu,
        several_processes=_NUM_PROCESSES.value > 1,
        unoptimised=os.environ.get("JAX_DISABLE_MOST_OPTIMIZATIONS", "").lower()
        in ("1", "true"))


def main(argv):
    _set_cpu_xla_flags()
    _quiet_libraries()
    if len(argv) > 1:
        raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
    from jaxnas import planner  # numpy only

    user_set = tuple(sorted(n for n in planner.FIELDS if flags.FLAGS[n].present))
    config = config_lib.from_flags(_WithUserSet(flags.FLAGS, user_set))
    workdir = _WORKDIR.value
    if config.mode in ("predict", "export"):
        # The work dir holds a finished run: its config stays as it is.
        _use_jit_cache()
        try:
            if config.mode == "predict":
                _predict(workdir, config.search.impl)
            else:
                from jaxnas.modes import export

                export.run(workdir, _OUTPUT.value, config.search.impl)
        except (ValueError, msd.DataError) as e:
            _fail(str(e))
        return
    try:
        config_lib.validate(config)
        if not workdir_lib.check(workdir, config):
            return
    except ValueError as e:
        _fail(str(e))
    _init_distributed()
    os.makedirs(workdir, exist_ok=True)
    fileio.write_atomic(os.path.join(workdir, "flags.txt"), flags.FLAGS.flags_into_string())
    fileio.write_json(os.path.join(workdir, "config.json"), dataclasses.asdict(config))
    _use_jit_cache()
    from jaxnas import evaluation
    from jaxnas.modes import evaluate as evaluate_mode
    from jaxnas.modes import prepare
    from jaxnas.modes import search as search_mode
    from jaxnas.modes import train as train_mode

    run = {"prepare": prepare.run, "search": search_mode.run,
           "train": train_mode.train_and_evaluate, "evaluate": evaluate_mode.cross_validate}
    try:
        run[config.mode](config, workdir)
    except (msd.DataError, evaluation.RunError) as e:
        _fail(str(e))
    logging.info("done: outputs in %s", os.path.abspath(workdir))


class _WithUserSet:
    """FlagValues plus the names of the planner's settings given on the command line."""

    def __init__(self, values, user_set):
        self._values, self.user_set = values, user_set

    def __getattr__(self, name):
        return getattr(self._values, name)


def _init_distributed() -> None:
    """Several processes: joins them before any jax computation (the mesh needs them all).

    Every process runs the same program on the same shared --workdir: orbax writes the
    checkpoints together; every other output is process 0's (fileio.is_primary).
    """
    if _NUM_PROCESSES.value <= 1:
        return
    import jax

    # CPU devices of several processes talk through gloo (XLA:CPU has no default
    # cross-process collectives); GPUs use NCCL whatever this says.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value,
                               initialization_timeout=_PEER_TIMEOUT.value,
                               heartbeat_timeout_seconds=_PEER_TIMEOUT.value)


def _use_jit_cache() -> None:
    # Imported late: a flag error should not wait for jax to load.
    import jax

    if _JIT_CACHE.value and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        jax.config.update("jax_compilation_cache_dir", _JIT_CACHE.value)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


if __name__ == "__main__":
    app.run(main)
