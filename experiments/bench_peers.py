"""Benchmark against MONAI: our SCNAS search step vs DiNTS, our sliding window vs MONAI's.

Each comparison is a ratio measured in one run on this machine. Our side runs in this
process (the project's .venv); the MONAI side runs as a subprocess with the Python of a
SEPARATE virtualenv `.venv-peers` (torch CPU build + monai, never a project dependency),
executing experiments/peers_monai.py, which prints one `PEERS_JSON {...}` line. The parts
run one after the other (ours, then MONAI's), never at the same time. torch gets as many
threads as JAX's XLA:CPU pool (the schedulable cores).

1. search: one bi-level iteration, mean over --repeats after a warm-up. Ours:
   bilevel.make_steps (weights_step then arch_step with the same key, each jitted and
   donating the state, as in modes/bilevel.py), dice + CE loss, at --size^3, batch 1, 1 channel
   in, 3 classes, width --width. MONAI: TopologySearch + DiNTS as in MONAI's DiNTS
   tutorial (a weights step, then an architecture step whose loss adds both alpha
   entropies, the RAM-cost loss and 0.001 * topology entropy), float32. By default DiNTS
   gets num_blocks 12 (our 12 cells), num_depths 4 without the stem downsampling (our
   resolutions 1, 1/2, 1/4, 1/8) and the channel_mul (k / 32) whose parameter count is
   nearest our supernet's (at width 8: filters 2, 4, 8, 16, our node widths).
2. sliding: sliding-window inference of a --volume^3 volume, roi --roi^3, overlap 0.5,
   4 windows per batch, constant (uniform) blending, no test-time flips, the same
   network on both sides: MONAI's UNet (channels c..16c, strides 2 x 4, 2 residual
   units, instance norm; c = --unet_width), ported as jaxnas.baselines.unet (checked
   against MONAI on the same weights by experiments/check_unet_port.py). Ours:
   inference.sliding_window_predict with the jitted port; MONAI: monai.inferers.
   sliding_window_inference. Voxels per second, mean over --repeats after a warm-up
   (ours: the warm-up includes the compile).
3. train: one training step of that UNet at --train_size^3, batch --train_batch (Dice +
   CE, Adam 1e-3; ours jitted, donating params and optimizer state), median of --repeats
   after a warm-up.

Not a test: numbers go to BENCHMARKS.md. Prints a markdown table, then the last line
`peers search_time_ratio=X sliding_throughput_ratio=Y train_time_ratio=Z` (X, Z = ours /
MONAI step time, below 1 means ours faster; Y = ours / MONAI voxels per second, above 1
means ours faster).

    python experiments/bench_peers.py --size 32 --width 8 --repeats 5 --volume 96

Torch's OpenMP threads degrade badly when the cores are shared with other jobs; run it on
an otherwise idle machine.
"""

import argparse
import functools
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PEERS_VENV = os.path.join(ROOT, ".venv-peers")
PEERS_SCRIPT = os.path.join(ROOT, "experiments", "peers_monai.py")
TORCH_WANTED = "2.13.*"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
NUM_CLASSES = 3
CORES = len(os.sched_getaffinity(0))


class PeersError(RuntimeError):
    """The MONAI side could not be set up or run."""


# --- The .venv-peers virtualenv ---


def _peers_python():
    return os.path.join(PEERS_VENV, "bin", "python")


