"""What every mode's run shares besides the loop: the fold's data, the plan, batches, the
budget in steps, and the training of a fixed network.

- `load_training_data` and `planned_config`: the cached cases, the fold's splits and the
  planner's settings (`planned.json`), the first two calls of every mode.
- `step_batch`: a batch as a pure function of (seed, step, stream).
- `budget_steps`, `time_steps`: a wall-clock budget turned into step counts once, stored
  in `budget.json` so a resumed run replays the same schedule.
- `train_fixed`: a fixed network trained through `loop.run` (the search's fine-tune phase
  and --mode=train), re-sized from its own steps at step 20 and every 40 after
  (loop.Resize), each re-set recorded in `budget.json` for a resume to replay.
"""

import dataclasses
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxnas import config as config_lib
from jaxnas import fit
from jaxnas import loop
from jaxnas import models
from jaxnas import planner
from jaxnas import sharding
from jaxnas.data import cache
from jaxnas.data import msd
from jaxnas.data import patches
from jaxnas.io import checkpoints
from jaxnas.io import fileio
from jaxnas.search import bilevel
from jaxnas.search import schedules
from jaxnas.spaces.scnas import network


@dataclasses.dataclass(frozen=True)
class TrainingData:
    dataset: msd.Dataset
    cases: dict  # case_id -> cache.PreparedCase
    spacing: tuple[float, float, float]
    splits: list
    theta_ids: list  # Trains the network weights.
    alpha_ids: list  # Trains the architecture logits.
    val_ids: list  # Held out: the fold's validation cases.
    intensity: list | None = None  # CT statistics per channel (preprocess.normalize).


def load_training_data(config: config_lib.Config, workdir: str) -> TrainingData:
    """Reads, validates and caches the dataset, then fixes the fold's splits."""
    d = config.data
    dataset = msd.read_dataset(d.data_dir)
    os.makedirs(workdir, exist_ok=True)
    cache_dir = d.cache_dir or os.path.join(workdir, "preprocessed")
    prepared, folder, spacing = cache.prepare_dataset(dataset, cache_dir, spacing=d.spacing,
                                                      image_order=d.image_order)
    cases = {c.case_id: c for c in prepared}
    splits = patches.load_or_make_splits(os.path.join(workdir, "splits.json"), list(cases),
                                         d.num_folds, config.seed, d.splits_file)
    if d.fold >= len(splits):
        raise msd.DataError(f"--fold={d.fold} but the splits have {len(splits)} folds")
    fold = splits[d.fold]
    theta_ids, alpha_ids = patches.bilevel_split(fold["train"], config.seed, d.alpha_fraction)
    return TrainingData(dataset, cases, spacing, splits, theta_ids, alpha_ids, fold["val"],
                        cache.intensity_of(folder))


def planned_config(config: config_lib.Config, data: TrainingData,
                   workdir: str) -> config_lib.Config:
    """The config a planned run (--budget_minutes > 0) uses; unchanged without a budget.

    Writes `<workdir>/planned.json` (the fingerprint and every choice with its reason)
    and logs each choice. Flags the user gave stay as given (planner.apply).
    """
    if config.search.budget_minutes <= 0:
        return config
    import jax  # The backend decides the voxel caps.

    train_ids = data.theta_ids + data.alpha_ids
    fp = planner.fingerprint([data.cases[i].image.shape for i in train_ids],
                             spacing=data.spacing, num_classes=data.dataset.num_classes,
                             num_channels=len(data.dataset.modalities))
    planned = planner.plan(fp, budget_minutes=config.search.budget_minutes,
                           backend=jax.default_backend(), memory_gb=config.search.memory_gb)
    config, record = planner.apply(config, planned)
    try:  # A flag kept by the user may not fit a planned choice (a patch and the stem).
        config_lib.validate(config)
    except ValueError as e:
        raise msd.DataError(f"with the planned settings (planned.json): {e}") from None
    fileio.write_json(os.path.join(workdir, "planned.json"),
                      {"fingerprint": fp, "budget_minutes": config.search.budget_minutes,
                       "memory_gb": config.search.memory_gb, "choices": record})
    logging.info("plan from %s (budget %g min):", fp, config.search.budget_minutes)
    for name, choice in record.items():
        logging.info("  %s = %s: %s", name, choice["value"], choice["reason"])
    return config


def _budget(workdir: str) -> tuple[str, dict]:
    """(path, stored counts) of `<workdir>/budget.json`; {} before the first count."""
    path = os.path.join(workdir, "budget.json")
    if not os.path.exists(path):
        return path, {}
    with open(path) as f:
        return path, json.load(f)


def budget_steps(workdir: str, phase: str, compute_fn) -> int:
    """A phase's planned step count: read from `<workdir>/budget.json`, else computed once.

    compute_fn() -> int runs only on the first run; a resumed run reads the stored count,
    so it replays exactly the same schedule (DESIGN.md section 10).
    """
    path, stored = _budget(workdir)
    if phase not in stored:
        stored[phase] = sharding.agreed(compute_fn())
        fileio.write_json(path, stored)
    return int(stored[phase])


