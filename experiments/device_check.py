"""One command for a lent accelerator: what runs, how fast, in how much memory.

    python experiments/device_check.py                       # GPU sizes (128^3, width 32)
    python experiments/device_check.py --size=16 --width=4 --volume=32 --smoke_size=16
                                                              # the CPU smoke (tests)

Stages, each in its own subprocess under its own time limit (a stage that runs out is
reported as such and the next one starts), the JSON rewritten after every stage so a
short lease still leaves numbers in --out (default experiments/device_check.json):

- env: jax version, backend, devices, whether a CUDA plugin is installed (run.sh's
  install path on a GPU machine).
- scnas_fast, scnas_xla, darts_fast, darts_xla: one bi-level iteration (Theta then alpha
  step) at --size^3, batch 1, 4 channels, 4 classes, --width; time per iteration, compile
  time and peak device memory (GPU: the allocator's peak; CPU: XLA's temp buffer size).
  fp32 only: there is no bf16 compute option yet.
- sliding: sliding-window prediction of a --volume^3 volume with a --size^3 window
  (a random genotype's derived network): seconds and peak memory.
- smoke: a 20-step SCNAS search at --smoke_size^3 through `python -m jaxnas.main` on a
  synthetic MSD task; checks that it wrote every output.

Not a test itself; tests/device_check_test.py runs it at the CPU size.
"""

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jaxnas.io import fileio  # noqa: E402  (plain Python: the parent never loads jax)
STAGES = ("env", "scnas_fast", "scnas_xla", "darts_fast", "darts_xla", "sliding", "smoke")
LIMITS = {"env": 20, "scnas_fast": 40, "scnas_xla": 40, "darts_fast": 35, "darts_xla": 35,
          "sliding": 30, "smoke": 40}  # Seconds, compile included: 4 min in all at most.
OUTPUTS = ("genotype.json", "summary.json", "model.json", "plan.json", "final")


def _peak_bytes(compiled=None):
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    if compiled is not None:  # CPU: no allocator statistics.
        return int(compiled.memory_analysis().temp_size_in_bytes)
    return None


def stage_env(args):
    import importlib.util

    import jax

    from jaxnas import main as jaxnas_main

    plugins = [p for p in jaxnas_main.GPU_PLUGINS if importlib.util.find_spec(p) is not None]
    return {"jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "cuda_plugins": plugins,
            "cuda_install_ok": bool(plugins) and jax.default_backend() == "gpu"}


def stage_search(args, method, impl):
    import jax
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    import bench_search
    from jaxnas.nn import losses
    from jaxnas.search import bilevel
    from jaxnas.spaces.scnas import network

    shape = (1, args.size, args.size, args.size)
    params = network.init_network(jax.random.key(0), in_channels=4, num_classes=4,
                                  width=args.width)
    arch = bilevel.init_arch(jax.random.key(1), scale=1.0)
    rng = np.random.default_rng(0)
    batches = [{"image": jnp.asarray(rng.normal(size=shape + (4,)), jnp.float32),
                "label": jnp.asarray(rng.integers(0, 4, size=shape), jnp.int32)}
               for _ in range(2)]
    tx_w, tx_a = bilevel.make_optimizers(lr_w=1e-3, betas_w=(0.9, 0.999))
    apply = network.apply_network_dense if method == "darts" else network.apply_network
    iteration = bench_search.make_iteration(
        functools.partial(apply, impl=impl), bench_search.SAMPLERS[method], tx_w, tx_a,
        functools.partial(losses.dice_ce, num_classes=4))
    inputs = (params, arch, tx_w.init(params), tx_a.init(arch), *batches, jax.random.key(2))
    start = time.time()
    compiled = jax.jit(iteration).lower(*inputs).compile()
    compile_s = time.time() - start
    jax.block_until_ready(compiled(*inputs))
    times = []
    for r in range(3):
        start = time.time()
        jax.block_until_ready(compiled(*inputs[:-1], jax.random.key(10 + r)))
        times.append(time.time() - start)
    return {"size": args.size, "width": args.width, "impl": impl, "dtype": "float32",
            "compile_s": round(compile_s, 2), "iteration_s": round(min(times), 4),
            "peak_bytes": _peak_bytes(compiled)}