def _run(cmd, what):
    """Runs cmd; returns (ok, combined output)."""
    print(f"$ {' '.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          check=False)
    if proc.returncode:
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        print(f"  {what} failed (exit {proc.returncode}):\n{tail}", flush=True)
    else:
        done = [l for l in proc.stdout.splitlines() if l.startswith("Successfully installed")]
        print(f"  {done[-1] if done else what + ': ok'}", flush=True)
    return proc.returncode == 0, proc.stdout


def _peers_versions():
    """{"torch", "cuda", "monai", "python"} of .venv-peers, or None if torch/monai don't import."""
    code = ("import json, sys, torch, monai; print(json.dumps({'torch': torch.__version__, "
            "'cuda': torch.version.cuda, 'monai': monai.__version__, "
            "'python': sys.version.split()[0]}))")
    proc = subprocess.run([_peers_python(), "-c", code], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, check=False)
    if proc.returncode:
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ensure_peers_venv(skip_install: bool) -> dict:
    """Creates .venv-peers with torch (2.13, CPU build when available) and monai if needed."""
    if os.path.exists(_peers_python()):
        versions = _peers_versions()
        if versions is not None:
            print(f"using existing {PEERS_VENV}", flush=True)
            return versions
        if skip_install:
            raise PeersError(f"--skip_install: {PEERS_VENV} exists but cannot import torch and "
                             "monai; rerun without --skip_install")
    elif skip_install:
        raise PeersError(f"--skip_install given but {PEERS_VENV} does not exist; rerun without it")
    if not os.path.exists(_peers_python()):
        ok, _ = _run([sys.executable, "-m", "venv", PEERS_VENV], "creating the virtualenv")
        if not ok:
            raise PeersError(f"could not create {PEERS_VENV} with {sys.executable} -m venv")
    pip = [_peers_python(), "-m", "pip", "install", "--disable-pip-version-check"]
    attempts = [
        (f"torch=={TORCH_WANTED} from the package index", [f"torch=={TORCH_WANTED}"]),
        (f"torch=={TORCH_WANTED} CPU build", [f"torch=={TORCH_WANTED}", "--index-url",
                                               TORCH_CPU_INDEX]),
        ("the newest torch 2.x", ["torch>=2,<3"]),
    ]
    for what, extra in attempts:
        ok, _ = _run(pip + extra, f"installing {what}")
        if ok:
            break
    else:
        raise PeersError("could not install torch into .venv-peers (tried: "
                         + "; ".join(w for w, _ in attempts) + "); see the pip output above")
    code = "import torch; print(torch.__version__)"
    proc = subprocess.run([_peers_python(), "-c", code], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, check=False)
    if proc.returncode:
        raise PeersError(f"torch installed but does not import:\n{proc.stderr[-2000:]}")
    torch_version = proc.stdout.strip()
    if not torch_version.startswith("2.13"):
        print(f"NOTE: torch {TORCH_WANTED} unavailable, using torch {torch_version}", flush=True)
    # Pin the torch just installed so monai's requirements cannot swap it.
    ok, _ = _run(pip + ["monai", f"torch=={torch_version}"], "installing monai")
    if not ok:
        raise PeersError(f"could not install monai next to torch {torch_version}; see above")
    versions = _peers_versions()
    if versions is None:
        raise PeersError("torch and monai installed but `import torch, monai` fails in "
                         f"{_peers_python()}")
    return versions


def run_monai(part: str, threads: int, target_params: int, extra: list[str]) -> dict:
    """Runs peers_monai.py for one part; returns its JSON result."""
    cmd = [_peers_python(), PEERS_SCRIPT, "--part", part, "--threads", str(threads),
           "--target_params", str(target_params), "--classes", str(NUM_CLASSES), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.pop("PYTHONPATH", None)
    print(f"$ {' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    result = None
    for line in proc.stdout:
        if line.startswith("PEERS_JSON "):
            result = json.loads(line[len("PEERS_JSON "):])
        elif "Length of input patch is recommended" not in line:  # MONAI's chatter
            print(f"  {line.rstrip()}", flush=True)
    if proc.wait() or result is None:
        raise PeersError(f"the MONAI side ({part}) failed with exit {proc.returncode}; see above")
    return result


# --- Our side ---


def bench_ours_search(args, impl):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxnas.nn import losses
    from jaxnas.search import bilevel
    from jaxnas.spaces.scnas import network

    params = network.init_network(jax.random.key(0), in_channels=1, num_classes=NUM_CLASSES,
                                  width=args.width)
    num_params = network.num_params(params)
    print(f"ours: SCNAS supernet width {args.width}: {num_params} params", flush=True)
    tx_w, tx_a = bilevel.make_optimizers()
    loss_fn = functools.partial(losses.dice_ce, num_classes=NUM_CLASSES, ce_weight=1.0)
    step_w, step_a = bilevel.make_steps(
        apply_fn=functools.partial(network.apply_network, impl=impl), loss_fn=loss_fn,
        tx_w=tx_w, tx_a=tx_a, tau_fn=bilevel.make_tau_fn(1))
    step_w, step_a = jax.jit(step_w, donate_argnums=0), jax.jit(step_a, donate_argnums=0)
    state = bilevel.init_state(params, bilevel.init_arch(jax.random.key(1), scale=1.0), tx_w, tx_a)
    shape = (args.batch,) + (args.size,) * 3
    rng = np.random.default_rng(0)
    batch_w, batch_a = [
        {"image": jnp.asarray(rng.normal(size=shape + (1,)), jnp.float32),
         "label": jnp.asarray(rng.integers(0, NUM_CLASSES, size=shape), jnp.int32)}
        for _ in range(2)]

    def iteration(state, r):
        key = jax.random.key(100 + r)  # One sample Z for both steps, new per iteration.
        state, m_w = step_w(state, batch_w, key)
        state, m_a = step_a(state, batch_a, key)
        jax.block_until_ready((state, m_w, m_a))
        return state, float(m_w["train/loss_w"]), float(m_a["train/loss_a"])

    start = time.perf_counter()
    state, _, _ = iteration(state, 0)  # Warm-up: compiles both steps.
    first_s = time.perf_counter() - start
    times = []
    for r in range(args.repeats):
        start = time.perf_counter()
        state, loss_w, loss_a = iteration(state, r + 1)
        times.append(time.perf_counter() - start)
    step_s = float(np.mean(times))
    print(f"ours: search step {step_s:.3f} s (first, with compile {first_s:.1f} s), losses "
          f"w {loss_w:.4f} a {loss_a:.4f}", flush=True)
    return {"step_s": step_s, "first_s": first_s, "params": num_params}


def _ours_unet(args):
    import jax

    from jaxnas.baselines import unet
    from jaxnas.nn import ops

    params = unet.init_unet(jax.random.key(0), in_channels=1, num_classes=NUM_CLASSES,
                            width=args.unet_width)
    num_params = ops.num_spec_params(
        unet.unet_spec(in_channels=1, num_classes=NUM_CLASSES, width=args.unet_width))
    print(f"ours: UNet port width {args.unet_width}: {num_params} params", flush=True)
    return params, num_params


def bench_ours_train(args, impl):
    import jax
    import numpy as np
    import optax

    from jaxnas.baselines import unet
    from jaxnas.nn import losses

    params, num_params = _ours_unet(args)
    optimizer = optax.adam(1e-3)
    rng = np.random.default_rng(0)
    shape = (args.train_batch, *(args.train_size,) * 3)
    image = rng.normal(size=(*shape, 1)).astype(np.float32)
    label = rng.integers(0, NUM_CLASSES, size=shape).astype(np.int32)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state):
        def loss_fn(p):
            return losses.dice_ce(unet.apply_unet(p, image, impl=impl), label,
                                  num_classes=NUM_CLASSES, ce_weight=1.0)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    state = (params, optimizer.init(params))
    start = time.perf_counter()
    *state, loss = step(*state)
    loss.block_until_ready()
    first_s = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        *state, loss = step(*state)
        loss.block_until_ready()
        times.append(time.perf_counter() - start)
    step_s = sorted(times)[len(times) // 2]
    print(f"ours: train step {step_s:.3f} s (first, with compile {first_s:.1f} s)", flush=True)
    return {"step_s": step_s, "first_s": first_s, "params": num_params}


def bench_ours_sliding(args, impl):
    import jax
    import numpy as np

    from jaxnas import inference
    from jaxnas.baselines import unet

    params, num_params = _ours_unet(args)
    apply = jax.jit(functools.partial(unet.apply_unet, impl=impl))

    def predict_fn(x):
        return apply(params, x)

    volume = np.random.default_rng(0).normal(size=(args.volume,) * 3 + (1,)).astype(np.float32)
    window = (args.roi,) * 3
    windows = len(inference.window_starts(volume.shape[:3], window, args.overlap))

    def predict():
        return inference.sliding_window_predict(predict_fn, volume, window=window,
                                                num_classes=NUM_CLASSES, overlap=args.overlap,
                                                batch_size=args.sw_batch)

    start = time.perf_counter()
    out = predict()  # Warm-up: compiles the network once (every batch has one shape).
    first_s = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = predict()
        times.append(time.perf_counter() - start)
    run_s = float(np.mean(times))
    voxels = args.volume**3
    print(f"ours: sliding window {run_s:.3f} s per volume ({windows} windows), "
          f"{voxels / run_s:.0f} voxels/s, first {first_s:.1f} s, output {out.shape}",
          flush=True)
    return {"run_s": run_s, "first_s": first_s, "voxels_per_s": voxels / run_s,
            "params": num_params, "windows": windows}


# --- Report ---


def _ratio(a, b):
    return a / b if b else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32, help="search patch edge")
    parser.add_argument("--width", type=int, default=8,
                        help="our supernet width and U-ResNet width (MONAI matched to params)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--volume", type=int, default=96, help="sliding-window volume edge")
    parser.add_argument("--roi", type=int, default=32)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--sw_batch", type=int, default=4)
    parser.add_argument("--only", choices=("search", "sliding", "train"), default=None)
    parser.add_argument("--unet_width", type=int, default=16,
                        help="the UNet of the sliding and train parts: channels c..16c")
    parser.add_argument("--train_size", type=int, default=64)
    parser.add_argument("--train_batch", type=int, default=2)
    parser.add_argument("--skip_install", action="store_true",
                        help="use the existing .venv-peers, install nothing")
    parser.add_argument("--impl", default="auto")
    parser.add_argument("--dints_channel_mul", default="auto")
    parser.add_argument("--dints_blocks", type=int, default=12)
    parser.add_argument("--dints_depths", type=int, default=4)
    parser.add_argument("--dints_downsample", action="store_true",
                        help="DiNTS stem downsampling (the tutorial's; resolutions 1/2..1/16)")
    args = parser.parse_args()
    parts = [args.only] if args.only else ["search", "sliding", "train"]

    try:
        versions = ensure_peers_venv(args.skip_install)
    except PeersError as err:
        sys.exit(f"bench_peers: MONAI side unavailable: {err}")

    import jax

    from jaxnas import phases

    impl = phases.resolve_impl(args.impl)
    threads = CORES
    print(f"jax {jax.__version__} backend {jax.default_backend()} impl {impl}; torch "
          f"{versions['torch']} (cuda {versions['cuda']}) monai {versions['monai']} python "
          f"{versions['python']} in .venv-peers; threads: jax XLA:CPU pool = {CORES} "
          f"schedulable cores, torch.set_num_threads({threads})", flush=True)

    ours, peer = {}, {}
    try:
        if "search" in parts:
            ours["search"] = bench_ours_search(args, impl)
            dints = ["--size", str(args.size), "--batch", str(args.batch), "--repeats",
                     str(args.repeats), "--dints_channel_mul", args.dints_channel_mul,
                     "--dints_blocks", str(args.dints_blocks), "--dints_depths",
                     str(args.dints_depths)] + (["--dints_downsample"] if args.dints_downsample
                                                else [])
            peer["search"] = run_monai("search", threads, ours["search"]["params"], dints)
        if "sliding" in parts:
            ours["sliding"] = bench_ours_sliding(args, impl)
            sliding = ["--volume", str(args.volume), "--roi", str(args.roi), "--overlap",
                       str(args.overlap), "--sw_batch", str(args.sw_batch), "--repeats",
                       str(args.repeats)]
            peer["sliding"] = run_monai("sliding", threads, ours["sliding"]["params"],
                                        sliding + ["--unet_width", str(args.unet_width)])
        if "train" in parts:
            ours["train"] = bench_ours_train(args, impl)
            train = ["--size", str(args.train_size), "--batch", str(args.train_batch),
                     "--repeats", str(args.repeats), "--unet_width", str(args.unet_width)]
            peer["train"] = run_monai("train", threads, ours["train"]["params"], train)
    except PeersError as err:
        sys.exit(f"bench_peers: {err}")

    rows, search_ratio, sliding_ratio = [], float("nan"), float("nan")
    if "search" in parts:
        o, m = ours["search"], peer["search"]
        search_ratio = _ratio(o["step_s"], m["step_s"])
        rows += [
            (f"search step, {args.size}^3 batch {args.batch} (s, mean of {args.repeats})",
             f"{o['step_s']:.3f}", f"{m['step_s']:.3f}", f"{search_ratio:.3f}"),
            ("search first iteration (s; ours includes compile)", f"{o['first_s']:.1f}",
             f"{m['first_s']:.1f}", ""),
            ("search space params", f"{o['params']:,}", f"{m['params']:,}",
             f"{_ratio(o['params'], m['params']):.3f}"),
            ("search space", f"SCNAS supernet width {args.width}",
             f"DiNTS channel_mul {m['channel_mul']} blocks {m['num_blocks']} depths "
             f"{m['num_depths']} downsample {m['use_downsample']} filters {m['filters']}", ""),
        ]
    if "sliding" in parts:
        o, m = ours["sliding"], peer["sliding"]
        sliding_ratio = _ratio(o["voxels_per_s"], m["voxels_per_s"])
        rows += [
            (f"sliding window, {args.volume}^3 roi {args.roi}^3 overlap {args.overlap} "
             f"sw_batch {args.sw_batch} (s per volume)", f"{o['run_s']:.3f}",
             f"{m['run_s']:.3f}", f"{_ratio(o['run_s'], m['run_s']):.3f}"),
            ("sliding window throughput (voxels/s)", f"{o['voxels_per_s']:,.0f}",
             f"{m['voxels_per_s']:,.0f}", f"{sliding_ratio:.3f}"),
            ("sliding first volume (s; ours includes compile)", f"{o['first_s']:.1f}",
             f"{m['first_s']:.1f}", ""),
            ("sliding network params", f"{o['params']:,}", f"{m['params']:,}",
             f"{_ratio(o['params'], m['params']):.3f}"),
            ("sliding network", f"UNet port, channels {args.unet_width}.."
             f"{16 * args.unet_width}, {o['windows']} windows",
             f"UNet channels {m['unet_width']}..{16 * m['unet_width']}, 2 res units", ""),
        ]
    train_ratio = float("nan")
    if "train" in parts:
        o, m = ours["train"], peer["train"]
        train_ratio = _ratio(o["step_s"], m["step_s"])
        rows += [
            (f"UNet train step, {args.train_size}^3 batch {args.train_batch} (s, median of "
             f"{args.repeats})", f"{o['step_s']:.3f}", f"{m['step_s']:.3f}",
             f"{train_ratio:.3f}"),
            ("train first step (s; ours includes compile)", f"{o['first_s']:.1f}",
             f"{m['first_s']:.1f}", ""),
        ]
    print()
    print("| measurement | ours (jaxnas) | MONAI | ours/MONAI |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    fmt = lambda v: "n/a" if v != v else f"{v:.3f}"  # noqa: E731 - nan when not measured
    print(f"peers search_time_ratio={fmt(search_ratio)} "
          f"sliding_throughput_ratio={fmt(sliding_ratio)} train_time_ratio={fmt(train_ratio)}")


if __name__ == "__main__":
    main()
