"""The planner: a run's sizes and schedules from the dataset fingerprint and a time budget.

nnU-Net's idea in jaxnas's own rules. Pure functions: `fingerprint` summarises the
preprocessed cases; `plan` maps (fingerprint, budget, backend) to settings, each with the
reason it was chosen; `apply` writes them into a Config except where the user set the
flag (`Config.user_set`); `split_budget` turns measured step times into step counts.

Rules (why each):
- Patch: the median preprocessed shape rounded up to a multiple of 16, so one patch holds
  a whole typical case (context: left/right and which structure is where), shrunk
  isotropically when it exceeds the voxel cap of the budget and machine. The search
  trains the supernet (two ops per edge, 12 cells), far dearer per voxel than the
  derived network, so it gets a smaller cap; the derived network is fine-tuned and
  evaluated at the full patch (its params do not depend on the patch).
- Memory (--memory_gb > 0): both caps also keep a batch-2 step's activations within the
  budget, by the analytic estimate of spaces/scnas/cost.py calibrated against XLA's
  buffers: the supernet's for the search patch, the dearest derived network's (a conv on
  every edge) for the training patch, so whatever the search derives fits.
- Batch 2 (nnU-Net's minimum; with batch Dice, two patches stabilise the Dice term).
- Width: 16 under 2 hours, else 32 (the paper's). Width 8 gave node widths of 2-16
  channels and a 60k-parameter network that lost to a U-ResNet (BENCHMARKS.md).
- Width growth: node widths triple per level down under 2 hours (4, 12, 36, 108 at
  width 16), else double (the paper's). A level down has 8x fewer voxels, so coarse
  channels are cheap: the derived network has ~15x the parameters of the doubling
  schedule at ~1.2x the step time; on the spatial demo x3 scored 0.915 and 0.903 in two
  runs, x2 0.903 and x4 0.906 in one each (BENCHMARKS.md): a small gain at best.
- Loss: Dice over foreground classes (batch Dice) + cross-entropy, as nnU-Net: a Dice
  that includes background rewards predicting background everywhere on small structures.
- Schedules: a linear lr warm-up, then cosine decay to 0 over each phase; SCNAS phases
  Theta warm-up (15% of the search), then the bi-level search with tau and Gumbel noise
  annealed over its first 60%, so the sampled network is the argmax one for the last
  40%, where alpha is frozen and only Theta trains (schedules.py, gradient_search.py);
  then fine-tuning of the derived network: 70% of the training time
  under an hour (measured: a few hundred bi-level iterations barely move alpha, and the
  fine-tune is where the network learns), 40% above. Under an hour the search's Theta
  and alpha steps are one compiled program (one compile, a dearer alpha step).
- Sliding window: overlap 0.5 with Gaussian weights (nnU-Net), no mirroring (mirroring
  would swap left and right labels, and costs 8x the time).
"""

import dataclasses
import math

import numpy as np

from jaxnas import config as config_lib
from jaxnas import inference
from jaxnas.spaces.scnas import cost
from jaxnas.spaces.scnas import space

DIVISOR = 16  # Patch axes divisible by 8 (3 reductions) x 2 (the stride-2 stem).
# Patch voxel caps per budget minute on a CPU (with the stride-2 stem), from the step
# times measured on 2 cores (WORKSPACE.md): a 9-minute budget affords 48^3 supernet and
# 64^3 derived-network patches for a few hundred steps each.
CPU_SEARCH_VOXELS_PER_MIN = 48**3 / 9
CPU_TRAIN_VOXELS_PER_MIN = 64**3 / 9
MAX_VOXELS = {"search": 64**3, "train": 128**3}  # The paper's 128^3 on accelerators.
GROWTH_SHORT = 3  # Node width factor per level under 2 hours (measured; see `plan`).
SHORT_BUDGET_MINUTES = 60  # Below it, fine-tuning gets most of the training time.
EVAL_RESERVE = 0.12  # Share kept for evaluation when the search's share is set (a guess).
# The evaluation estimate a fine-tune is sized by, once its step time is measured:
FORWARD_SHARE = 0.4  # A window's forward pass / a training step's time per patch.
# Pictures, Dice, saving: 1.4 s of a 15.1 s evaluation (24 batches of windows) on the
# tissue demo on 2 CPU cores once the forward program is compiled ahead
# (phases.compile_eval_program); 3 s errs on the safe side.
EVAL_FIXED_SECONDS = 3.0
# The forward's compile, where it is not compiled ahead (on a mesh): 12 s in all was
# safe on the Intel machines, where the estimate with 25 s had overshot by 13-21 s.
EVAL_COMPILE_SECONDS = 9.0


