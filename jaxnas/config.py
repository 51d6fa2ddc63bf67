"""Frozen run configuration. Owns every default; `main.py` turns flags into a `Config`.

No jax here: the config is plain data, written to the work dir as `config.json`.
"""

import dataclasses
import os


STRATEGIES = ("scnas", "gdas", "darts", "random", "ronasmis", "c2fnas")
# Hand-designed --architecture names: the SCNAS paper's 3D U-ResNet and MONAI's UNet.
BASELINES = ("uresnet", "unet")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    data_dir: str = ""
    cache_dir: str = ""  # Empty: <workdir>/preprocessed.
    spacing: tuple[float, float, float] | None = None  # None: median of the training cases.
    image_order: int = 3  # Spline order for image resampling (nnU-Net: cubic).
    patch_size: tuple[int, int, int] = (128, 128, 128)  # SCNAS brain and heart.
    batch_size: int = 1  # SCNAS.
    fg_fraction: float = 0.33  # nnU-Net: a third of the patches centred on foreground.
    num_folds: int = 5  # SCNAS: 5-fold cross-validation.
    fold: int = 0
    splits_file: str = ""  # A user's splits.json; empty: make one in the work dir.
    alpha_fraction: float = 0.5  # Share of the training cases that trains alpha.
    # The supernet's patch during a search; None: patch_size (the derived network's
    # fine-tune, train and sliding-window patch).
    search_patch_size: tuple[int, int, int] | None = None
    augment: bool = False  # Intensity scale/shift, gamma and noise per patch (patches.py).
    augment_spatial: bool = False  # Rotation and scaling per patch (patches.py).


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    width: int = 32  # Stem channels (SCNAS: 32); cell widths grow from it.
    # SCNAS space: scnas (2 ops per edge), gdas (1 op), darts (all 8 ops), random (train
    # num_candidates genotypes briefly, keep the best); ronasmis (RL controller, macro
    # U-Net space); c2fnas (topology, then ops). jaxnas/modes/search.py says what each runs.
    strategy: str = "scnas"
    impl: str = "auto"  # Op forms: "fast" (CPU), "xla" (GPU/cuDNN), "auto" by backend.
    num_epochs: int = 400  # SCNAS.
    steps_per_epoch: int = 0  # 0: one patch per Theta case per epoch.
    warmup_epochs: int = 0  # Theta-only epochs before alpha starts to move.
    lr_w: float = 0.025  # SCNAS Adam settings for Theta ...
    betas_w: tuple[float, float] = (0.1, 0.001)  # ... (b2 = 0.001 looks like a typo).
    lr_a: float = 0.003  # ... and for alpha.
    betas_a: tuple[float, float] = (0.5, 0.999)
    tau_rate: float = 0.025  # tau = max(tau_min, exp(-tau_rate * epoch)), SCNAS.
    tau_min: float = 0.001
    ce_weight: float = 0.0  # SCNAS: Dice only; 1.0 adds cross-entropy (nnU-Net).
    plateau_patience: int = 20  # Epochs without a better training loss before lr / 10.
    log_every: int = 10
    ckpt_every: int = 100
    # Strategy settings (each search's iteration budget stays num_epochs x steps_per_epoch).
    num_candidates: int = 8  # random: genotypes trained, each for 1/num_candidates.
    num_topologies: int = 32  # c2fnas: topologies sampled for the coarse stage.
    num_groups: int = 4  # c2fnas: groups of similar topologies, one shared supernet each.
    coarse_fraction: float = 0.5  # c2fnas: share of the iterations for the coarse stage.
    num_children: int = 20  # ronasmis: children rewarded per controller step (paper: 20).
    lr_controller: float = 3.5e-4  # ronasmis: Adam lr of the LSTM controller (ENAS).
    entropy_weight: float = 1e-4  # ronasmis: entropy bonus of the REINFORCE loss (ENAS).
    num_val_patches: int = 8  # Patches (one per case) scoring candidates by Dice.
    # Device mesh of the search / train steps, e.g. "data:2,space:2" (jaxnas.sharding);
    # "": one device. Here, not in DataConfig: it says how the steps run, like impl.
    mesh: str = ""
    # Planned runs (jaxnas.planner): > 0 turns the time budget (minutes, compile and
    # evaluation included) into step counts; 0 keeps num_epochs x steps_per_epoch.
    budget_minutes: float = 0.0
    # Planned runs: > 0 caps the patches so that a training step's activations (the
    # analytic estimate of spaces/scnas/cost.py, calibrated) fit this many GiB; 0: no cap.
    memory_gb: float = 0.0
    # SCNAS/GDAS/DARTS: > 0 adds this x the derived network's expected activation memory
    # (GiB of a training step, spaces/scnas/cost.py) to alpha's loss (DiNTS-style).
    memory_weight: float = 0.0
    # SCNAS space: 2 runs the cells on a grid half as fine plus a full-resolution
    # refinement (network.py); 1 is the paper's network.
    stem_stride: int = 1
    # SCNAS space: node width / cell level width (network.py); cell outputs are 4 nodes.
    node_scale: float = 0.25
    width_growth: int = 2  # SCNAS space: node width factor per level down (paper: 2).
    # SCNAS derived network: loss heads on the coarse decoder levels (nnU-Net's).
    deep_supervision: bool = False
    # SCNAS/GDAS/DARTS: the Theta and alpha steps as one compiled program (bilevel.search_step).
    one_step_program: bool = False
    finetune_fraction: float = 0.0  # Share of the training time fine-tuning the derived net.
    warmup_fraction: float = 0.0  # Planned search: Theta-only share of the search steps.
    anneal_fraction: float = 0.0  # Planned search: share of the bi-level steps annealing tau.
    lr_schedule: str = "constant"  # constant (+ plateau rule) | cosine | poly (warm-up first).
    dice_background: bool = True  # SCNAS: multi-class Dice with background; nnU-Net: without.
    batch_dice: bool = False  # Dice sums over the batch (nnU-Net) instead of per patch.


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    overlap: float = 0.5  # SCNAS: 50% overlap.
    batch_size: int = 2
    gaussian: bool = True  # nnU-Net: windows weighted by a Gaussian (sigma = patch / 8).
    mirror: bool = False  # Mirroring test-time augmentation (8 flips; nnU-Net).


