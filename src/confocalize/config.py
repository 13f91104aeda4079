"""Every training setting as one pydantic model, loadable from YAML and echoed to the run folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from confocalize.errors import ConfocalizeError


class Strict(BaseModel):
    """Base for all settings: unknown or mistyped keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NormalizationConfig(Strict):
    """Percentile normalisation applied to each input image (and to each training target)."""

    low: float = Field(1.0, ge=0, lt=50, description="lower percentile mapped to 0")
    high: float = Field(99.8, gt=50, le=100, description="upper percentile mapped to 1")
    input_window: int = Field(
        3, ge=1, le=15,
        description="LQ percentiles are taken over the means of this many pixels square (1: single pixels), so that a "
        "noisy input's range follows its signal, not its noise peaks; HQ targets use single pixels. Packages before "
        "format 4 used 1",
    )  # fmt: skip


class DataConfig(Strict):
    """Where the pairs come from and how patches are drawn."""

    pairs_dir: Path | None = None
    lq_dir: Path | None = None
    hq_dir: Path | None = None
    pairs_csv: Path | None = None
    field_pattern: str | None = Field(None, description="regex whose first group is the field-of-view id")
    lq_pixel_size: float | None = Field(None, gt=0, description="µm; for files without metadata")
    patch_size: int = Field(
        64, ge=16,
        description="training patch edge in pixels; 64 in batches of 32 (CSBDeep's size) beat 128 in batches of 8, the same "
        "pixels per step, by 0.5 dB / 0.021 SSIM on W2S at 1,000 steps, and 48 x 56 and 32 x 128 by 0.3 and 2.7 dB "
        "(benchmarks/recipe.py, rows l1_patch64, l1_patch48, l1_patch32)",
    )  # fmt: skip
    batch_size: int = Field(32, ge=1, description="patches per step and process")
    patches_per_epoch: int = Field(256, ge=1, description="random patches drawn per training epoch")
    val_fraction: float = Field(0.2, ge=0, lt=1, description="share of fields held out for validation")
    test_fraction: float = Field(0.2, ge=0, lt=1, description="share of fields held out for testing")
    augment: bool = True
    num_workers: int = Field(0, ge=0)
    normalization: NormalizationConfig = NormalizationConfig()
    channels: Literal["separate", "joint"] = Field(
        "separate", description="separate: one model for every channel on its own; joint: all channels in and out together"
    )
    context_slices: int = Field(0, ge=0, le=8, description="2.5D: z-planes on each side fed as extra input channels")
    patch_signal: float = Field(
        0.0, ge=0, lt=1,
        description="draw patches only where the HQ target's maximum over the patch reaches this share of its "
        "normalised range (CSBDeep's background filter, e.g. 0.4); 0 (default) draws them anywhere: on W2S the "
        "filter cost 0.9 dB, the model must also learn to denoise background (BENCHMARKS.md, recipe ablation)",
    )  # fmt: skip

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave fields for training (sum < 1)")
        return self


class GeneratorConfig(Strict):
    """U-Net generator: ``depth`` down-sampling levels, ``base_channels`` at full resolution.

    Base 16 (not 32): a quarter of the arithmetic, so about twice the training steps in a CPU budget
    and more than twice the reference pix2pix's inference speed (see BENCHMARKS.md).
    """

    depth: int = Field(4, ge=1, le=8)
    base_channels: int = Field(16, ge=4)
    max_channels: int = Field(512, ge=4)
    norm: Literal["batch", "none"] = Field("batch", description="eval-mode BatchNorm is tile-safe; per-tile norms are not offered")
    dropout: float = Field(0.0, ge=0, lt=1)
    residual: bool | Literal["auto"] = Field(
        "auto",
        description="learn a correction of the input (output = input planes + network): right for denoising with the same "
        "optics (W2S: +1.8 dB at 600 steps), wrong for wide-field -> confocal, where it passes the haze and noise through "
        "at short budgets (demo pairs, 300 steps: SSIM 0.38 vs 0.87); auto (default): training decides from the pairs "
        "(confocalize.residual_choice), and the run's config.yaml and package record the choice. Packages before format 4 "
        "have none",
    )  # fmt: skip


