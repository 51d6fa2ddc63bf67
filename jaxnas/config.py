"""Frozen run configuration. Owns every default; `main.py` turns flags into a `Config`.

No jax here: the config is plain data, written to the work dir as `config.json`.
"""

import dataclasses


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


@dataclasses.dataclass(frozen=True)
class Config:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    mode: str = "prepare"
    seed: int = 0
    num_preview_batches: int = 4  # prepare mode: batches drawn for the summary and PNG.


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
    )
    return Config(data=data, mode=f.mode, seed=f.seed)


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