def fingerprint(shapes, *, spacing, num_classes: int, num_channels: int) -> dict:
    """The dataset summary the rules read: median shape (after crop and resampling) etc."""
    shapes = np.asarray([tuple(s)[:3] for s in shapes], np.float64)
    return {"median_shape": [int(round(v)) for v in np.median(shapes, axis=0)],
            "num_cases": len(shapes), "spacing": [float(s) for s in spacing],
            "num_classes": int(num_classes), "num_channels": int(num_channels)}


def fit_patch(shape, max_voxels: float) -> tuple[int, int, int]:
    """shape rounded up to DIVISOR, shrunk isotropically until it has <= max_voxels."""
    shape = np.maximum(np.asarray(shape, np.float64), DIVISOR)
    scale = min(1.0, (max_voxels / np.prod(shape)) ** (1 / 3))
    while True:
        patch = tuple(int(max(DIVISOR, math.ceil(n * scale / DIVISOR) * DIVISOR))
                      for n in shape)
        if np.prod(patch) <= max_voxels or all(p == DIVISOR for p in patch):
            return patch
        scale *= 0.95


def memory_bytes_per_voxel(kind: str, *, fp: dict, width: int, stem_stride: int,
                           batch_size: int, width_growth: int = 2) -> float:
    """Activation bytes per patch voxel of a training step (cost.py, calibrated): kind
    "search" (the supernet) or "train" (the dearest derived network: a conv on every
    edge, so any genotype the search finds fits)."""
    kw = dict(in_channels=fp["num_channels"], num_classes=fp["num_classes"], width=width,
              patch_size=(64, 64, 64), batch_size=batch_size, stem_stride=stem_stride,
              width_growth=width_growth)
    if kind == "search":
        return cost.supernet_activation_bytes(**kw) / 64**3
    dearest = np.zeros((len(space.CELL_TYPES), space.NUM_EDGES), np.int32)  # conv_3x3x3
    return cost.derived_activation_bytes(dearest, **kw) / 64**3