def stage_sliding(args):
    import jax
    import numpy as np

    from jaxnas import inference
    from jaxnas import models
    from jaxnas import phases

    desc = models.describe("random:0", in_channels=4, num_classes=4, width=args.width)
    model = models.build(desc, impl=phases.resolve_impl("auto"))
    params = model.init(jax.random.key(0))
    predict = models.probabilities_fn(model, params)
    volume = np.random.default_rng(0).normal(size=(args.volume,) * 3 + (4,)).astype(np.float32)
    window = (args.size,) * 3
    start = time.time()
    scores = inference.sliding_window_predict(predict, volume, window=window, num_classes=4,
                                              overlap=0.5, batch_size=2, gaussian=True)
    seconds = time.time() - start
    return {"volume": args.volume, "window": args.size, "seconds_with_compile": round(seconds, 2),
            "windows": len(inference.window_starts(volume.shape[:3], window, 0.5)),
            "output_shape": list(scores.shape), "peak_bytes": _peak_bytes()}


def stage_smoke(args):
    sys.path.insert(0, ROOT)
    from tests import fixtures

    tmp = tempfile.mkdtemp(prefix="device_check")
    data_dir, workdir = os.path.join(tmp, "task"), os.path.join(tmp, "run")
    n = args.smoke_size + 8
    fixtures.write_tiny_msd(data_dir, num_cases=4, shape=(n, n, n), channels=1)
    cmd = [sys.executable, "-m", "jaxnas.main", "--mode=search", f"--data_dir={data_dir}",
           f"--workdir={workdir}", f"--patch_size={','.join([str(args.smoke_size)] * 3)}",
           "--batch_size=1", f"--width={args.width}", "--num_epochs=10",
           "--steps_per_epoch=2", "--num_folds=4", "--log_every=5", "--ckpt_every=10",
           "--budget_minutes=0"]
    start = time.time()
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ROOT})
    missing = [o for o in OUTPUTS if not os.path.exists(os.path.join(workdir, o))]
    events = [f for f in os.listdir(workdir) if f.startswith("events.out")] \
        if os.path.isdir(workdir) else []
    result = {"steps": 20, "size": args.smoke_size, "seconds": round(time.time() - start, 1),
              "returncode": run.returncode, "missing_outputs": missing,
              "event_files": len(events), "ok": run.returncode == 0 and not missing}
    if run.returncode:
        result["stderr_tail"] = run.stderr[-600:]
    return result


def child(args):
    if args.stage == "env":
        result = stage_env(args)
    elif args.stage == "sliding":
        result = stage_sliding(args)
    elif args.stage == "smoke":
        result = stage_smoke(args)
    else:
        method, impl = args.stage.split("_")
        result = stage_search(args, method, impl)
    print("DEVICE_CHECK " + json.dumps(result), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--volume", type=int, default=256)
    p.add_argument("--smoke_size", type=int, default=128)
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--limit_scale", type=float, default=1.0,
                   help="multiplies every stage's time limit")
    p.add_argument("--out", default=os.path.join(ROOT, "experiments", "device_check.json"))
    p.add_argument("--stage", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.stage:
        return child(args)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "args": {
        k: getattr(args, k) for k in ("size", "width", "volume", "smoke_size")}, "stages": {}}
    stages = args.stages.split(",")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        sys.exit(f"device_check: --stages: unknown stage {unknown[0]!r}; known: {STAGES}")
    for stage in stages:
        limit = LIMITS[stage] * args.limit_scale
        cmd = [sys.executable, os.path.abspath(__file__), f"--stage={stage}",
               f"--size={args.size}", f"--width={args.width}", f"--volume={args.volume}",
               f"--smoke_size={args.smoke_size}"]
        start = time.time()
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=limit,
                                 env={**os.environ, "PYTHONPATH": ROOT})
            lines = [l for l in run.stdout.splitlines() if l.startswith("DEVICE_CHECK ")]
            if run.returncode == 0 and lines:
                result = {"status": "ok", **json.loads(lines[-1][len("DEVICE_CHECK "):])}
            else:
                result = {"status": "failed", "stderr_tail": run.stderr[-600:]}
        except subprocess.TimeoutExpired:
            result = {"status": f"timed out after {limit:.0f} s"}
        result["stage_seconds"] = round(time.time() - start, 1)
        report["stages"][stage] = result
        print(f"{stage}: {json.dumps(result)}", flush=True)
        fileio.write_json(args.out, report)  # After every stage: a cut lease keeps the rest.
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
