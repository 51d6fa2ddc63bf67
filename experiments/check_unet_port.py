"""jaxnas's UNet port (jaxnas/baselines/unet.py) against MONAI's UNet on the same weights.

    python experiments/check_unet_port.py [--size 32] [--width 16]

Builds monai.networks.nets.UNet (the recipe's call) in `.venv-peers` with random
weights, runs it on a random image, and writes weights, image and logits to a temporary
.npz; then loads the weights into the jaxnas param tree (by MONAI's module names), runs
both impls, and prints the parameter counts and the largest logit difference. Exit 1 if
the counts differ or a difference exceeds --atol.
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PEER_CODE = r"""
import sys, numpy as np, torch
out, size, width, c_in, k, here = sys.argv[1], *map(int, sys.argv[2:6]), sys.argv[6]
sys.path.insert(0, here)
from peers_monai import build_unet
torch.manual_seed(0)
net = build_unet(width, k, c_in).eval()
with torch.no_grad():  # PReLU slopes away from 0.25 so that the mapping of each is tested
    for name, p in net.named_parameters():
        if name.endswith("adn.A.weight"):
            p.uniform_(0.05, 0.5)
image = torch.randn(1, c_in, size, size, size)
with torch.no_grad():
    logits = net(image)
arrays = {"w:" + n: v.numpy() for n, v in net.state_dict().items()}
np.savez(out, image=image.numpy(), logits=logits.numpy(),
         count=sum(p.numel() for p in net.parameters()), **arrays)
"""


def to_jaxnas(weights: dict, *, in_channels: int, num_classes: int, width: int):
    """The jaxnas param tree of MONAI's state_dict (names as MONAI registers them)."""
    from jaxnas.baselines import unet

    def conv(prefix):
        w = weights[prefix + ".weight"]
        w = w.transpose(2, 3, 4, 1, 0) if w.shape[2:] != (1, 1, 1) else w[:, :, 0, 0, 0].T
        return {"w": w, "b": weights[prefix + ".bias"]}

    def unit(prefix, with_act=True):
        p = conv(prefix + ".conv")
        if with_act:
            p["prelu"] = weights[prefix + ".adn.A.weight"] - unet.PRELU_INIT
        return p

    def residual(prefix, spec):
        p = {"units": [unit(f"{prefix}.conv.unit{i}", "prelu" in s)
                       for i, s in enumerate(spec["units"])]}
        if "shortcut" in spec:
            p["shortcut"] = conv(prefix + ".residual")
        return p

    spec = unet.unet_spec(in_channels=in_channels, num_classes=num_classes, width=width)
    prefixes = ["model"]  # level l's Sequential(down, SkipConnection, up)
    for _ in range(unet.NUM_LEVELS - 1):
        prefixes.append(prefixes[-1] + ".1.submodule")
    params = {"down": [], "up": []}
    for level in range(unet.NUM_LEVELS - 1):
        params["down"].append(residual(prefixes[level] + ".0", spec["down"][level]))
        up = prefixes[level] + ".2"
        transpose = unit(up + ".0")
        transpose["w"] = weights[up + ".0.conv.weight"].transpose(2, 3, 4, 0, 1)
        params["up"].append({"transpose": transpose,
                             "unit": residual(up + ".1", spec["up"][level]["unit"])})
    params["bottom"] = residual(prefixes[-1], spec["bottom"])
    return params


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32, help="cube side, divisible by 16")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--in_channels", type=int, default=1)
    parser.add_argument("--num_classes", type=int, default=3)
    parser.add_argument("--atol", type=float, default=1e-3)
    args = parser.parse_args()
    peers = os.path.join(ROOT, ".venv-peers", "bin", "python")
    if not os.path.exists(peers):
        sys.exit(f"{peers} not found: run experiments/bench_peers.py once to create it")
    import jax
    import jax.numpy as jnp

    from jaxnas.baselines import unet
    from jaxnas.nn import ops

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "monai.npz")
        subprocess.run([peers, "-c", PEER_CODE, path, str(args.size), str(args.width),
                        str(args.in_channels), str(args.num_classes),
                        os.path.join(ROOT, "experiments")], check=True)
        data = dict(np.load(path))
    weights = {n[2:]: v for n, v in data.items() if n.startswith("w:")}
    params = jax.tree.map(jnp.asarray, to_jaxnas(
        weights, in_channels=args.in_channels, num_classes=args.num_classes,
        width=args.width))
    ours = ops.num_spec_params(unet.unet_spec(in_channels=args.in_channels,
                                              num_classes=args.num_classes, width=args.width))
    print(f"parameters: MONAI {int(data['count'])}, jaxnas {ours}")
    image = jnp.asarray(data["image"].transpose(0, 2, 3, 4, 1))
    want = data["logits"].transpose(0, 2, 3, 4, 1)
    ok = ours == int(data["count"])
    for impl in ops.IMPLS:
        got = jax.jit(lambda p, x, impl=impl: unet.apply_unet(p, x, impl=impl))(params, image)
        diff = float(np.max(np.abs(np.asarray(got) - want)))
        print(f"impl={impl}: max |logit difference| {diff:.2e} (logits' max |value| "
              f"{float(np.max(np.abs(want))):.2f})")
        ok &= diff <= args.atol
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
