"""TensorBoard event files through tensorboardX (no TensorFlow), plus a console line."""

import numpy as np
import tensorboardX
from absl import logging

from jaxnas.io import fileio


class MetricWriter:
    """Writes scalar dicts to `<workdir>/events.out.tfevents.*`. One of two stateful shells.

    On processes 1, 2, ... of a multi-process run it writes nothing (process 0's files).
    """

    def __init__(self, logdir: str):
        self._writer = tensorboardX.SummaryWriter(logdir=logdir) if fileio.is_primary() else None

    def write_scalars(self, step: int, scalars: dict) -> None:
        if self._writer is None:
            return
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, float(np.asarray(value)), global_step=step)

    def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
        """image: (h, w, 3) uint8 or float in [0, 1]."""
        if self._writer is not None:
            self._writer.add_image(tag, image, global_step=step, dataformats="HWC")

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def progress_line(step: int, num_steps: int, loss: float, steps_per_sec: float) -> None:
    eta = (num_steps - step) / max(steps_per_sec, 1e-9)
    logging.info("step %d/%d  loss %.4f  %.2f steps/s  ETA %dm%02ds", step, num_steps, loss,
                 steps_per_sec, eta // 60, eta % 60)