def record_resize(workdir: str, phase: str, step: int, num_steps: int) -> None:
    """Records that a phase's length was re-set to num_steps after `step` steps: the count
    becomes num_steps, and `resizes[phase]` ([[0, planned count], [step, count], ...])
    lets a resumed run replay every re-set (loop.Resize.replay)."""
    path, stored = _budget(workdir)
    history = stored.setdefault("resizes", {}).setdefault(phase, [[0, int(stored[phase])]])
    history.append([int(step), int(num_steps)])
    stored[phase] = int(num_steps)
    fileio.write_json(path, stored)


def budget_resizes(workdir: str, phase: str) -> list:
    """A phase's recorded re-sets, [[0, planned count], [step, count], ...] ([] if none)."""
    return _budget(workdir)[1].get("resizes", {}).get(phase, [])


def budget_resized(workdir: str, phase: str) -> bool:
    """Whether a budget.json of an earlier version re-set the phase (its count is final)."""
    return phase in _budget(workdir)[1].get("resized", [])


def resolve_impl(impl: str) -> str:
    """"auto": the CPU-fast op forms on CPU, the XLA (cuDNN) forms on accelerators."""
    if impl != "auto":
        return impl
    return "fast" if jax.default_backend() == "cpu" else "xla"


def make_model(search: config_lib.SearchConfig, in_channels: int, num_classes: int):
    """(init_fn(key) -> params, apply_fn(params, image, choice) -> logits) of the supernet.

    The choice is what the strategy samples (bilevel.SAMPLERS): an op pair per edge for
    SCNAS and GDAS, softmax weights over all ops for DARTS.
    """
    impl = resolve_impl(search.impl)
    init_fn = functools.partial(network.init_network, in_channels=in_channels,
                                num_classes=num_classes, width=search.width,
                                stem_stride=search.stem_stride,
                                node_scale=search.node_scale,
                                width_growth=search.width_growth,
                                deep_supervision=search.deep_supervision)
    _, dense = bilevel.SAMPLERS[search.strategy]
    apply = network.apply_network_dense if dense else network.apply_network
    return init_fn, functools.partial(apply, impl=impl)


def step_batch(cases, config, step: int, stream: int, patch_size=None) -> dict:
    """The batch of (seed, step, stream): 0 trains Theta, 1 alpha (or scores candidates)."""
    # Theta and alpha batches are separate streams of one (seed, step) function.
    d = config.data
    return patches.make_batch(cases, seed=config.seed, step=2 * step + stream,
                              batch_size=d.batch_size, patch_size=patch_size or d.patch_size,
                              fg_fraction=d.fg_fraction, augment=d.augment,
                              augment_spatial=d.augment_spatial)


# Timed calls stop once they add up to this: each is a step the run does not keep, and a
# slow machine's 4 s search iteration needs no 3 samples (2 CPU cores: 8-11 s saved).
TIMING_SECONDS = 1.5


def time_steps(run_once, state, repeats: int = 3) -> float:
    """Seconds per call of run_once(state) -> state, after one warm-up (compile) call.

    Times up to `repeats` calls, fewer once TIMING_SECONDS have passed (at least one).
    Runs on a copy: the steps donate their state, and the real run starts from `state`.
    """
    probe = jax.tree.map(lambda x: x.copy() if hasattr(x, "copy") else x, state)
    probe = jax.block_until_ready(run_once(probe))
    start = time.time()
    for done in range(1, repeats + 1):
        probe = jax.block_until_ready(run_once(probe))
        if time.time() - start >= TIMING_SECONDS:
            break
    return (time.time() - start) / done


def training_seconds_left(config: config_lib.Config, start_wall: float) -> float:
    """Budget left for training: the whole budget less what has passed and the reserve."""
    budget = 60.0 * config.search.budget_minutes
    return budget * (1.0 - planner.EVAL_RESERVE) - (time.time() - start_wall)


LR_WARMUP_STEPS = 20  # Fixed (not a share): the first steps never depend on the budget.


RESIZE_AT_STEP = LR_WARMUP_STEPS  # The steps before it never see the length.
# Then again every 40 steps: a 2-core VM's speed moves by 10-20% within minutes.
RESIZE_EVERY = 40


@functools.lru_cache(maxsize=8)
def fixed_programs(model, lr_w: float, betas_w: tuple, lr_schedule: str, mesh):
    """(tx, jitted training step) of a fixed network, built once per model and settings
    (models.build returns one Model per description), so folds and reruns in a process
    trace it once."""
    tx = fit.make_optimizer(lr_w, betas_w)
    lr_fn = functools.partial(schedules.lr_factor, warmup_steps=LR_WARMUP_STEPS,
                              kind=lr_schedule) if lr_schedule != "constant" else None
    return tx, sharding.compile_step(
        functools.partial(fit.train_step, loss_fn=model.loss, tx=tx, lr_fn=lr_fn), mesh,
        has_key=False)


