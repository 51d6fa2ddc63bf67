"""orbax checkpoints of the search state in `<workdir>/ckpt` (absolute paths: orbax needs them)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
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
    restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    return jax.tree.map(_as_fresh, restored)


def _as_fresh(x):
    """A restored one-device array as init_fn would make it: uncommitted. orbax's are
    committed to their device, and jit compiles other programs for committed arguments
    (measured: a resumed tiny search compiled both steps again, 40 s, from a warm
    persistent cache); a mesh run places the state itself afterwards."""
    if not isinstance(x, jax.Array) or not x.is_fully_addressable or len(x.devices()) != 1:
        return x
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(_as_fresh(jax.random.key_data(x)),
                                        impl=jax.random.key_impl(x))
    return jnp.asarray(np.asarray(x))


def save(manager: ocp.CheckpointManager, step: int, state) -> None:
    manager.save(step, args=ocp.args.StandardSave(state))