class DiscriminatorConfig(Strict):
    """PatchGAN discriminator: ``n_layers`` strided layers (3 gives the 70x70 receptive field).

    ``base_channels`` 32 (pix2pix uses 64) costs a quarter of the arithmetic per adversarial step and
    scored the same on the recipe ablation (``benchmarks/recipe.py``, ``recipe_late``).
    """

    n_layers: int = Field(3, ge=1, le=6)
    base_channels: int = Field(32, ge=4)


class LossConfig(Strict):
    """Generator loss = l1_weight * L1 + ssim_weight * (1 - SSIM) + ramp * adv_weight * adversarial.

    The recipe is fidelity first: for the first ``fidelity_fraction`` of the budget the generator
    learns from the pixel losses alone (no discriminator runs); then the adversarial weight ramps
    linearly from 0 to ``adv_weight`` over ``adv_ramp_fraction`` of the budget. The budget is
    ``trainer.max_steps`` or ``trainer.max_time_minutes``, whichever ends first.
    """

    l1_weight: float = Field(100.0, ge=0)
    ssim_weight: float = Field(0.0, ge=0)
    adv_weight: float = Field(1.0, ge=0, description="0 trains an L1-only U-Net (no discriminator)")
    gan_mode: Literal["lsgan", "bce"] = "lsgan"
    fidelity_fraction: float = Field(0.8, ge=0, lt=1, description="share of the budget trained on the pixel losses alone")
    adv_ramp_fraction: float = Field(0.1, ge=0, le=1, description="share of the budget over which adv_weight ramps in")


class OptimConfig(Strict):
    """Adam for both networks; the learning rate follows a warm-up and a cosine decay over the budget."""

    lr: float = Field(2e-3, gt=0, description="peak learning rate of the generator")
    d_lr: float = Field(2e-4, gt=0, description="peak learning rate of the discriminator")
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    schedule: Literal["cosine", "constant"] = Field("cosine", description="cosine: warm-up, then cosine decay to final_lr_fraction")
    warmup_fraction: float = Field(0.02, ge=0, lt=1, description="share of the budget over which the rate rises linearly")
    final_lr_fraction: float = Field(0.02, ge=0, le=1, description="the rate at the end of the budget, as a share of the peak")
    ema_decay: float = Field(
        0.999, ge=0, lt=1,
        description="exponential moving average of the generator weights, validated and exported; "
        "the decay warms up as min(ema_decay, (1 + n) / (10 + n)) after n updates; 0 exports the raw weights",
    )  # fmt: skip


class TrainerConfig(Strict):
    """The Lightning trainer: length, hardware, logging and checkpoints."""

    max_steps: int | None = Field(2000, ge=1, description="generator optimisation steps; None: no step cap (max_time_minutes ends the run)")
    max_time_minutes: float | None = Field(None, gt=0)
    val_every_steps: int = Field(200, ge=1)
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"
    precision: str = "32-true"
    seed: int = 0
    progress_bar: bool = True
    log_every_steps: int = Field(10, ge=1)
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="also save checkpoints/last.ckpt every this many generator steps (it is always saved at each validation)"
    )
    calibrate_uncertainty: int = Field(
        8, ge=0,
        description="after training, fit the calibration of enhance --uncertainty on up to this many validation images "
        "(8 passes each) and store it in the package; 0: none (the map is then the raw spread)",
    )  # fmt: skip
    health_check_every_steps: int = Field(
        10, ge=1,
        description="read back the NaN and collapse checks and check the weights every this many generator steps (and "
        "before every checkpoint); each check is a host synchronisation",
    )  # fmt: skip
    channels_last: bool = Field(
        True,
        description="keep the nets' weights in channels_last (NHWC) memory, so their convolutions compute in it: faster on "
        "CPUs and tensor-core GPUs (benchmarks/train_speed.py measures it); False: PyTorch's default NCHW",
    )
    stop_on_nan: bool = Field(True, description="stop when a loss or weight becomes NaN/Inf, keeping the last good checkpoint")
    d_collapse_steps: int = Field(200, ge=0, description="stop when the D loss stays below d_collapse_threshold this many steps; 0: never")
    d_collapse_threshold: float = Field(1e-3, gt=0, description="D loss below which the discriminator counts as collapsed")

    @model_validator(mode="after")
    def _has_a_budget(self) -> TrainerConfig:
        if self.max_steps is None and self.max_time_minutes is None:
            raise ValueError("give max_steps or max_time_minutes (or both): a run needs a budget")
        return self


