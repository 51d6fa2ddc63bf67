"""The training loop every step-based phase runs through: search, fine-tune and train.

`run` owns what a phase shares: resuming from its checkpoint, the epoch loss and the
plateau rule, the NaN guard before every log line and checkpoint, log lines with steps/s
and ETA, TensorBoard scalars, and orbax checkpoints at epoch ends. A phase supplies
`step_fn(state, step) -> (state, metrics)`: it draws its batches as a pure function of
(seed, step) and calls its jitted steps, so a resumed run replays exactly the same steps.

A planned phase can also pass a `Resize`: its length is then re-set from its own steps
(host batch building included), which a few timed calls after the compile
over-estimated by 20-30% (WORKSPACE.md). Only the second half of the steps before the
first re-set is timed: the first ten of a fresh phase ran ~25% slower than the rest.
Later re-sets (`every`) follow the machine to the end of the phase: a fine-tune re-sized
from 1.45 s steps ran its later ones at ~1.8 s and ended a minute late, and with two
re-sets (steps 20 and 60) runs still ended 3-6% late when the machine slowed after step
60. Each re-set is recorded; a resumed run (or a rerun handed the records) replays them
at the same steps instead of timing, so it runs the same schedule bit for bit.
"""

import dataclasses
import time
from collections.abc import Callable

import jax
import numpy as np
from absl import logging

from jaxnas import evaluation
from jaxnas import sharding
from jaxnas.io import checkpoints
from jaxnas.io import writer as writer_lib


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How many steps a phase runs, and where its epochs, logs and checkpoints fall."""

    num_steps: int
    steps_per_epoch: int
    log_every: int
    ckpt_every: int  # Rounded to whole epochs: a resume replays whole epochs.

    @property
    def ckpt_steps(self) -> int:
        return max(1, round(self.ckpt_every / self.steps_per_epoch)) * self.steps_per_epoch


@dataclasses.dataclass(frozen=True)
class Resize:
    """Re-sets a planned phase's length after `at_step` steps of a fresh run, then every
    `every` steps (0: once) until it ends, each time from the steps since the last one.

    The new length is what fits before end_fn(seconds_per_step) (a time.time() value) at
    the measured rate; apply_fn(state, num_steps) -> state puts it in the state's horizon
    and record_fn(step, num_steps) stores it. The steps before at_step must not depend on
    the length (they fall inside the fixed lr warm-up).
    replay: ((step, num_steps), ...) recorded by an earlier run of the phase. Given, the
    phase re-sets at those steps (the ones after the state's step) to those lengths and
    times nothing: a resumed run, or a rerun handed the records, replays the schedule.
    """

    at_step: int
    end_fn: Callable[[float], float]
    apply_fn: Callable
    record_fn: Callable[[int, int], None]
    every: int = 0
    replay: tuple = ()


def resized_steps(done: int, seconds_per_step: float, seconds_left: float) -> int:
    """The phase length once `done` steps ran: done plus what fits in seconds_left."""
    return done + max(0, int(seconds_left / max(seconds_per_step, 1e-6)))


def run(state, *, schedule: Schedule, step_fn: Callable, loss_key: str, manager, writer,
        workdir: str, plateau_fn: Callable | None = None,
        scalars_fn: Callable | None = None, name: str = "train", resize: Resize | None = None):
    """Runs `schedule.num_steps` steps from `state.step` on; returns the final state.

    Args:
      state: a pytree with an int `step` (restored from `manager` by the caller).
      step_fn: (state, step) -> (state, metrics dict of scalars); metrics[loss_key] is the
        training loss the plateau rule and the log line read.
      plateau_fn: jitted (state, epoch_loss) -> (state, reduced), or None.
      scalars_fn: state -> extra TensorBoard scalars at log steps (learning rates, alpha).
      resize: re-sets num_steps from the measured step rate, or replays recorded re-sets.
    """
    start = int(state.step)
    if start:
        logging.info("%s: resumed from checkpoint at step %d", name, start)
    epoch_losses, tick, tick_step = [], time.time(), start
    s = schedule
    live, replay = None, {}
    if resize is not None and resize.replay:
        replay = {int(r): int(n) for r, n in resize.replay if int(r) > start}
    elif resize is not None and not start and resize.at_step >= 3:
        live = resize  # (Resumed without records: the length in the state stands.)
    # The fine-tune's steps 2-12 took 1.32 s against 1.05 s from step 20 on (spatial demo):
    # the first re-set times only the steps after this one.
    timed_after = max(1, live.at_step // 2) if live is not None else None
    next_resize = live.at_step if live is not None else None
    first_done = None
    step = start
    try:
        while step < s.num_steps:
            state, m = step_fn(state, step)
            epoch_losses.append(m[loss_key])
            done = step = step + 1
            if live is not None and done == timed_after:
                jax.block_until_ready(state)  # The first steps hold one-off costs.
                first_done = time.time()
            if live is not None and done == next_resize:
                jax.block_until_ready(state)
                now = time.time()
                per_step = (now - first_done) / (done - timed_after)
                num_steps = sharding.agreed(
                    resized_steps(done, per_step, live.end_fn(per_step) - now))
                if num_steps != s.num_steps:
                    logging.info("%s: %.3f s per step over steps %d-%d (host batches "
                                 "included): %d steps instead of %d", name, per_step,
                                 timed_after + 1, done, num_steps, s.num_steps)
                    state = live.apply_fn(state, num_steps)
                    live.record_fn(done, num_steps)
                    s = dataclasses.replace(s, num_steps=num_steps)
                if live.every and done + live.every < s.num_steps:  # Timed from here on.
                    timed_after, first_done, next_resize = done, now, done + live.every
                else:
                    live = None
            elif done in replay:
                num_steps = replay.pop(done)
                logging.info("%s: %d steps instead of %d at step %d, as recorded", name,
                             num_steps, s.num_steps, done)
                state = resize.apply_fn(state, num_steps)
                s = dataclasses.replace(s, num_steps=num_steps)
            if done % s.steps_per_epoch == 0 and plateau_fn is not None:
                epoch_loss = float(np.mean(jax.device_get(epoch_losses)))
                state, reduced = plateau_fn(state, epoch_loss)
                if bool(reduced):
                    logging.info("%s: training loss plateau: learning rates divided by 10",
                                 name)
            if done % s.steps_per_epoch == 0:
                epoch_losses = []
            save_now = done % s.ckpt_steps == 0 or done == s.num_steps
            log_now = done % s.log_every == 0 or done == s.num_steps
            if save_now or log_now:
                m = jax.device_get(m)
                evaluation.check_finite(m, done, workdir)  # Never checkpoint a NaN state.
            if log_now:
                rate = (done - tick_step) / max(time.time() - tick, 1e-9)
                tick, tick_step = time.time(), done
                extra = scalars_fn(state) if scalars_fn else {}
                writer.write_scalars(done, {**m, **extra, f"{name}/steps_per_sec": rate})
                writer_lib.progress_line(done, s.num_steps, float(m[loss_key]), rate)
            if save_now:
                checkpoints.save(manager, done, state)
    finally:
        # An error or interrupt must not lose the checkpoint still being written.
        manager.wait_until_finished()
    return state
