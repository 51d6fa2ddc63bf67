"""jaxnas's default flow against MONAI's UNet recipe at equal wall-clock, on one demo task.

    python experiments/compare_peers.py --task=demo_spatial   (or --task=demo)

1. jaxnas default flow: `python -m jaxnas.main --flagfile=<task>.flags` (planner,
   SCNAS search, fine-tune, evaluation), timed end to end.
2. jaxnas 3D U-ResNet: --mode=train --architecture=uresnet, same budget and split; and
   jaxnas's port of MONAI's UNet (--architecture=unet), the recipe's network trained with
   jaxnas's planned recipe, so that network and recipe are told apart.
3. MONAI UNet (experiments/peer_unet.py in .venv-peers) for the wall-clock jaxnas took.
Then every system's held-out predictions are written in the ORIGINAL voxel grid (jaxnas
via --mode=predict) and scored by one scorer (`dice_table`, jaxnas.metrics). Prints a
markdown table for BENCHMARKS.md and writes runs/peers/<task>/table.md and results.json.
The peers venv (torch CPU + monai + nibabel) is made on first use by
bench_peers.ensure_peers_venv; it is never a project dependency.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import nibabel as nib
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jaxnas import metrics  # noqa: E402
from jaxnas.data import msd  # noqa: E402


def _run(cmd, log_path):
    print("$", " ".join(cmd), flush=True)
    start = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=os.path.join(ROOT, "experiments"), stdout=log,
                              stderr=subprocess.STDOUT, text=True, check=False,
                              env={**os.environ, "PYTHONPATH": ROOT})
    if proc.returncode:
        sys.exit(f"compare_peers: {cmd[2:4]} failed, see {log_path}")
    return time.time() - start


def dice_table(pred_dir: str, data_dir: str, case_ids, num_classes: int) -> dict:
    """Dice per class (mean over cases) of <pred_dir>/<case>.nii.gz vs labelsTr, original grid."""
    dataset = msd.read_dataset(data_dir)
    labels = {c.case_id: c.label_path for c in dataset.cases}
    per_case = []
    for case in case_ids:
        pred = np.asarray(nib.load(os.path.join(pred_dir, f"{case}.nii.gz")).dataobj)
        true = np.asarray(nib.load(labels[case]).dataobj)
        if pred.shape != true.shape:
            raise ValueError(f"{case}: prediction {pred.shape} vs label {true.shape}")
        per_case.append(metrics.dice_per_class(pred.astype(np.int64), true.astype(np.int64),
                                               num_classes))
    mean = np.nanmean(np.array(per_case), axis=0)
    return {"dice_per_class": mean.tolist(), "dice_mean_foreground": float(np.nanmean(mean[1:]))}


def _predict(workdir, data_dir, case_ids, out_dir, log_path):
    dataset = msd.read_dataset(data_dir)
    images = {c.case_id: c.image_path for c in dataset.cases}
    inputs = tempfile.mkdtemp(prefix="peer_inputs")
    for case in case_ids:
        os.symlink(images[case], os.path.join(inputs, os.path.basename(images[case])))
    _run([sys.executable, "-m", "jaxnas.main", "--mode=predict", f"--workdir={workdir}",
          f"--input={inputs}", f"--output={out_dir}", "--overwrite"], log_path)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--task", default="demo_spatial", choices=["demo", "demo_spatial"])
    p.add_argument("--out", default="")
    p.add_argument("--skip", default="",
                   help="comma list of rows to skip: scratch,uresnet,unet,monai")
    args = p.parse_args()
    out = os.path.abspath(args.out or os.path.join(ROOT, "runs", "peers", args.task))
    os.makedirs(out, exist_ok=True)
    data_dir = os.path.join(ROOT, "data", args.task)
    flagfile = f"{args.task}.flags"
    py = sys.executable
    results = {}

    jax_dir = os.path.join(out, "jaxnas")
    wall = _run([py, "-m", "jaxnas.main", f"--flagfile={flagfile}", f"--workdir={jax_dir}"],
                os.path.join(out, "jaxnas.log"))
    with open(os.path.join(jax_dir, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(jax_dir, "splits.json")) as f:
        val_ids = json.load(f)[0]["val"]
    with open(os.path.join(jax_dir, "plan.json")) as f:
        plan = json.load(f)
    num_classes = int(plan["num_classes"])
    budget = json.load(open(os.path.join(jax_dir, "planned.json")))["budget_minutes"]
    _predict(jax_dir, data_dir, val_ids, os.path.join(out, "pred_jaxnas"),
             os.path.join(out, "predict_jaxnas.log"))
    results["jaxnas default flow (SCNAS search + fine-tune)"] = {
        **dice_table(os.path.join(out, "pred_jaxnas"), data_dir, val_ids, num_classes),
        "params": summary["derived"]["params"], "wall_seconds": round(wall, 1)}

    searched = summary.get("searched_theta")
    if searched:  # The searched Theta alone, scored by the search on the preprocessed grid.
        results["  (same run: searched Theta before fine-tuning, preprocessed grid)"] = {
            "dice_per_class": list(searched["dice_per_class"].values()),
            "dice_mean_foreground": searched["dice_mean_foreground"],
            "params": summary["derived"]["params"], "wall_seconds": round(wall, 1)}

    def train_row(name, architecture, title):
        """A jaxnas --mode=train run on the same split and budget, predicted and scored."""
        workdir = os.path.join(out, name)
        seconds = _run([py, "-m", "jaxnas.main", f"--flagfile={flagfile}",
                        f"--workdir={workdir}", "--mode=train", f"--architecture={architecture}",
                        f"--splits_file={os.path.join(jax_dir, 'splits.json')}"],
                       os.path.join(out, f"{name}.log"))
        _predict(workdir, data_dir, val_ids, os.path.join(out, f"pred_{name}"),
                 os.path.join(out, f"predict_{name}.log"))
        with open(os.path.join(workdir, "summary.json")) as f:
            params = json.load(f)["derived"]["params"]
        results[title] = {
            **dice_table(os.path.join(out, f"pred_{name}"), data_dir, val_ids, num_classes),
            "params": params, "wall_seconds": round(seconds, 1)}

    if "scratch" not in args.skip:
        train_row("scratch", os.path.join(jax_dir, "genotype.json"),
                  "jaxnas searched genotype trained from scratch (same budget)")
    if "uresnet" not in args.skip:
        train_row("uresnet", "uresnet", "jaxnas 3D U-ResNet (train mode, same budget)")
    if "unet" not in args.skip:
        train_row("unet", "unet", "jaxnas port of MONAI's UNet, jaxnas recipe (train mode, "
                  "same budget)")

    if "monai" not in args.skip:
        sys.path.insert(0, os.path.join(ROOT, "experiments"))
        import bench_peers  # noqa: E402  (makes .venv-peers: torch CPU + monai)

        bench_peers.ensure_peers_venv(skip_install=False)
        peers_py = os.path.join(ROOT, ".venv-peers", "bin", "python")
        subprocess.run([peers_py, "-m", "pip", "install", "-q", "nibabel"], check=True)
        log = os.path.join(out, "monai.log")
        spacing = ",".join(str(v) for v in plan["target_spacing"])
        wall_m = _run([peers_py, os.path.join(ROOT, "experiments", "peer_unet.py"),
                       f"--data_dir={data_dir}", f"--splits={os.path.join(jax_dir, 'splits.json')}",
                       "--fold=0", f"--spacing={spacing}", f"--minutes={wall / 60:.3f}",
                       f"--output={os.path.join(out, 'pred_monai')}"], log)
        peer = json.loads([line for line in open(log) if line.startswith("PEER_JSON ")][-1][9:])
        results["MONAI UNet 16-256, 2 res units (same wall-clock)"] = {
            **dice_table(os.path.join(out, "pred_monai"), data_dir, val_ids, num_classes),
            "params": peer["params"], "wall_seconds": round(wall_m, 1), "steps": peer["steps"]}

    names = [plan["labels"][str(k)] for k in range(num_classes)]
    lines = [f"| system | {' | '.join(f'Dice {n}' for n in names[1:])} | mean fg | params | "
             "wall min |", "|---" * (len(names) + 3) + "|"]
    for name, r in results.items():
        cells = [f"{d:.3f}" for d in r["dice_per_class"][1:]]
        lines.append(f"| {name} | {' | '.join(cells)} | {r['dice_mean_foreground']:.3f} | "
                     f"{r['params'] / 1e6:.2f}M | {r['wall_seconds'] / 60:.1f} |")
    table = "\n".join(lines)
    print(f"\n{args.task}, fold 0 ({len(val_ids)} held-out cases, original grid), "
          f"budget {budget} min:\n{table}")
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
