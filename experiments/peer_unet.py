"""MONAI's UNet recipe on one fold of an MSD task, for a wall-clock budget (peers venv only).

Run by experiments/compare_peers.py as `.venv-peers/bin/python experiments/peer_unet.py
--data_dir D --splits W/splits.json --fold 0 --spacing x,y,z --minutes M --output O`.
Never imported by jaxnas. The recipe (the standard one the project is measured against):
UNet channels 16-32-64-128-256, strides 2, 2 residual units, instance norm; 64^3 patches,
batch 2, RandCropByPosNegLabeld pos:neg 1:1; DiceCELoss (softmax, one-hot, background
included, MONAI's default); Adam 1e-3; sliding window overlap 0.5, Gaussian. The same
preprocessing grid as jaxnas (its target spacing), z-scored inside the nonzero region.
Held-out predictions are resampled back to each case's original grid and written as
<case>.nii.gz in --output, with the input affine, so one scorer reads both systems.
"""

import argparse
import json
import os
import time

import nibabel as nib
import numpy as np
import torch
from monai import transforms as mt
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss

from peers_monai import build_unet  # the recipe's UNet, the one jaxnas ports


def _cases(data_dir, ids):
    with open(os.path.join(data_dir, "dataset.json")) as f:
        dataset = json.load(f)
    by_id = {os.path.basename(e["image"]).split(".nii")[0]: e for e in dataset["training"]}
    return [{"image": os.path.join(data_dir, by_id[i]["image"]),
             "label": os.path.join(data_dir, by_id[i]["label"]), "id": i} for i in ids], dataset


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data_dir", required=True)
    p.add_argument("--splits", required=True)
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--spacing", required=True)
    p.add_argument("--minutes", type=float, required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    start = time.time()
    torch.manual_seed(args.seed)
    torch.set_num_threads(os.cpu_count() or 2)
    spacing = [float(v) for v in args.spacing.split(",")]
    with open(args.splits) as f:
        fold = json.load(f)[args.fold]
    train, dataset = _cases(args.data_dir, fold["train"])
    val, _ = _cases(args.data_dir, fold["val"])
    k = len(dataset["labels"])
    keys = ["image", "label"]
    base = [mt.LoadImaged(keys), mt.EnsureChannelFirstd(keys),
            mt.Spacingd(keys, pixdim=spacing, mode=("bilinear", "nearest")),
            mt.CropForegroundd(keys, source_key="image"),
            mt.NormalizeIntensityd("image", nonzero=True, channel_wise=True)]
    crop = mt.RandCropByPosNegLabeld(keys, label_key="label", spatial_size=(64, 64, 64),
                                     pos=1, neg=1, num_samples=2, allow_smaller=True)
    pad = mt.SpatialPadd(keys, spatial_size=(64, 64, 64))
    cached = [mt.Compose(base)(c) for c in train]  # Preprocess once (CacheDataset's job).
    model = build_unet(16, k)  # channels 16-256, 1 channel in
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    rng = np.random.default_rng(args.seed)
    crop.set_random_state(seed=args.seed)
    # Training gets the budget less the time a sliding-window pass over the held-out
    # cases takes; measured on the first case after training would be too late, so
    # 12% is kept back, as the jaxnas planner does.
    deadline = start + 60.0 * args.minutes * 0.88
    steps = 0
    model.train()
    while time.time() < deadline:
        case = cached[rng.integers(len(cached))]
        samples = crop(pad(case))
        image = torch.stack([s["image"] for s in samples]).float()
        label = torch.stack([s["label"] for s in samples]).float()
        opt.zero_grad()
        loss = loss_fn(model(image), label)
        loss.backward()
        opt.step()
        steps += 1
        if steps % 50 == 0:
            print(f"[monai] step {steps} loss {loss.item():.4f} "
                  f"{steps / (time.time() - start):.2f} steps/s", flush=True)
    train_seconds = time.time() - start
    model.eval()
    os.makedirs(args.output, exist_ok=True)
    infer = mt.Compose(base[:1] + base[1:2] + [
        mt.Spacingd(keys, pixdim=spacing, mode=("bilinear", "nearest")),
        mt.CropForegroundd(keys, source_key="image"),
        mt.NormalizeIntensityd("image", nonzero=True, channel_wise=True)])
    inverter = mt.Invertd(keys="pred", transform=infer, orig_keys="image",
                          nearest_interp=False)
    with torch.no_grad():
        for c in val:
            item = infer(c)
            logits = sliding_window_inference(item["image"][None].float(), (64, 64, 64), 2,
                                              model, overlap=0.5, mode="gaussian")
            item["pred"] = torch.softmax(logits[0], 0)
            probs = inverter(item)["pred"]
            pred = np.asarray(torch.argmax(probs, 0)).astype(np.uint8)
            src = nib.load(c["image"])
            nib.save(nib.Nifti1Image(pred, src.affine), os.path.join(args.output,
                                                                      f"{c['id']}.nii.gz"))
    params = sum(p.numel() for p in model.parameters())
    print("PEER_JSON " + json.dumps({"steps": steps, "train_seconds": round(train_seconds, 1),
                                     "wall_seconds": round(time.time() - start, 1),
                                     "params": int(params)}), flush=True)


if __name__ == "__main__":
    main()
