"""Batches and single patches split over several devices with `jax.sharding`.

Why: a 128^3 SCNAS search step at width 32 needs more memory and time than one GPU
comfortably gives. Two splits answer that, and they combine in one 2D mesh:
- "data": the patches of a batch go to different devices (data parallel);
- "space": ONE patch is cut along its depth x (first spatial axis) into slabs, one per
  device (spatial / domain parallel), so a patch too big for one device still fits.

How: the step functions stay as they are (pure, single-device code). `shard_step` only
jits them with `in_shardings` / `out_shardings`: the state (params, arch, optimiser
states) is replicated, the batch is split as above, the PRNG key is replicated. XLA's SPMD
partitioner then inserts the halo exchanges that convolutions need at slab borders, the
collectives of the poolings, upsamplings, Dice sums and the gradient all-reduce. The
result equals the single-device step up to float summation order (sharding_test.py).

Constraints: the batch size must be divisible by the "data" size and the patch depth x by
8 * the "space" size (3 poolings of 2 leave x / 8 voxels at the bottom, which must split
evenly over the slabs), with at least 2 bottom voxels per slab (`MIN_BOTTOM_SLAB`): x = 128
allows space up to 8. The mesh is written "data:2,space:2"; "" means one device and
no sharding at all (the plain `jax.jit` path of modes/search.py and phases.py).

Several processes (one per machine, `jax.distributed.initialize` in main.py): the mesh
spans the global device list; every process draws the same whole batch from the same
(seed, step) function and uploads only the slices its own devices hold.
"""

import functools
import itertools
import math

import jax
import numpy as np
from jax.sharding import AxisType
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "space")  # Mesh axis names, in mesh order.
NUM_POOLINGS = 3  # The supernet halves x three times: x / 8 voxels at the bottom.
# With 1 voxel per slab at the bottom (16^3, space:2) XLA 0.10.2's SPMD partitioner aborts
# the process while partitioning a backward convolution (convolution_handler.cc "Check
# failed: ShapeUtil::Compatible"); 2 voxels per slab (x = 32, space:2) compile and match.
MIN_BOTTOM_SLAB = 2
# Measured (sharding_test.py, jax 0.10.2 CPU, impl xla, 32 x 16 x 16): with space > 1 the
# gradient of `lax.reduce_window` max (its transpose is select_and_scatter) is wrong
# (relative errors 0.25-0.5); every other op is right. ops.max_pool3 therefore uses the
# separable max in both impls, and sharded steps match one device (the test checks it).


def parse_mesh(spec: str) -> dict[str, int]:
    """"data:2,space:2" -> {"data": 2, "space": 2}; "" -> {} (one device, no sharding).

    Missing axes count as 1. Raises ValueError naming the part that cannot be read.
    """
    axes = {}
    if not spec.strip():
        return axes
    for part in spec.split(","):
        name, sep, size = part.strip().partition(":")
        name = name.strip()
        if not sep or not size.strip().isdigit():
            raise ValueError(f"--mesh={spec}: cannot read {part.strip()!r}; expected "
                             "AXIS:SIZE parts such as data:2,space:2")
        if name not in AXES:
            raise ValueError(f"--mesh={spec}: unknown axis {name!r} in {part.strip()!r}; "
                             f"axes are {', '.join(AXES)}")
        if name in axes:
            raise ValueError(f"--mesh={spec}: axis {name!r} given twice")
        if int(size) < 1:
            raise ValueError(f"--mesh={spec}: size in {part.strip()!r} must be >= 1")
        axes[name] = int(size)
    return axes


def check_divisible(axes: dict[str, int], batch_size: int, patch_size) -> None:
    """Raises ValueError if the batch or the patch depth cannot be split as `axes` asks."""
    data, space = axes.get("data", 1), axes.get("space", 1)
    if batch_size % data:
        raise ValueError(f"--batch_size={batch_size} must be divisible by the mesh's "
                         f"data size {data}")
    step = space * 2 ** NUM_POOLINGS
    if patch_size[0] % step:
        raise ValueError(f"patch depth x={patch_size[0]} must be divisible by "
                         f"8 * space = {step} (3 poolings, then {space} slabs of the "
                         f"bottom level)")
    if space > 1 and patch_size[0] // step < MIN_BOTTOM_SLAB:
        raise ValueError(f"patch depth x={patch_size[0]} is too small for space={space}: "
                         f"the bottom level ({patch_size[0] // 2 ** NUM_POOLINGS} voxels) "
                         f"needs >= {MIN_BOTTOM_SLAB} voxels per slab; use "
                         f"x >= {MIN_BOTTOM_SLAB * step} or a smaller space size")


