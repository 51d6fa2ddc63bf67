"""Segments images with an exported jaxnas model: jax, numpy and scipy (nibabel for NIfTI
files), no jaxnas. `--mode=export` copies this file into the export folder as predict.py,
beside model.jaxexport, plan.json and runtime/ (the prediction core it imports).

    python predict.py IMAGE.nii.gz LABELS.nii.gz
    python predict.py IMAGE.npy LABELS.npy --spacing=SX,SY,SZ
"""

import argparse
import json
import logging
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def load_model(folder: str = HERE):
    """(predict_fn: windows -> probabilities, plan) of an export folder."""
    import jax

    with open(os.path.join(folder, "plan.json")) as f:
        plan = json.load(f)
    with open(os.path.join(folder, plan["export"]["model_file"]), "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    call = jax.jit(exported.call)
    return (lambda windows: np.asarray(call(np.asarray(windows, np.float32)))), plan


def _read(path: str, spacing: str):
    """(image (x, y, z, c) float32, spacing, NIfTI image or None) of a .npy or NIfTI file."""
    if path.endswith(".npy"):
        if not spacing:
            sys.exit(f"predict.py: error: {path}: a .npy input needs --spacing=SX,SY,SZ (mm)")
        image = np.load(path).astype(np.float32)
        return (image[..., None] if image.ndim == 3 else image), \
            tuple(float(s) for s in spacing.split(",")), None
    import nibabel as nib

    img = nib.load(path)
    image = np.asarray(img.get_fdata(dtype=np.float32))
    return (image[..., None] if image.ndim == 3 else image), \
        tuple(float(s) for s in img.header.get_zooms()[:3]), img


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("input", help="IMAGE.nii.gz / .nii (3D or 4D) or IMAGE.npy")
    p.add_argument("output", help="LABELS.nii.gz or LABELS.npy")
    p.add_argument("--spacing", default="", help="voxel spacing of a .npy input, mm")
    args = p.parse_args(argv)
    # stdlib logging, not absl: the runner needs nothing beyond jax, numpy and scipy.
    logging.basicConfig(level=logging.INFO, format="predict.py: %(message)s")
    sys.path.insert(0, os.path.join(HERE, "runtime"))
    import prediction

    predict_fn, plan = load_model()
    image, spacing, img = _read(args.input, args.spacing)
    if image.shape[-1] != int(plan["num_channels"]):
        sys.exit(f"predict.py: error: {args.input}: has {image.shape[-1]} channel(s), the "
                 f"model expects {plan['num_channels']}")
    try:
        labels, _ = prediction.predict_case(predict_fn, image, spacing, plan)
    except ValueError as e:
        sys.exit(f"predict.py: error: {args.input}: {e}")
    if args.output.endswith(".npy"):
        np.save(args.output, labels)
    else:
        import nibabel as nib

        affine = img.affine if img is not None else np.diag([*spacing, 1.0])
        nib.save(nib.Nifti1Image(labels, affine), args.output)
    logging.info("%s -> %s: labels %s", args.input, args.output,
                 sorted(np.unique(labels).tolist()))


if __name__ == "__main__":
    main()
