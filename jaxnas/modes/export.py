"""Export: `--mode=export --workdir=W --output=DIR`, the trained predictor as a folder that
segments images with jax and numpy alone (no jaxnas), as nnU-Net and MONAI users ask for:
the network together with its preprocessing spec.

    DIR/model.jaxexport  the network's forward pass, windows (batch, *patch, c) float32 ->
                         class probabilities, serialized by `jax.export` (StableHLO, the
                         weights inside); platforms in plan.json "export"
    DIR/plan.json        the run's plan: target spacing, intensity handling, window,
                         overlap, Gaussian weights, mirroring, labels
    DIR/predict.py       the runner (export_runner.py): NIfTI or .npy in, labels out
    DIR/runtime/         prediction.py, inference.py, preprocess.py, errors.py: jaxnas's
                         own numpy prediction core, copied with its imports made flat
    DIR/README.md

The copies are the very code `--mode=predict` runs, so both give the same labels
(tests/modes_test.py checks it in a process where jaxnas cannot be imported).
"""

import os
import re
import shutil

import jax
import jax.numpy as jnp
from absl import logging

from jaxnas.data.msd import DataError
from jaxnas.io import fileio

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Module name -> source file (relative to the package): the prediction core and what it
# imports. They import nothing else of jaxnas (tests/export_test.py checks it).
RUNTIME = {"prediction": "prediction.py", "inference": "inference.py",
           "preprocess": "data/preprocess.py", "errors": "errors.py"}
RUNNER = "export_runner.py"
MODEL_FILE = "model.jaxexport"
_IMPORT = re.compile(r"^from (jaxnas(?:\.\w+)*) import (.+)$", re.M)


def flatten_imports(source: str, modules=tuple(RUNTIME)) -> str:
    """`from jaxnas.x import m` -> `import m`, `from jaxnas.m import a` -> `from m import a`
    for the modules that travel together; any other jaxnas import is an error."""
    def rewrite(match):
        package, names = match[1], [n.strip() for n in match[2].split(",")]
        if all(n in modules for n in names):
            return "\n".join(f"import {n}" for n in names)
        last = package.rsplit(".", 1)[-1]
        if last in modules:
            return f"from {last} import {match[2]}"
        raise ValueError(f"the exported runtime cannot carry `{match[0]}`")

    return _IMPORT.sub(rewrite, source)


def export_network(model, params, *, batch_size: int, patch_size, num_channels: int,
                   platforms=None) -> tuple[bytes, tuple[str, ...]]:
    """(serialized program, its platforms): windows -> softmax probabilities, weights in.

    platforms: default this backend plus CUDA when the ops lower for it (the "xla" impl's
    convolutions do; a CPU "fast" export still runs on a GPU, only slower).
    """
    def probabilities(windows):
        return jax.nn.softmax(model.apply(params, windows), axis=-1)

    shape = jax.ShapeDtypeStruct((batch_size, *patch_size, num_channels), jnp.float32)
    tries = [tuple(platforms)] if platforms else [
        tuple(dict.fromkeys((jax.default_backend(), "cuda"))), (jax.default_backend(),)]
    for i, plats in enumerate(tries):
        try:
            exported = jax.export.export(jax.jit(probabilities), platforms=plats)(shape)
            return bytes(exported.serialize()), plats
        except Exception as e:  # A platform the ops cannot lower for: try the next set.
            if i == len(tries) - 1:
                raise
            logging.info("export for %s failed (%s); trying %s", plats, e, tries[i + 1])
    raise AssertionError("unreachable")


def check_output(output: str) -> None:
    """DataError unless output is new or an empty folder: exports are never overwritten."""
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        raise DataError(f"{output}: exists and is not an empty folder; choose another --output "
                        "(exports are never overwritten)")


def write_folder(output: str, program: bytes, plan: dict, platforms, description: dict) -> None:
    """Writes DIR (see the module docstring)."""
    check_output(output)
    os.makedirs(os.path.join(output, "runtime"), exist_ok=True)
    with open(os.path.join(output, MODEL_FILE), "wb") as f:
        f.write(program)
    fileio.write_json(os.path.join(output, "plan.json"), {
        **plan, "export": {"platforms": list(platforms), "source": description.get("source"),
                           "model_file": MODEL_FILE}})
    for name, rel in RUNTIME.items():
        with open(os.path.join(PACKAGE, rel)) as f:
            source = flatten_imports(f.read())
        with open(os.path.join(output, "runtime", f"{name}.py"), "w") as f:
            f.write(source)
    shutil.copyfile(os.path.join(PACKAGE, RUNNER), os.path.join(output, "predict.py"))
    with open(os.path.join(output, "README.md"), "w") as f:
        f.write(_readme(plan, platforms, description))


def _readme(plan: dict, platforms, description: dict) -> str:
    labels = ", ".join(f"{k} {v}" for k, v in sorted(plan.get("labels", {}).items(),
                                                     key=lambda kv: int(kv[0])))
    return f"""# Exported jaxnas model ({description.get('source', 'model')})

Segments 3D images with jax, numpy and scipy only (nibabel for NIfTI files); jaxnas is
not needed. Program platforms: {', '.join(platforms)}.

    python predict.py IMAGE.nii.gz LABELS.nii.gz
    python predict.py IMAGE.npy LABELS.npy --spacing=SX,SY,SZ

Input: {plan['num_channels']} channel(s), as one 3D/4D NIfTI file (last axis = channel) or
an (x, y, z[, c]) .npy array with its voxel spacing in mm. Output: uint8 labels in the
input's grid ({labels}).

What predict.py does (plan.json holds every number): crop to the nonzero box, resample to
{plan['target_spacing']} mm (spline order {plan.get('image_order', 3)}), z-score each
channel inside the nonzero mask (CT channels: clip and z-score with the training set's
statistics, plan.json "intensity"); sliding window of {plan['patch_size']} with overlap
{plan.get('overlap')}, Gaussian weights {plan.get('gaussian')}, mirroring
{plan.get('mirror')}, {plan.get('batch_size', 1)} window(s) per call of {MODEL_FILE};
probabilities back onto the input grid (linear), argmax.

From Python: `sys.path.insert(0, "runtime")`, `import prediction`, then
`prediction.predict_case(predict_fn, image, spacing, plan)` with `predict_fn` from
`predict.load_model()`.
"""


def run(workdir: str, output: str, impl: str) -> str:
    """Exports the finished run in workdir to output; returns the folder."""
    from jaxnas import phases
    from jaxnas.io import artifacts

    if not output:
        raise ValueError("--mode=export needs --output (a new folder for the exported model)")
    check_output(output)
    try:
        model, params, plan, description = artifacts.load(workdir, impl=phases.resolve_impl(impl))
    except FileNotFoundError as e:
        raise DataError(str(e)) from None
    program, platforms = export_network(
        model, params, batch_size=int(plan.get("batch_size", 1)),
        patch_size=tuple(int(n) for n in plan["patch_size"]),
        num_channels=int(plan["num_channels"]))
    write_folder(output, program, plan, platforms, description)
    logging.info("export: %s (%.1f MB, platforms %s) -> %s", description.get("source"),
                 len(program) / 2**20, ", ".join(platforms), output)
    return output

