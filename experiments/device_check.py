"""One command for a lent accelerator: what runs, how fast, in how much memory.

    python experiments/device_check.py                       # GPU sizes (128^3, width 32)
    python experiments/device_check.py --size=16 --width=4 --volume=32 --smoke_size=16
                                                              # the CPU smoke (tests)

Stages, each in its own subprocess under its own time limit (a stage that runs out is
reported as such and the next one starts), the JSON rewritten after every stage so a
short lease still leaves numbers in --out (default experiments/device_check.json):

- env: jax version, backend, devices, whether a CUDA plugin is installed (run.sh's
  install path on a GPU machine).
- scnas_fast, scnas_xla, darts_fast, darts_xla: one bi-level iteration (the search's own
  Theta step, then its alpha step: `gradient_search.search_programs`) at --size^3,
  batch 1, --channels (4), --classes (4), --width; time per iteration, compile time and
  peak device memory (GPU: the allocator's peak; CPU: XLA's larger temp buffer size),
  with the planner's analytic activation estimate next to it (scnas; `--memory_gb`).
  fp32 only: there is no bf16 compute option yet.
- sliding: sliding-window prediction of a --volume^3 volume with a --size^3 window
  (a random genotype's derived network): seconds and peak memory.
- smoke: a 20-step SCNAS search at --smoke_size^3 through `python -m jaxnas.main` on a
  synthetic MSD task (tiny.flags' settings, impl xla); checks that it wrote every output.

Not a test itself; tests/device_check_test.py runs it at the CPU size.
"""

import argparse
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
    import dataclasses

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxnas import config as config_lib
    from jaxnas.search import bilevel
    from jaxnas.search.strategies import gradient_search
    from jaxnas.spaces.scnas import cost

    # The search's own steps (the settings of tiny.flags at --size and --width): what a
    # search runs, and at the CPU size the very programs the smoke and the tests compile.
    search = dataclasses.replace(config_lib.tiny().search, width=args.width,
                                 strategy=method, impl=impl)
    programs = gradient_search.search_programs(search, args.channels, args.classes,
                                               search.steps_per_epoch, False)
    shape = (1, args.size, args.size, args.size)
    rng = np.random.default_rng(0)
    batch_w, batch_a = ({"image": jnp.asarray(rng.normal(size=shape + (args.channels,)),
                                              jnp.float32),
                         "label": jnp.asarray(rng.integers(0, args.classes, size=shape),
                                              jnp.int32)} for _ in range(2))
    state = bilevel.init_state(programs.init_params(jax.random.key(0)), bilevel.init_arch(),
                               programs.tx_w, programs.tx_a)
    key = jax.random.key(2)
    start = time.time()
    step_w = programs.step_w.lower(state, batch_w, key).compile()
    step_a = programs.step_a.lower(state, batch_a, key).compile()
    compile_s = time.time() - start

    def iteration(state, r):
        key = jax.random.key(10 + r)  # The sampled methods' cost depends on the ops drawn.
        return step_a(step_w(state, batch_w, key)[0], batch_a, key)[0]

    state = jax.block_until_ready(iteration(state, 0))
    times = []
    for r in range(3):
        start = time.time()
        state = jax.block_until_ready(iteration(state, r + 1))
        times.append(time.time() - start)
    peaks = [_peak_bytes(c) for c in (step_w, step_a)]
    # The planner's analytic figure (--memory_gb), next to what was measured.
    estimate = cost.supernet_activation_bytes(
        in_channels=args.channels, num_classes=args.classes, width=args.width,
        patch_size=shape[1:], batch_size=1, stem_stride=search.stem_stride)
    return {"size": args.size, "width": args.width, "channels": args.channels,
            "classes": args.classes, "impl": impl, "dtype": "float32",
            "compile_s": round(compile_s, 2), "iteration_s": round(min(times), 4),
            "peak_bytes": max(peaks) if None not in peaks else None,
            "estimate_bytes": int(estimate) if method == "scnas" else None}


def stage_sliding(args):
    import jax
    import numpy as np

    from jaxnas import inference
    from jaxnas import models
    from jaxnas import phases

    desc = models.describe("random:0", in_channels=args.channels, num_classes=args.classes,
                           width=args.width)
    model = models.build(desc, impl=phases.resolve_impl("auto"))
    params = model.init(jax.random.key(0))
    predict = models.probabilities_fn(model, params)
    volume = np.random.default_rng(0).normal(size=(args.volume,) * 3 + (args.channels,))
    volume = volume.astype(np.float32)
    window = (args.size,) * 3
    start = time.time()
    scores = inference.sliding_window_predict(predict, volume, window=window,
                                              num_classes=args.classes,
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
    # tiny.flags' settings (as stage_search): at the CPU size the tests' programs.
    cmd = [sys.executable, "-m", "jaxnas.main", "--mode=search", f"--data_dir={data_dir}",
           f"--workdir={workdir}", f"--patch_size={','.join([str(args.smoke_size)] * 3)}",
           "--batch_size=1", f"--width={args.width}", "--num_epochs=10",
           "--steps_per_epoch=2", "--lr_w=0.001", "--betas_w=0.9,0.999",
           "--eval_batch_size=1", "--num_folds=4", "--log_every=5", "--ckpt_every=10",
           "--budget_minutes=0", "--impl=xla"]
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
    p.add_argument("--channels", type=int, default=4, help="image channels (modalities)")
    p.add_argument("--classes", type=int, default=4, help="labels, background included")
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
        k: getattr(args, k) for k in ("size", "width", "volume", "smoke_size", "channels",
                                      "classes")}, "stages": {}}
    stages = args.stages.split(",")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        sys.exit(f"device_check: --stages: unknown stage {unknown[0]!r}; known: {STAGES}")
    for stage in stages:
        limit = LIMITS[stage] * args.limit_scale
        cmd = [sys.executable, os.path.abspath(__file__), f"--stage={stage}",
               f"--size={args.size}", f"--width={args.width}", f"--volume={args.volume}",
               f"--smoke_size={args.smoke_size}", f"--channels={args.channels}",
               f"--classes={args.classes}"]
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