def plan(fp: dict, *, budget_minutes: float, backend: str = "cpu",
         memory_gb: float = 0.0) -> dict:
    """{setting: (value, reason)} for a planned run (see the module docstring)."""
    cpu = backend == "cpu"
    median = fp["median_shape"]
    out = {}
    if cpu:
        caps = {"search": min(MAX_VOXELS["search"], CPU_SEARCH_VOXELS_PER_MIN * budget_minutes),
                "train": min(MAX_VOXELS["train"], CPU_TRAIN_VOXELS_PER_MIN * budget_minutes)}
    else:
        caps = dict(MAX_VOXELS)
    width, stem, batch = (16 if budget_minutes < 120 else 32), (2 if cpu else 1), 2
    growth = GROWTH_SHORT if budget_minutes < 120 else 2
    memory_note = {}
    if memory_gb > 0:
        for kind in caps:
            per_voxel = memory_bytes_per_voxel(kind, fp=fp, width=width, stem_stride=stem,
                                               batch_size=batch, width_growth=growth)
            fits = memory_gb * 2**30 / per_voxel
            memory_note[kind] = (per_voxel, fits < caps[kind])
            caps[kind] = min(caps[kind], fits)
    train_patch = fit_patch(median, caps["train"])
    search_patch = fit_patch(median, caps["search"])

    def memory_reason(kind, patch):
        if not memory_note:
            return ""
        per_voxel, binding = memory_note[kind]
        return (f"; activations ~{per_voxel * np.prod(patch) / 2**30:.2f} GiB of "
                f"--memory_gb={memory_gb:g}" + (" (the memory cap binds)" if binding else ""))

    whole = "holds the whole median case" if all(
        p >= m for p, m in zip(train_patch, median)) else "shrunk to the voxel cap"
    out["patch_size"] = (train_patch, f"median case {median} rounded up to {DIVISOR}; {whole} "
                         f"(cap {caps['train']:.0f} voxels on {backend})"
                         + memory_reason("train", train_patch))
    out["search_patch_size"] = (search_patch, f"supernet steps cost ~2-4x the derived "
                                f"network's per voxel: cap {caps['search']:.0f} voxels"
                                + memory_reason("search", search_patch))
    out["stem_stride"] = (stem, "cells on a grid half as fine plus a "
                          "full-resolution refinement: a cell network at full resolution "
                          "took 12.5 s per 80x96x80 batch-2 step on 2 CPU cores"
                          if cpu else "the paper's full-resolution network on an accelerator")
    out["batch_size"] = (batch, "nnU-Net's minimum; two patches steady the batch Dice")
    out["width"] = (width, f"{budget_minutes:g} min on {backend}: 16 below 2 h, else 32 "
                    "(paper). Small-channel steps are bound by memory traffic, not FLOPs: "
                    "on 2 CPU cores width 16 cost 1.07x width 8 per search iteration and "
                    "scored 0.840 vs 0.819 on the spatial demo")
    out["width_growth"] = (
        growth,
        f"node widths x{GROWTH_SHORT} per level down below 2 h, else x2 (paper): coarse "
        "grids have 8x fewer voxels a level, so their channels are cheap; on the spatial "
        "demo (9 min, 2 CPU cores) x3 scored 0.915 and 0.903 mean fg in two runs, x2 0.903 "
        "and x4 0.906 in one each")
    out["deep_supervision"] = (False, "off: loss heads on the 1/4 and 1/8 decoder levels "
                               "scored 0.893 against 0.900 without (spatial demo, 5 min "
                               "train mode, one run each)")
    out["dice_background"] = (False, "Dice over foreground classes: background-heavy "
                              "patches otherwise reward all-background output")
    out["batch_dice"] = (True, "Dice summed over the batch (nnU-Net): a class absent from "
                         "one patch does not give a 0/0 term")
    out["ce_weight"] = (1.0, "Dice + CE (nnU-Net): CE gives every voxel a gradient early on")
    out["lr_schedule"] = ("cosine", "linear warm-up, then cosine decay to 0 per phase")
    out["lr_w"] = (0.01, "Adam 1e-2 under warm-up and decay (3e-2 constant, the earlier demo "
                   "setting, diverged more often once patches grew)")
    out["betas_w"] = ((0.9, 0.999), "Adam's defaults (the paper's (0.1, 0.001) looks like a typo)")
    out["lr_a"] = (0.03, "alpha must move within a few hundred bi-level steps")
    out["warmup_fraction"] = (0.15, "Theta-only steps before alpha moves (ENAS/DARTS warm-up)")
    out["anneal_fraction"] = (0.6, "tau and Gumbel noise reach their floor after 60% of the "
                              "bi-level steps: the last 40% train the argmax network, "
                              "alpha frozen")
    out["tau_min"] = (0.01, "at 0.01 the pair weights are (1, <1e-4): one op per edge")
    short = budget_minutes < SHORT_BUDGET_MINUTES
    out["finetune_fraction"] = (
        0.7 if short else 0.4,
        "the derived network keeps the search's Theta and trains on every training case "
        "(Theta and alpha halves); " + (
            f"under {SHORT_BUDGET_MINUTES} min most of the time goes to it: on the spatial "
            "demo (9 min, 2 CPU cores) 0.7 scored 0.85-0.89 mean fg in two runs against "
            "0.840 with 0.4, as "
            "a supernet step costs ~2x a derived step per voxel and alpha barely moves in "
            "a few hundred iterations" if short else "long enough for the search to move alpha"))
    out["one_step_program"] = (
        short,
        ("the Theta and alpha steps compiled as one program under "
         f"{SHORT_BUDGET_MINUTES} min: on 2 CPU cores (48^3, width 16) two programs "
         "compiled in 126 s, one in 67 s, for an alpha step of 1.8 s against 1.1 s; "
         "a short search runs few alpha steps (20-31 at 9 min)") if short else
        "two programs: over a long search the alpha steps' extra cost (Theta's gradient, "
        "~0.7 s each on 2 CPU cores) outweighs one compile")
    out["augment"] = (True, "intensity scale/shift, gamma and noise per patch; no flips "
                      "(left/right labels)")
    out["augment_spatial"] = (
        not short,
        "rotation and scaling (nnU-Net's, smaller ranges) " + (
            f"off under {SHORT_BUDGET_MINUTES} min: on the spatial demo (6 min, train mode) it "
            "scored 0.858 against 0.880 without: a few hundred steps need the plain data"
            if short else "on for long runs, as nnU-Net (not measured at this length here)"))
    out["fg_fraction"] = (0.5, "half the patches centred on a voxel of a uniformly drawn "
                          "present class, so every class is seen")
    out["eval_overlap"] = (0.5, "nnU-Net's step of half a window")
    out["eval_gaussian"] = (True, "Gaussian weights (sigma = window / 8) hide window seams")
    out["eval_mirror"] = (False, "mirroring swaps left/right labels and costs 8x")
    return out