def compile_eval_program(config: config_lib.Config, model, params, *, channels: int):
    """Compiles the held-out evaluation's forward program (`models.probabilities_fn` on a
    batch of windows, the shape `inference.sliding_window_predict` pads every batch to)
    by running it once on zeros. A planned phase calls it before sizing its steps, so the
    compile (15-30 s on 2 CPU cores) is spent then instead of guessed in the evaluation
    estimate."""
    start = time.time()
    windows = np.zeros((config.eval.batch_size, *config.data.patch_size, channels), np.float32)
    jax.block_until_ready(models.probabilities_fn(model, params)(windows))
    logging.info("evaluation program compiled in %.1f s", time.time() - start)


def train_fixed(config: config_lib.Config, workdir: str, model, params, cases, writer, *,
                start_wall: float, mesh, phase: str, eval_shapes=(), eval_passes: int = 1):
    """Trains a fixed network from `params`: the fine-tune phase and --mode=train.

    Planned (--budget_minutes): the step count is what fits before the budget's end less
    the evaluation of `eval_shapes` (held-out cases, `eval_passes` networks), first from
    timed calls, then re-set from the loop's own steps at step 20 and every 40 steps
    after (loop.Resize); each re-set is recorded in budget.json, and a resumed run
    replays them. The lr warms up and decays over it. Else
    num_epochs x steps_per_epoch with the plateau rule. Checkpoints in `<workdir>/ckpt`
    (train) or `<workdir>/ckpt_<phase>`; returns (params, num_steps).
    """
    s = config.search
    patch = config.data.patch_size
    steps_per_epoch = s.steps_per_epoch or max(1, len(cases) // config.data.batch_size)
    planned = s.budget_minutes > 0
    tx, step_fn = fixed_programs(model, s.lr_w, s.betas_w, s.lr_schedule, mesh)
    put_state, put = sharding.placers(mesh)
    stream = 0 if phase == "train" else 2  # Fine-tune batches: a stream of their own.
    eval_compiled = planned and bool(eval_shapes) and mesh is None
    if eval_compiled:
        compile_eval_program(config, model, params, channels=eval_shapes[0][-1])

    def batch(step):
        return put(step_batch(cases, config, step, stream, patch))

    resize = None
    if planned:
        def end_time(seconds_per_step):
            """time.time() by which training must end: the budget less the evaluation."""
            return start_wall + 60.0 * s.budget_minutes - planner.eval_seconds(
                eval_shapes, window=patch, overlap=config.eval.overlap,
                mirror=config.eval.mirror, step_seconds=seconds_per_step,
                batch_size=config.data.batch_size, passes=eval_passes, compiled=eval_compiled)

        def measure():
            probe = put_state(fit.init_state(params, tx))
            b = batch(0)
            seconds_per_step = time_steps(lambda st: step_fn(st, b)[0], probe)
            left = end_time(seconds_per_step) - time.time()
            logging.info("%s step %.3f s; %.0f s left for it", phase, seconds_per_step, left)
            return planner.steps_in(left, seconds_per_step)

        key = f"{phase}_steps"
        num_steps = budget_steps(workdir, key, measure)
        history = budget_resizes(workdir, key)
        if history:  # Re-set before: start from the planned count, replay the rest.
            num_steps = history[0][1]
        if history or not budget_resized(workdir, key):
            resize = loop.Resize(
                at_step=RESIZE_AT_STEP, end_fn=end_time, every=RESIZE_EVERY,
                apply_fn=lambda state, n: put_state(
                    state.replace(horizon=jnp.asarray((0, 0, n), jnp.int32))),
                record_fn=functools.partial(record_resize, workdir, key),
                replay=tuple(tuple(r) for r in history[1:]))
    else:
        num_steps = s.num_epochs * steps_per_epoch
    plateau_fn = None
    if s.lr_schedule == "constant":
        plateau_fn = jax.jit(functools.partial(fit.plateau_step, patience=s.plateau_patience))
    manager = checkpoints.make_manager(workdir, "ckpt" if phase == "train" else f"ckpt_{phase}")
    state = checkpoints.restore_or_init(
        manager, lambda: fit.init_state(params, tx, horizon=(0, 0, num_steps)))
    state = put_state(state)
    if planned:  # A resumed run goes on with the length in force at its checkpoint.
        num_steps = int(state.horizon[2])
    logging.info("%s: %d steps, patch %s, batch %d", phase, num_steps, patch,
                 config.data.batch_size)
    state = loop.run(state, schedule=loop.Schedule(num_steps, steps_per_epoch, s.log_every,
                                                   s.ckpt_every),
                     step_fn=lambda st, step: step_fn(st, batch(step)), loss_key="train/loss",
                     manager=manager, writer=writer, workdir=workdir, plateau_fn=plateau_fn,
                     scalars_fn=lambda st: {"train/lr": bilevel.learning_rate(st.opt)},
                     name=phase, resize=resize)
    return state.params, int(state.step)


def finetune(config, workdir, model, params, cases, writer, *, start_wall, mesh,
             eval_shapes=(), eval_passes=1):
    """SCNAS's third phase: the derived network, Theta kept, on every training case.

    Returns (params, num_steps)."""
    return train_fixed(config, workdir, model, params, cases, writer, start_wall=start_wall,
                       mesh=mesh, phase="finetune", eval_shapes=eval_shapes,
                       eval_passes=eval_passes)
