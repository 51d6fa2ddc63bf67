"""XLA:CPU flags against a derived-network step and a search iteration: compile and step time.

Each flag set runs in its own subprocess (XLA_FLAGS is read once, at backend start), with
no persistent compile cache, on the steps of experiments/profile_step.py:

    python experiments/bench_xla_flags.py --what=derived --size 64 --width 16
    python experiments/bench_xla_flags.py --what=search --size 48 --width 16

Prints a markdown table (compile s, step s, ratios to the default flags) for BENCHMARKS.md.
Not a test.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAG_SETS = {
    "default": "",
    "opt level 1": "--xla_backend_optimization_level=1",
    "opt level 0": "--xla_backend_optimization_level=0",
    "no expensive LLVM passes": "--xla_llvm_disable_expensive_passes=true",
    "XNNPACK on": "--xla_cpu_use_xnnpack=true",
    "XNNPACK greedy graph fusion": "--xla_cpu_use_xnnpack=true "
                                   "--xla_cpu_experimental_xnn_graph_fusion_mode="
                                   "XNN_GRAPH_FUSION_MODE_GREEDY",
    "oneDNN on": "--xla_cpu_use_onednn=true",
    "XNNPACK dots": "--xla_cpu_use_xnnpack=true --xla_cpu_experimental_xnn_fusion_type="
                    "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
    "XNNPACK convolutions": "--xla_cpu_use_xnnpack=true --xla_cpu_experimental_xnn_fusion_type="
                            "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
    "XNNPACK dots + convolutions": "--xla_cpu_use_xnnpack=true "
                                   "--xla_cpu_experimental_xnn_fusion_type="
                                   "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,"
                                   "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
    "XNNPACK dots + convolutions + opt level 1": "--xla_cpu_use_xnnpack=true "
                                   "--xla_cpu_experimental_xnn_fusion_type="
                                   "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,"
                                   "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION "
                                   "--xla_backend_optimization_level=1",
}


def child(args):
    """Compiles and times one step under the XLA_FLAGS of this process; prints JSON."""
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    sys.path.insert(0, ROOT)
    import jax

    import profile_step

    ns = argparse.Namespace(size=args.size, width=args.width, classes=4, seed=args.seed,
                            genotype="", impl=args.impl)
    fn, state, inputs = (profile_step.search_step if args.what == "search"
                         else profile_step.derived_step)(ns)
    start = time.time()
    compiled = fn.lower(state, *inputs(0)).compile()
    compile_s = time.time() - start
    state = jax.block_until_ready(compiled(state, *inputs(0)))
    times = []
    for i in range(args.steps):
        t = time.time()
        state = jax.block_until_ready(compiled(state, *inputs(i + 1)))
        times.append(time.time() - t)
    print(json.dumps({"compile_s": compile_s, "step_s": min(times)}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--what", choices=["search", "derived"], default="derived")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--impl", default="fast")
    p.add_argument("--sets", default=",".join(FLAG_SETS), help="comma list of FLAG_SETS keys")
    p.add_argument("--child", action="store_true")
    args = p.parse_args()
    if args.child:
        return child(args)
    rows = []
    for name in args.sets.split(","):
        env = {**os.environ, "XLA_FLAGS": FLAG_SETS[name], "JAX_ENABLE_COMPILATION_CACHE": "0",
               "JAX_PLATFORMS": "cpu"}
        cmd = [sys.executable, __file__, "--child", f"--what={args.what}", f"--size={args.size}",
               f"--width={args.width}", f"--seed={args.seed}", f"--steps={args.steps}",
               f"--impl={args.impl}"]
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if run.returncode:
            rows.append((name, None, run.stderr.strip().splitlines()[-1][:120]))
        else:
            rows.append((name, json.loads(run.stdout.strip().splitlines()[-1]), ""))
        print(name, rows[-1][1] or rows[-1][2], flush=True)
    base = rows[0][1]
    print(f"\n{args.what} step, {args.size}^3, width {args.width}, batch 2, impl {args.impl}\n")
    print("| XLA flags | compile s | step s | compile / default | step / default |")
    print("|---|---|---|---|---|")
    for name, r, err in rows:
        if r is None:
            print(f"| {name} | failed: {err} | | | |")
            continue
        print(f"| {name} | {r['compile_s']:.1f} | {r['step_s']:.3f} | "
              f"{r['compile_s'] / base['compile_s']:.2f} | {r['step_s'] / base['step_s']:.2f} |")


if __name__ == "__main__":
    main()