# Planned setting -> (Config section, field).
FIELDS = {
    "patch_size": ("data", "patch_size"), "search_patch_size": ("data", "search_patch_size"),
    "batch_size": ("data", "batch_size"), "augment": ("data", "augment"),
    "augment_spatial": ("data", "augment_spatial"),
    "fg_fraction": ("data", "fg_fraction"), "width": ("search", "width"),
    "stem_stride": ("search", "stem_stride"), "width_growth": ("search", "width_growth"),
    "deep_supervision": ("search", "deep_supervision"),
    "dice_background": ("search", "dice_background"), "batch_dice": ("search", "batch_dice"),
    "ce_weight": ("search", "ce_weight"), "lr_schedule": ("search", "lr_schedule"),
    "lr_w": ("search", "lr_w"), "betas_w": ("search", "betas_w"), "lr_a": ("search", "lr_a"),
    "warmup_fraction": ("search", "warmup_fraction"),
    "anneal_fraction": ("search", "anneal_fraction"), "tau_min": ("search", "tau_min"),
    "finetune_fraction": ("search", "finetune_fraction"),
    "one_step_program": ("search", "one_step_program"),
    "eval_overlap": ("eval", "overlap"), "eval_gaussian": ("eval", "gaussian"),
    "eval_mirror": ("eval", "mirror"),
}


def apply(config: config_lib.Config, planned: dict) -> tuple[config_lib.Config, dict]:
    """Config with the planned values, except flags the user gave; (config, record).

    record: {setting: {"value", "reason"}} with "set by flag" for the ones kept.
    """
    sections = {"data": {}, "search": {}, "eval": {}}
    record = {}
    for name, (value, reason) in planned.items():
        section, field = FIELDS[name]
        if name in config.user_set:
            record[name] = {"value": _json(getattr(getattr(config, section), field)),
                            "reason": "set by flag"}
            continue
        sections[section][field] = value
        record[name] = {"value": _json(value), "reason": reason}
    config = dataclasses.replace(
        config, data=dataclasses.replace(config.data, **sections["data"]),
        search=dataclasses.replace(config.search, **sections["search"]),
        eval=dataclasses.replace(config.eval, **sections["eval"]))
    return config, record


def _json(value):
    return list(value) if isinstance(value, tuple) else value


def steps_in(seconds: float, step_seconds: float, *, minimum: int = 10) -> int:
    """How many steps of step_seconds fit in seconds (at least `minimum`)."""
    return max(minimum, int(seconds / max(step_seconds, 1e-6)))


def eval_seconds(shapes, *, window, overlap: float, mirror: bool, step_seconds: float,
                 batch_size: int, passes: int = 1, compiled: bool = False) -> float:
    """Seconds a held-out evaluation of cases of `shapes` takes, from a training step's time.

    passes: how many networks are evaluated (the search also scores its searched Theta).
    compiled: the forward program is already compiled (else its compile is counted).
    """
    windows = sum(len(inference.window_starts(tuple(s)[:3], window, overlap)) for s in shapes)
    per_window = FORWARD_SHARE * step_seconds / batch_size * (8 if mirror else 1)
    fixed = EVAL_FIXED_SECONDS + (0.0 if compiled else EVAL_COMPILE_SECONDS)
    return fixed + passes * windows * per_window


def search_horizon(num_steps: int, *, warmup_fraction: float, anneal_fraction: float):
    """(warmup_end, anneal_end, total) of a planned search of num_steps iterations."""
    warm = int(round(num_steps * warmup_fraction))
    anneal_end = warm + int(round((num_steps - warm) * anneal_fraction))
    return warm, anneal_end, num_steps
