"""Tiny synthetic MSD task folders for tests."""

import json
import os

import nibabel as nib
import numpy as np


def make_case(rng, shape=(12, 12, 8), channels=2):
    """A blob of foreground (labels 1, 2) inside a nonzero head, zero border."""
    image = np.zeros(shape + (channels,), np.float32)
    label = np.zeros(shape, np.uint8)
    inner = tuple(slice(2, n - 2) for n in shape)
    image[inner] = rng.normal(100.0, 10.0, size=image[inner].shape)
    centre = tuple(n // 2 for n in shape)
    label[tuple(slice(c - 2, c + 2) for c in centre)] = 1
    label[tuple(slice(c - 1, c + 1) for c in centre)] = 2
    image[label > 0] += 50.0
    return image, label


def write_nifti(path, array, spacing=(1.0, 1.0, 1.0)):
    nib.save(nib.Nifti1Image(array, np.diag(list(spacing) + [1.0])), path)


def write_tiny_msd(root, num_cases=3, shape=(12, 12, 8), channels=2, spacings=None, seed=0,
                   modalities=None):
    """Writes dataset.json, imagesTr/, labelsTr/ and a stray `._junk.nii.gz`.

    Returns the dataset.json dict. Case i has spacing spacings[i] (default 1 mm);
    modalities: the channels' names (default mod0, mod1, ...).
    """
    rng = np.random.default_rng(seed)
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    training = []
    for i in range(num_cases):
        spacing = spacings[i] if spacings else (1.0, 1.0, 1.0)
        image, label = make_case(rng, shape, channels)
        name = f"case_{i:03d}.nii.gz"
        write_nifti(os.path.join(root, "imagesTr", name), image if channels > 1 else image[..., 0],
                    spacing)
        write_nifti(os.path.join(root, "labelsTr", name), label, spacing)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    # macOS archive side-car: must never be read, since we never glob.
    with open(os.path.join(root, "imagesTr", "._junk.nii.gz"), "wb") as f:
        f.write(b"\x00\x05\x16\x07 not an image")
    meta = {"name": "Tiny", "tensorImageSize": "4D" if channels > 1 else "3D",
            "modality": {str(c): (modalities[c] if modalities else f"mod{c}")
                         for c in range(channels)},
            "labels": {"0": "background", "1": "outer", "2": "core"},
            "numTraining": num_cases, "numTest": 0, "training": training, "test": []}
    write_json(os.path.join(root, "dataset.json"), meta)
    return meta


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def random_ronasmis_choice(rng) -> np.ndarray:
    """A uniformly random RONASMIS child, int32 (len(ronasmis.DECISIONS),)."""
    from jaxnas.spaces import ronasmis

    return np.asarray([rng.integers(n) for n in ronasmis.VOCAB_SIZES], np.int32)


def conv_macs_in_jaxpr(jaxpr) -> float:
    """Multiply-adds of every conv and matmul XLA is given, upsampling (resize) excluded.

    The reference the analytic cost functions (cost.py, ronasmis, c2fnas, uresnet, unet) are
    checked against: it reads the traced program, not the code that counts.
    """
    import jax.extend

    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape  # DHWIO
            # A transposed conv (dilated input) counts its taps per input voxel, not per
            # zero-inserted one.
            dilated = np.prod(eqn.params["lhs_dilation"])
            total += np.prod(eqn.outvars[0].aval.shape) * np.prod(rhs[:3]) * rhs[3] / dilated
        elif name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[d] for d in contract])
        if "resize" in str(eqn.params.get("name", "")):
            continue  # trilinear upsampling contracts axes with dense weights: not a conv
        for value in eqn.params.values():
            if isinstance(value, jax.extend.core.ClosedJaxpr):
                total += conv_macs_in_jaxpr(value.jaxpr)
            elif isinstance(value, jax.extend.core.Jaxpr):
                total += conv_macs_in_jaxpr(value)
    return float(total)


def kill_resume_matches_whole_run(test, cmd, *, cwd, env, copy=(), compare=("genotype.json",)):
    """Runs cmd(workdir) whole; runs it again, SIGKILLs it after its first checkpoint and
    reruns it; asserts the rerun resumed and that `compare` files and final/ params match
    the whole run bit for bit. `copy`: files of the whole run the killed one starts with
    (budget.json: the same planned step counts)."""
    import shutil
    import signal
    import subprocess
    import time

    import jax
    import orbax.checkpoint as ocp

    def checkpointed(workdir):
        ckpt = os.path.join(workdir, "ckpt")
        return os.path.isdir(ckpt) and any(n.isdigit() for n in os.listdir(ckpt))

    whole = test.create_tempdir().full_path
    run = subprocess.run(cmd(whole), cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=900)
    test.assertEqual(run.returncode, 0, run.stderr[-3000:])
    killed = test.create_tempdir().full_path
    for name in copy:
        shutil.copy(os.path.join(whole, name), killed)
    proc = subprocess.Popen(cmd(killed), cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not checkpointed(killed) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    test.assertTrue(checkpointed(killed))
    test.assertFalse(os.path.exists(os.path.join(killed, "summary.json")))
    rerun = subprocess.run(cmd(killed), cwd=cwd, env=env, capture_output=True, text=True,
                           timeout=900)
    test.assertEqual(rerun.returncode, 0, rerun.stderr[-3000:])
    test.assertIn("resumed from checkpoint", rerun.stderr)
    for name in compare:
        with open(os.path.join(whole, name)) as a, open(os.path.join(killed, name)) as b:
            test.assertEqual(json.load(a), json.load(b), name)
    params = [ocp.StandardCheckpointer().restore(os.path.join(w, "final"))
              for w in (whole, killed)]
    for a, b in zip(jax.tree.leaves(params[0]), jax.tree.leaves(params[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def assert_trained_params_match(test, params_a, params_b, *, lr, tight=1e-4,
                                max_loose_fraction=0.02):
    """Two trainings that should agree (one device against a mesh) end with the same
    params up to Adam's float noise: a gradient that is ~0 in both has a sign set by
    rounding, and Adam turns that sign into a whole +-lr step. So every element must be
    within 10 lr, and all but `max_loose_fraction` of them within `tight`; a real
    difference (another batch, a missing gradient mean) moves most elements."""
    import jax

    a = np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(params_a)])
    b = np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(params_b)])
    test.assertEqual(a.shape, b.shape)
    diff = np.abs(a - b)
    test.assertLessEqual(float(diff.max()), 10 * lr)
    loose = float(np.mean(diff > tight))
    test.assertLessEqual(loose, max_loose_fraction,
                         f"{loose:.1%} of {a.size} params differ by more than {tight}")