def make_mesh(axes: dict[str, int], devices=None) -> Mesh:
    """A ("data", "space") mesh over `devices` (default: every device of every process).

    Raises ValueError when the product of the axis sizes differs from the device count.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = tuple(axes.get(name, 1) for name in AXES)
    if math.prod(shape) != len(devices):
        raise ValueError(f"mesh {dict(zip(AXES, shape))} needs {math.prod(shape)} devices, "
                         f"but {len(devices)} are there")
    # Auto axes: XLA propagates the shardings through the network (halo exchanges).
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES),
                         devices=devices)


# --- Several processes: keeping them together where gloo would give up ---
#
# XLA:CPU's gloo collectives join the processes when a program first runs, and give up
# after a fixed 30 s (jax 0.10 has no setting for it): a process that reached a new
# program's first run half a minute after the other (a slower compile on a loaded
# machine, process 0's pictures) failed the run with "Gloo context initialization
# failed: DEADLINE_EXCEEDED". Reproduced with a 45 s sleep in one of two processes before
# a jitted sum; a later run of the same program waited for its peer without limit. So
# every step program is compiled ahead and its first run waits at a coordination-service
# barrier (no collective, timeout PEER_BARRIER_SECONDS), and values are agreed through the
# coordination service's key-value store instead of a collective.
# A peer may still be compiling or writing; a dead one fails sooner (the heartbeat).
PEER_BARRIER_SECONDS = 1800
_barriers = itertools.count()  # The n-th barrier or value of each process meets the n-th.


def _client():
    from jax._src import distributed  # The coordination service client jax.distributed made.

    return distributed.global_state.client


def wait_for_peers(name: str) -> None:
    """Blocks until every process reached this call (the n-th call of each meets the n-th)."""
    if jax.process_count() > 1:
        _client().wait_at_barrier(f"jaxnas/{next(_barriers)}/{name}",
                                  PEER_BARRIER_SECONDS * 1000)


def agreed(value: int) -> int:
    """Process 0's value on every process: step counts from each process's own timing
    must be one count, or the processes' SPMD steps would part ways."""
    if jax.process_count() == 1:
        return int(value)
    key = f"jaxnas/agreed/{next(_barriers)}"
    if jax.process_index() == 0:
        _client().key_value_set(key, str(int(value)))
    return int(_client().blocking_key_value_get(key, PEER_BARRIER_SECONDS * 1000))


class _CompiledTogether:
    """A jitted step whose first run per argument shape starts on all processes together:
    compiled ahead, then `wait_for_peers`, then run (see the note above)."""

    def __init__(self, jitted):
        self._jitted, self._compiled = jitted, {}

    def __call__(self, *args):
        leaves, treedef = jax.tree.flatten(args)
        key = (treedef, tuple((np.shape(x), str(getattr(x, "dtype", type(x))))
                              for x in leaves))  # PRNG keys have no numpy dtype.
        if key not in self._compiled:
            self._compiled[key] = self._jitted.lower(*args).compile()
            wait_for_peers("first run")
        return self._compiled[key](*args)


def replicated(mesh: Mesh) -> NamedSharding:
    """The same whole array on every device: params, arch, optimiser states, keys."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> dict[str, NamedSharding]:
    """For {"image": (b, x, y, z, c), "label": (b, x, y, z)}: b over data, x over space."""
    split = NamedSharding(mesh, P("data", "space"))
    return {"image": split, "label": split}


def _put(x, sharding: NamedSharding) -> jax.Array:
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    # Several processes: each uploads the slices of its own devices from its (identical)
    # host copy; device_put of a host array is not meant for non-addressable devices.
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def put_batch(batch: dict, mesh: Mesh) -> dict:
    """A host numpy batch uploaded split as `batch_sharding(mesh)` says."""
    shardings = batch_sharding(mesh)
    return {k: _put(v, shardings[k]) for k, v in batch.items()}


def put_replicated(tree, mesh: Mesh):
    """A pytree of arrays (the state) copied whole onto every device of the mesh."""
    return jax.tree.map(functools.partial(_put, sharding=replicated(mesh)), tree)


def shard_step(step_fn, mesh: Mesh, *, has_key: bool = True):
    """`jax.jit` of `(state, batch[, key]) -> (state, metrics)` over `mesh`, state donated.

    State, key and metrics are replicated, the batch split by `batch_sharding`. The third
    argument may be any replicated pytree (a PRNG key, or a strategy's sampled choice).
    Without it (`has_key=False`) the step is `(state, batch) -> (state, metrics)`.
    """
    rep = replicated(mesh)
    in_shardings = (rep, batch_sharding(mesh)) + ((rep,) if has_key else ())
    return jax.jit(step_fn, in_shardings=in_shardings, out_shardings=(rep, rep),
                   donate_argnums=0)


# --- What the loops use: the same calls with or without a mesh ---


def mesh_from_spec(spec: str) -> Mesh | None:
    """The mesh of `--mesh` (None for "": one device, plain jit)."""
    return make_mesh(parse_mesh(spec)) if spec else None


def compile_step(step_fn, mesh: Mesh | None, *, has_key: bool = True):
    """jax.jit with the state donated on one device, or `shard_step` on a mesh."""
    if mesh is None:
        return jax.jit(step_fn, donate_argnums=0)
    step = shard_step(step_fn, mesh, has_key=has_key)
    return _CompiledTogether(step) if jax.process_count() > 1 else step


def placers(mesh: Mesh | None):
    """(put_state, put_batch): identities on one device, replicate / shard on a mesh."""
    if mesh is None:
        return (lambda state: state), (lambda batch: batch)
    return (functools.partial(put_replicated, mesh=mesh),
            functools.partial(put_batch, mesh=mesh))