@dataclasses.dataclass(frozen=True)
class Config:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    search: SearchConfig = dataclasses.field(default_factory=SearchConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    mode: str = "search"
    # train / evaluate: a genotype.json, a baseline (BASELINES) or "random[:SEED]"; empty
    # in evaluate mode cross-validates the SCNAS search itself.
    architecture: str = ""
    seed: int = 0
    num_preview_batches: int = 4  # prepare mode: batches drawn for the summary and PNG.
    # Planner settings given as flags (jaxnas.planner keeps these as the user set them).
    user_set: tuple[str, ...] = ()


def from_flags(f) -> Config:
    """Builds a Config from absl FlagValues (or any object with the same attributes)."""
    data = DataConfig(
        data_dir=f.data_dir,
        cache_dir=f.cache_dir,
        spacing=tuple(float(v) for v in f.spacing) if f.spacing else None,
        image_order=f.image_order,
        patch_size=tuple(int(v) for v in f.patch_size),
        batch_size=f.batch_size,
        fg_fraction=f.fg_fraction,
        num_folds=f.num_folds,
        fold=f.fold,
        splits_file=f.splits_file,
        alpha_fraction=f.alpha_fraction,
        search_patch_size=tuple(int(v) for v in f.search_patch_size) or None,
        augment=f.augment, augment_spatial=f.augment_spatial,
    )
    search = SearchConfig(
        width=f.width, strategy=f.strategy, impl=f.impl, num_epochs=f.num_epochs,
        steps_per_epoch=f.steps_per_epoch,
        warmup_epochs=f.warmup_epochs, lr_w=f.lr_w, betas_w=_pair(f.betas_w), lr_a=f.lr_a,
        betas_a=_pair(f.betas_a), tau_rate=f.tau_rate, tau_min=f.tau_min,
        ce_weight=f.ce_weight, plateau_patience=f.plateau_patience, log_every=f.log_every,
        ckpt_every=f.ckpt_every, mesh=f.mesh, num_candidates=f.num_candidates,
        num_topologies=f.num_topologies,
        num_groups=f.num_groups, coarse_fraction=f.coarse_fraction,
        num_children=f.num_children, lr_controller=f.lr_controller,
        entropy_weight=f.entropy_weight, num_val_patches=f.num_val_patches,
        budget_minutes=f.budget_minutes, memory_gb=f.memory_gb,
        memory_weight=f.memory_weight, stem_stride=f.stem_stride, node_scale=f.node_scale,
        width_growth=f.width_growth, deep_supervision=f.deep_supervision,
        finetune_fraction=f.finetune_fraction, one_step_program=f.one_step_program,
        warmup_fraction=f.warmup_fraction, anneal_fraction=f.anneal_fraction,
        lr_schedule=f.lr_schedule, dice_background=f.dice_background, batch_dice=f.batch_dice)
    evaluation = EvalConfig(overlap=f.eval_overlap, batch_size=f.eval_batch_size,
                            gaussian=f.eval_gaussian, mirror=f.eval_mirror)
    # A genotype path is made absolute: fold runs and resumes may start elsewhere.
    architecture = f.architecture
    if architecture and architecture not in BASELINES and not architecture.startswith("random"):
        architecture = os.path.abspath(architecture)
    return Config(data=data, search=search, eval=evaluation, mode=f.mode, seed=f.seed,
                  num_preview_batches=f.num_preview_batches, architecture=architecture,
                  user_set=tuple(getattr(f, "user_set", ())))


def _pair(values) -> tuple[float, float]:
    return tuple(float(v) for v in values)


def tiny() -> Config:
    """The Python twin of experiments/tiny.flags: seconds on a CPU, for tests.

    impl "xla": at 16^3 and width 4 compile is most of a run, and the supernet's two
    steps compile in 38 s against 52 s with the CPU "fast" forms (tests/ops_test.py and
    the fixed-network tests cover those).
    """
    return Config(
        data=DataConfig(patch_size=(16, 16, 16), batch_size=1, num_folds=3),
        search=SearchConfig(width=4, num_epochs=2, steps_per_epoch=2, lr_w=1e-3,
                            betas_w=(0.9, 0.999), log_every=1, ckpt_every=2, impl="xla"),
        eval=EvalConfig(batch_size=1))


def _genotype_space(path: str) -> str:
    """The `space` of a genotype file; ValueError naming the file if it cannot be read."""
    from jaxnas.spaces import genotype  # numpy only; imported here like sharding below.

    return genotype.space_of(genotype.load_genotype(path))


def validate(config: Config) -> None:
    """Raises ValueError for settings that cannot work, before any long job starts."""
    d = config.data
    if not d.data_dir:
        raise ValueError("--data_dir is required: the MSD task folder (holding dataset.json)")
    if len(d.patch_size) != 3 or min(d.patch_size) < 1:
        raise ValueError(f"--patch_size needs 3 positive sizes, got {d.patch_size}")
    if d.spacing is not None and (len(d.spacing) != 3 or min(d.spacing) <= 0):
        raise ValueError(f"--spacing needs 3 positive values in mm, got {d.spacing}")
    if not 0.0 <= d.fg_fraction <= 1.0:
        raise ValueError(f"--fg_fraction must be in [0, 1], got {d.fg_fraction}")
    if d.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {d.batch_size}")
    if not 0 <= d.fold < d.num_folds:
        raise ValueError(f"--fold must be in [0, {d.num_folds}), got {d.fold}")
    s = config.search
    if s.strategy not in STRATEGIES:
        raise ValueError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {s.strategy!r}")
    if min(s.num_candidates, s.num_topologies, s.num_groups, s.num_children,
           s.num_val_patches) < 1:
        raise ValueError("--num_candidates, --num_topologies, --num_groups, --num_children "
                         "and --num_val_patches must be >= 1")
    searching = config.mode in ("search", "evaluate") and not config.architecture
    if not 0.0 < s.coarse_fraction < 1.0:
        raise ValueError(f"--coarse_fraction must be in (0, 1), got {s.coarse_fraction}")
    if s.impl not in ("auto", "fast", "xla"):
        raise ValueError(f"--impl must be auto, fast or xla, got {s.impl!r}")
    if s.width < 1 or s.num_epochs < 1 or s.steps_per_epoch < 0:
        raise ValueError("--width and --num_epochs must be >= 1, --steps_per_epoch >= 0")
    if config.mode == "train" and not config.architecture:
        raise ValueError("--mode=train needs --architecture: a genotype.json, "
                         f"{', '.join(BASELINES)} or random")
    a = config.architecture
    if a and a not in BASELINES and not a.startswith("random") and not os.path.isfile(a):
        raise ValueError(f"--architecture={a}: no such genotype file (expected a "
                         f"genotype.json, {', '.join(BASELINES)}, random or random:SEED)")
    # A genotype file is read here: bad content stops the run before any data work.
    space = "scnas" if a.startswith("random") else (
        _genotype_space(a) if a and a not in BASELINES else None)
    from jaxnas.spaces import registry  # Plain Python, like the genotype read above.

    scnas_cells = (space is not None and registry.get(space).has_cells) or (
        searching and s.strategy in ("scnas", "gdas", "darts", "random"))
    node = s.width * s.node_scale
    if scnas_cells and not (node >= 1 and node == int(node)):
        # Only SCNAS cells have nodes; ronasmis, c2fnas and the baselines ignore it.
        raise ValueError(f"--width times --node_scale must be a whole number of SCNAS cell "
                         f"node channels (with node_scale 0.25: width divisible by 4), "
                         f"got {s.width} x {s.node_scale} = {node:g}")
    if scnas_cells and s.width_growth < 1:
        raise ValueError(f"--width_growth must be >= 1, got {s.width_growth}")
    if a.startswith("random:") and not a[len("random:"):].isdigit():
        raise ValueError(f"--architecture={a}: the seed after random: must be an integer")
    if s.mesh:
        # Imported here only: config.py stays free of jax for every run without a mesh.
        from jaxnas import sharding

        sharding.check_divisible(sharding.parse_mesh(s.mesh), d.batch_size, d.patch_size)
    _check_ranges(config)
    if not 0.0 <= config.eval.overlap < 1.0:
        raise ValueError(f"--eval_overlap must be in [0, 1), got {config.eval.overlap}")


def _check_ranges(config: Config) -> None:
    """Numeric settings outside the range where they mean anything: one line per flag."""
    s, d = config.search, config.data
    positive = {"lr_w": s.lr_w, "lr_a": s.lr_a, "tau_min": s.tau_min,
                "node_scale": s.node_scale, "lr_controller": s.lr_controller,
                "log_every": s.log_every,
                "ckpt_every": s.ckpt_every, "eval_batch_size": config.eval.batch_size}
    for name, value in positive.items():
        if not value > 0:
            raise ValueError(f"--{name} must be > 0, got {value}")
    non_negative = {"tau_rate": s.tau_rate, "ce_weight": s.ce_weight,
                    "plateau_patience": s.plateau_patience, "warmup_epochs": s.warmup_epochs,
                    "entropy_weight": s.entropy_weight}
    for name, value in non_negative.items():
        if not value >= 0:
            raise ValueError(f"--{name} must be >= 0, got {value}")
    for name, betas in (("betas_w", s.betas_w), ("betas_a", s.betas_a)):
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"--{name} needs two values in [0, 1), got {list(betas)}")
    if not s.tau_min <= 1.0:
        raise ValueError(f"--tau_min must be in (0, 1] (tau starts at 1), got {s.tau_min}")
    for name, value in (("finetune_fraction", s.finetune_fraction),
                        ("warmup_fraction", s.warmup_fraction),
                        ("anneal_fraction", s.anneal_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"--{name} must be in [0, 1), got {value}")
    if s.stem_stride not in (1, 2):
        raise ValueError(f"--stem_stride must be 1 or 2, got {s.stem_stride}")
    divisor = 8 * s.stem_stride
    if config.mode != "prepare" and any(p % divisor for p in d.patch_size):
        raise ValueError(f"--patch_size must be divisible by {divisor} (3 poolings"
                         f"{' and the stride-2 stem' if s.stem_stride == 2 else ''}), "
                         f"got {list(d.patch_size)}")
    if s.budget_minutes < 0:
        raise ValueError(f"--budget_minutes must be >= 0 (0: no budget), got {s.budget_minutes}")
    if s.memory_gb < 0:
        raise ValueError(f"--memory_gb must be >= 0 (0: no memory cap), got {s.memory_gb}")
    if s.memory_weight < 0:
        raise ValueError(f"--memory_weight must be >= 0 (0: no memory term), "
                         f"got {s.memory_weight}")
    if s.lr_schedule not in ("constant", "cosine", "poly"):
        raise ValueError(f"--lr_schedule must be constant, cosine or poly, got {s.lr_schedule!r}")
    sp = d.search_patch_size
    if sp is not None and (len(sp) != 3 or any(p < 1 or p % divisor for p in sp)):
        raise ValueError(f"--search_patch_size needs 3 sizes divisible by {divisor}, "
                         f"got {list(sp)}")
    if not 0.0 < d.alpha_fraction < 1.0:
        raise ValueError(f"--alpha_fraction must be in (0, 1), got {d.alpha_fraction}")
    if d.num_folds < 2:
        raise ValueError(f"--num_folds must be >= 2, got {d.num_folds}")
