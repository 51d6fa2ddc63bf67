"""The MONAI side of experiments/bench_peers.py; runs under .venv-peers (torch + monai).

Never imported by jaxnas and never run with the project's .venv: bench_peers.py starts it
as `.venv-peers/bin/python experiments/peers_monai.py --part search|sliding|train ...` and reads
the one line that starts with `PEERS_JSON ` (everything else on stdout, such as MONAI's
own prints, is passed through as log).

- search: one DiNTS search iteration as in MONAI's DiNTS tutorial (automl/DiNTS/
  search_dints.py), float32 on the CPU (the tutorial's AMP is CUDA-only): a weights step
  (SGD on the network weights, DiceCELoss on one batch) and an architecture step (Adam on
  log_alpha_a and log_alpha_c, DiceCELoss on another batch + the entropies of both alphas
  + |ram_cost_factor - ram usage / full ram| + 0.001 * topology entropy).
  channel_mul defaults to "auto": the k / 32 (k = 1..16) whose parameter count (weights,
  alphas excluded) is nearest --target_params (the parent passes our supernet's).
- sliding: monai.inferers.sliding_window_inference (mode "constant") of a MONAI UNet
  (channels c..16c, strides 2, 2, 2, 2, 2 residual units, instance norm: the network
  jaxnas/baselines/unet.py ports) on a (1, 1, v, v, v) volume; c = --unet_width.
- train: one training step of the same UNet (DiceCELoss, Adam 1e-3) on a batch of
  (--batch, 1, s, s, s) random images and labels, s = --size.
"""

import argparse
import json
import math
import os
import sys
import time


def _fail(message):
    print(f"peers_monai: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def _log(message):
    print(f"[monai] {message}", flush=True)


def _num_params(module, exclude=()):
    return int(sum(p.numel() for n, p in module.named_parameters()
                   if not any(e in n for e in exclude)))


def _nearest(build, count, candidates, target):
    """(candidate, model, params) whose params are nearest target in log ratio.

    Param counts grow with the candidate, so the walk stops past the target.
    """
    best = None
    for cand in candidates:
        model = build(cand)
        n = count(model)
        score = abs(math.log(n / target))
        if best is None or score < best[3]:
            best = (cand, model, n, score)
        if n >= target:
            break
    return best[:3]


def bench_search(args, torch, monai):
    import torch.nn.functional as F  # noqa: N812
    from monai.networks.nets import DiNTS, TopologySearch

    factor = 2 ** (args.dints_depths + int(args.dints_downsample))
    if args.size % factor:
        _fail(f"DiNTS needs the patch divisible by 2**(num_depths + use_downsample) = {factor}; "
              f"got {args.size} (lower --dints_depths)")

    def build(channel_mul):
        space = TopologySearch(channel_mul=channel_mul, num_blocks=args.dints_blocks,
                               num_depths=args.dints_depths,
                               use_downsample=args.dints_downsample, device="cpu")
        return DiNTS(dints_space=space, in_channels=1, num_classes=args.classes,
                     use_downsample=args.dints_downsample)

    def count(model):
        return _num_params(model, exclude=("log_alpha",))

    if args.dints_channel_mul == "auto":
        channel_mul, model, params = _nearest(build, count, [k / 32 for k in range(1, 17)],
                                              args.target_params)
    else:
        channel_mul = float(args.dints_channel_mul)
        model = build(channel_mul)
        params = count(model)
    space = model.dints_space
    _log(f"DiNTS channel_mul {channel_mul} num_blocks {args.dints_blocks} num_depths "
         f"{args.dints_depths} use_downsample {args.dints_downsample} filters "
         f"{space.filter_nums} ops {list(type(space.cell_tree['(0, 0)']).OPS3D)}: "
         f"{params} weight params")
    model.train()
    weights = [p for n, p in model.named_parameters() if "log_alpha" not in n]
    alphas = [space.log_alpha_a, space.log_alpha_c]
    loss_func = monai.losses.DiceCELoss(include_background=False, to_onehot_y=True, softmax=True,
                                        squared_pred=True, batch=True, smooth_nr=1e-5,
                                        smooth_dr=1e-5)
    opt_w = torch.optim.SGD(weights, lr=2e-4, momentum=0.9, weight_decay=4e-5)
    opt_a = torch.optim.Adam([space.log_alpha_a], lr=1e-3, betas=(0.5, 0.999))
    opt_c = torch.optim.Adam([space.log_alpha_c], lr=1e-3, betas=(0.5, 0.999))
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, 1, args.size, args.size, args.size)
    batches = [(torch.randn(shape, generator=gen),
                torch.randint(0, args.classes, shape, generator=gen).float()) for _ in range(2)]

    def iteration():
        (x_w, y_w), (x_a, y_a) = batches
        # Weights step (alphas frozen).
        for p in weights:
            p.requires_grad_(True)
        for p in alphas:
            p.requires_grad_(False)
        opt_w.zero_grad()
        loss_w = loss_func(model(x_w), y_w)
        loss_w.backward()
        opt_w.step()
        # Architecture step (weights frozen), the tutorial's regularised loss.
        for p in weights:
            p.requires_grad_(False)
        for p in alphas:
            p.requires_grad_(True)
        probs_a, _ = space.get_prob_a(child=True)
        entropy_a = -(probs_a * torch.log(probs_a + 1e-5)).mean()
        entropy_c = -(F.softmax(space.log_alpha_c, dim=-1)
                      * F.log_softmax(space.log_alpha_c, dim=-1)).mean()
        topology_loss = space.get_topology_entropy(probs_a)
        ram_full = space.get_ram_cost_usage(x_w.shape, full=True)
        ram_usage = space.get_ram_cost_usage(x_w.shape)
        ram_loss = torch.abs(args.ram_cost_factor - ram_usage / ram_full)
        opt_a.zero_grad()
        opt_c.zero_grad()
        loss_a = loss_func(model(x_a), y_a)
        loss_a = loss_a + (entropy_a + entropy_c) + ram_loss + 0.001 * topology_loss
        loss_a.backward()
        opt_a.step()
        opt_c.step()
        return loss_w.detach().item(), loss_a.detach().item()

    start = time.perf_counter()
    losses = iteration()  # Warm-up.
    first_s = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        losses = iteration()
        times.append(time.perf_counter() - start)
    step_s = sum(times) / len(times)
    _log(f"search step {step_s:.3f} s (first {first_s:.2f} s), losses w {losses[0]:.4f} "
         f"a {losses[1]:.4f}")
    return {"step_s": step_s, "first_s": first_s, "times": times, "params": params,
            "channel_mul": channel_mul, "filters": list(space.filter_nums),
            "num_blocks": args.dints_blocks, "num_depths": args.dints_depths,
            "use_downsample": bool(args.dints_downsample), "loss_w": losses[0],
            "loss_a": losses[1]}


