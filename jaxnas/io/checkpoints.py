"""orbax checkpoints of the search state in `<workdir>/ckpt` (absolute paths: orbax needs them)."""

import os

import jax
import orbax.checkpoint as ocp


def make_manager(workdir: str, name: str = "ckpt", max_to_keep: int = 3) -> ocp.CheckpointManager:
    """Checkpoints of one phase in <workdir>/<name> (the fine-tune phase has its own)."""
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), name),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))


def restore_or_init(manager: ocp.CheckpointManager, init_fn):
    """The latest checkpoint restored into `init_fn()`'s structure, or `init_fn()` itself."""
    step = manager.latest_step()
    if step is None:
        return init_fn()
    abstract = jax.eval_shape(init_fn)
    return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def save(manager: ocp.CheckpointManager, step: int, state) -> None:
    manager.save(step, args=ocp.args.StandardSave(state))