class SystemDescription(Strict):
    """One microscope, as a model package records it; every field is optional, units are in the names."""

    modality: str | None = Field(None, description="e.g. wide-field, confocal, spinning disk")
    microscope: str | None = Field(None, description="make and model")
    objective_na: float | None = Field(None, gt=0, le=2, description="numerical aperture of the objective")
    magnification: float | None = Field(None, gt=0, description="total magnification onto the detector")
    immersion: str | None = Field(None, description="air, water, glycerol, silicone, oil")
    pixel_size_um: float | None = Field(None, gt=0, description="pixel edge in the sample, µm")
    excitation_nm: float | None = Field(None, gt=0, description="excitation wavelength, nm")
    emission_nm: float | None = Field(None, gt=0, description="emission (detection) wavelength, nm")
    pinhole_au: float | None = Field(None, gt=0, description="confocal pinhole, Airy units")
    detector: str | None = Field(None, description="camera or detector, e.g. sCMOS, GaAsP PMT")
    institute: str | None = None
    notes: str | None = None


class ProvenanceConfig(Strict):
    """The two microscopes a model links, recorded in its package (all optional)."""

    lq_system: SystemDescription = SystemDescription()
    hq_system: SystemDescription = SystemDescription()


class TrainConfig(Strict):
    """Everything a training run needs; travels unchanged from the CLI into ``train.fit``."""

    output_dir: Path = Path("runs/latest")
    init_from: str | None = Field(
        None, description="model package (folder, .zip or built-in name) whose generator the training starts from"
    )
    data: DataConfig = DataConfig()
    generator: GeneratorConfig = GeneratorConfig()
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    trainer: TrainerConfig = TrainerConfig()
    provenance: ProvenanceConfig = ProvenanceConfig()

    @model_validator(mode="after")
    def _fidelity_phase_needs_unscaled_gradients(self) -> TrainConfig:
        gan_with_fidelity_phase = self.loss.adv_weight > 0 and self.loss.fidelity_fraction > 0
        if gan_with_fidelity_phase and self.trainer.precision in ("16", "16-mixed"):
            raise ValueError(
                "precision 16-mixed scales gradients, and the discriminator has none in the fidelity phase; "
                "use bf16-mixed or 32-true, or set loss.fidelity_fraction to 0"
            )
        return self


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Load a :class:`TrainConfig` from YAML; unknown keys and bad values are one-line errors."""
    path = Path(path)
    if path.is_dir():
        raise ConfocalizeError(f"{path}: is a folder, not a config file; give the YAML file")
    if not path.is_file():
        raise ConfocalizeError(f"{path}: no such config file; check the path")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfocalizeError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfocalizeError(f"{path}: the top level must be a mapping of settings")
    return parse_config(raw, source=str(path))


def parse_config(raw: dict[str, Any], source: str = "config") -> TrainConfig:
    """Validate a settings mapping into a :class:`TrainConfig` with a one-line error."""
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        hint = "unknown key; check its spelling" if err["type"] == "extra_forbidden" else err["msg"]
        raise ConfocalizeError(f"{source}: setting '{where}': {hint}") from None


def dump_config(config: TrainConfig, path: str | os.PathLike) -> Path:
    """Write the config as YAML (atomically), so a run folder records how it was made."""
    from confocalize.io import atomic_write

    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return path