def bench_sliding(args, torch, monai):
    from monai.inferers import sliding_window_inference

    width, model, params = _unet(args)
    model.eval()
    gen = torch.Generator().manual_seed(0)
    volume = torch.randn((1, 1, args.volume, args.volume, args.volume), generator=gen)
    roi = (args.roi,) * 3

    def predict():
        with torch.inference_mode():
            return sliding_window_inference(volume, roi, args.sw_batch, model,
                                            overlap=args.overlap, mode="constant")

    start = time.perf_counter()
    out = predict()  # Warm-up.
    first_s = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = predict()
        times.append(time.perf_counter() - start)
    run_s = sum(times) / len(times)
    voxels = args.volume**3
    _log(f"sliding window {run_s:.3f} s per volume, {voxels / run_s:.0f} voxels/s, "
         f"output {tuple(out.shape)}")
    return {"run_s": run_s, "first_s": first_s, "times": times, "voxels_per_s": voxels / run_s,
            "params": params, "unet_width": width}


def build_unet(width: int, classes: int, in_channels: int = 1):
    """The recipe's UNet (channels c..16c), the network jaxnas/baselines/unet.py ports;
    experiments/check_unet_port.py builds it here too."""
    from monai.networks.layers import Norm
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=in_channels, out_channels=classes,
                channels=tuple(width * 2**l for l in range(5)), strides=(2, 2, 2, 2),
                num_res_units=2, norm=Norm.INSTANCE)


def _unet(args):
    c = int(args.unet_width)
    model = build_unet(c, args.classes)
    params = _num_params(model)
    _log(f"UNet channels {c}..{16 * c} strides (2, 2, 2, 2) num_res_units 2: {params} params")
    return c, model, params


def bench_train(args, torch, monai):
    from monai.losses import DiceCELoss

    width, model, params = _unet(args)
    model.train()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, 1, args.size, args.size, args.size)
    image = torch.randn(shape, generator=gen)
    label = torch.randint(0, args.classes, (args.batch, 1, *shape[2:]), generator=gen)

    def step():
        optimizer.zero_grad()
        loss = loss_fn(model(image), label)
        loss.backward()
        optimizer.step()
        return float(loss)

    start = time.perf_counter()
    step()  # Warm-up.
    first_s = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    step_s = sorted(times)[len(times) // 2]
    _log(f"train step {step_s:.3f} s (median of {args.repeats})")
    return {"step_s": step_s, "first_s": first_s, "times": times, "params": params,
            "unet_width": width}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("search", "sliding", "train"), required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--target_params", type=int, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dints_channel_mul", default="auto")
    parser.add_argument("--dints_blocks", type=int, default=12)
    parser.add_argument("--dints_depths", type=int, default=4)
    parser.add_argument("--dints_downsample", action="store_true")
    parser.add_argument("--ram_cost_factor", type=float, default=0.2)
    parser.add_argument("--volume", type=int, default=96)
    parser.add_argument("--roi", type=int, default=32)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--sw_batch", type=int, default=4)
    parser.add_argument("--unet_width", type=int, default=16)
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    try:
        import torch
    except Exception as err:  # noqa: BLE001 - report any import failure plainly
        _fail(f"cannot import torch in {sys.executable}: {err!r}")
    try:
        import monai
    except Exception as err:  # noqa: BLE001
        _fail(f"cannot import monai in {sys.executable}: {err!r}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    _log(f"torch {torch.__version__} (cuda {torch.version.cuda}) monai {monai.__version__} "
         f"threads {torch.get_num_threads()} mkldnn {torch.backends.mkldnn.is_available()}")
    bench = {"search": bench_search, "sliding": bench_sliding, "train": bench_train}[args.part]
    result = bench(args, torch, monai)
    result.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                  monai=monai.__version__, threads=torch.get_num_threads(),
                  python=sys.version.split()[0])
    print("PEERS_JSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
