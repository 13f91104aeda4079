"""Training: the pix2pix conditional GAN as a LightningModule and ``fit(config)``.

Run folder (``config.output_dir``)::

    config.yaml                 the config of the run
    split.json                  train/val/test fields, names and paths (see data.write_split)
    checkpoints/last.ckpt       saved at every validation (resume from here)
    checkpoints/best.ckpt       best val/ssim so far
    logs/csv/version_N/         CSVLogger metrics.csv (N counts starts and resumes)
    logs/tensorboard/version_N/ TensorBoard events (when tensorboard is installed)
    model/                      model package of the generator from best.ckpt, with the calibration of
                                enhance --uncertainty fitted on up to 8 validation images
    report.html                 curves, split, overlays, provenance and settings (confocalize.report)

``trainer.max_steps`` counts GENERATOR updates. Lightning's ``global_step`` counts every
optimizer step, two per batch with a discriminator, so the Trainer gets ``max_steps * n_optimizers``
and :attr:`Pix2Pix.generator_steps` converts back (in the fidelity phase the discriminator's
optimizer steps without gradients, so the count stays two per batch). Validation runs every
``val_every_steps`` generator steps and once more when training stops (max_steps or max_time reached).

The recipe (:mod:`confocalize.recipe`): pixel losses alone first, then the adversarial term ramped
in; learning rates warmed up and cosine-decayed over the budget; an exponential moving average of
the generator weights is what validation scores and what the package exports.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import platform
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar, Timer
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader

from confocalize import __version__
from confocalize.config import TrainConfig, TrainerConfig, dump_config
from confocalize.data import (
    CentralCrops,
    PairedPatches,
    PairImages,
    PatchOrigins,
    load_pairs,
    sample_channels,
    split_by_field,
    split_summary,
    write_split,
)
from confocalize.errors import ConfocalizeError
from confocalize.guards import AtomicCheckpointIO, training_guards
from confocalize.metrics import compare
from confocalize.nets import PatchGAN, UNet
from confocalize.finetune import check_channels, lineage, parent_package
from confocalize.package import ModelPackage, Provenance, TrainingData, TrainingRun, build_generator, load_package, save_package
from confocalize.pairs import PairPaths, collect_pairs
from confocalize.recipe import adversarial_ramp, budget_progress, ema_decay, lr_factor
from confocalize.report import write_report
from confocalize.residual_choice import choose_residual
from confocalize.training_log import TrainingLog
from confocalize.uncertainty import calibrate

CHECKPOINT_FORMAT = 3  # 2: EMA generator, recipe schedules; 3: residual generator setting
LAST = "last.ckpt"
BEST = "best.ckpt"
DDP_STRATEGIES = ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")


@dataclass(frozen=True)
class TrainResult:
    """What a finished :func:`fit` produced."""

    output_dir: Path
    model_dir: Path
    best_val: dict[str, float]
    split: dict[str, dict[str, list[str]]]
    steps: int  # generator updates done in total (resumed runs included)
    seconds: float  # wall time of this call


def ssim_torch(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of two ``(N, C, H, W)`` batches with a Gaussian window (Wang et al. 2004 constants)."""
    coords = torch.arange(window, dtype=x.dtype, device=x.device) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(x.shape[1], 1, window, window)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=x.shape[1])

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y, cov = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean()


def uses_discriminator(config: TrainConfig) -> bool:
    """True for the GAN, False for the L1-only U-Net (``adv_weight == 0``)."""
    return config.loss.adv_weight > 0


def architecture(config: TrainConfig) -> dict[str, Any]:
    """Network settings that must agree between a checkpoint and the module that resumes it."""
    d = config.discriminator.model_dump(mode="json") if uses_discriminator(config) else None
    channels = {"channels": config.data.channels, "context_slices": config.data.context_slices}
    return {"generator": config.generator.model_dump(mode="json"), "discriminator": d, "ema": config.optim.ema_decay > 0, **channels}


class Pix2Pix(L.LightningModule):
    """U-Net generator + (optional) PatchGAN discriminator trained with manual optimisation.

    Generator loss: ``l1_weight * L1 + ssim_weight * (1 - SSIM) + ramp * adv_weight * adversarial``
    (``ramp`` from :func:`confocalize.recipe.adversarial_ramp`); discriminator loss
    ``0.5 * (real + fake)``, trained only after the fidelity phase. With ``adv_weight == 0`` there
    is no discriminator: an L1 (+SSIM) U-Net, the CARE baseline with the same generator.
    ``channels`` are the generator's input and output channels (:func:`confocalize.data.sample_channels`).
    With ``optim.ema_decay > 0``, :attr:`generator_ema` holds the moving average of the weights.
    """

    def __init__(self, config: TrainConfig | dict[str, Any], channels: tuple[int, int] = (1, 1)) -> None:
        super().__init__()
        self.cfg = config if isinstance(config, TrainConfig) else TrainConfig.model_validate(config)
        self.save_hyperparameters({"config": self.cfg.model_dump(mode="json"), "channels": list(channels)})
        self.automatic_optimization = False
        self.generator: UNet = build_generator(self.cfg.generator, *channels)
        d_cfg = self.cfg.discriminator
        d_in = sum(channels)  # the discriminator judges the LQ input and the HQ (real or fake) together
        self.discriminator = PatchGAN(d_in, d_cfg.base_channels, d_cfg.n_layers) if uses_discriminator(self.cfg) else None
        decay = self.cfg.optim.ema_decay
        self.generator_ema = AveragedModel(self.generator, multi_avg_fn=_ema_update(decay), use_buffers=True) if decay > 0 else None
        if self.generator_ema is not None:
            self.generator_ema.requires_grad_(False)  # updated by averaging, never by an optimizer

    def setup(self, stage: str) -> None:
        """Before the strategy moves and wraps the nets and the optimizers are made: their memory format
        (a convolution with channels_last weights computes in channels_last, whatever its input's layout)."""
        if self.cfg.trainer.channels_last:
            self.to(memory_format=torch.channels_last)

    @property
    def n_optimizers(self) -> int:
        """Optimizer steps per batch: 2 with a discriminator, else 1."""
        return 1 if self.discriminator is None else 2

    @property
    def generator_steps(self) -> int:
        """Generator updates done so far."""
        return self.trainer.global_step // self.n_optimizers

    @property
    def evaluated_generator(self) -> torch.nn.Module:
        """The generator that validation scores and the package exports: the EMA one where there is one."""
        return self.generator if self.generator_ema is None else self.generator_ema.module

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        return self.evaluated_generator(lq)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        o = self.cfg.optim
        nets = [(self.generator, o.lr)] + ([] if self.discriminator is None else [(self.discriminator, o.d_lr)])
        return [torch.optim.Adam(net.parameters(), lr=lr, betas=(o.beta1, o.beta2)) for net, lr in nets]

    def train_seconds(self) -> float:
        """Training wall time so far, resumed runs included (Lightning's timer; 0 outside a Trainer)."""
        timer = next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None) if self._trainer else None
        return timer.time_elapsed() if timer is not None else 0.0

    def progress(self) -> float:
        """Share of the training budget spent (steps or wall time, whichever is further)."""
        t = self.cfg.trainer
        max_seconds = 60 * t.max_time_minutes if t.max_time_minutes else None
        return budget_progress(self.generator_steps, t.max_steps, self.train_seconds(), max_seconds)

    def _set_learning_rates(self, progress: float, optimizers: list[Any]) -> None:
        factor = lr_factor(progress, self.cfg.optim)
        for opt, peak in zip(optimizers, (self.cfg.optim.lr, self.cfg.optim.d_lr), strict=False):
            for group in opt.param_groups:
                group["lr"] = peak * factor

    def _adversarial(self, logits: torch.Tensor, real: bool) -> torch.Tensor:
        target = torch.full_like(logits, 1.0 if real else 0.0)
        if self.cfg.loss.gan_mode == "lsgan":
            return F.mse_loss(logits, target)
        return F.binary_cross_entropy_with_logits(logits, target)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """One D step (with a discriminator) and one G step; returns the detached losses (for the guards)."""
        lq, hq = batch
        opts = self.optimizers()
        opt_g, opt_d = (opts, None) if self.discriminator is None else opts
        progress = self.progress()
        self._set_learning_rates(progress, [opt_g] if opt_d is None else [opt_g, opt_d])
        ramp = adversarial_ramp(progress, self.cfg.loss)
        fake = self.generator(lq)
        logs: dict[str, torch.Tensor] = {}
        if opt_d is not None and progress < self.cfg.loss.fidelity_fraction:
            opt_d.step()  # no gradients: a no-op that keeps Lightning's count at two optimizer steps per batch
        elif opt_d is not None:  # the discriminator learns from the start of the ramp on
            with self.toggled_optimizer(opt_d):
                d_loss = 0.5 * (
                    self._adversarial(self.discriminator(lq, hq), True)
                    + self._adversarial(self.discriminator(lq, fake.detach()), False)
                )
                opt_d.zero_grad()
                self.manual_backward(d_loss)
                opt_d.step()
            logs["train/d_loss"] = d_loss.detach()
        with self.toggled_optimizer(opt_g):
            g_loss = self._generator_loss(lq, hq, fake, ramp, logs)
            opt_g.zero_grad()
            self.manual_backward(g_loss)
            opt_g.step()
        if self.generator_ema is not None:
            self.generator_ema.update_parameters(self.generator)
        self.log_dict(logs, prog_bar=True, on_step=True, on_epoch=False, batch_size=lq.shape[0])
        self.log_dict({"train/lr": opt_g.param_groups[0]["lr"], "train/adv_ramp": ramp}, on_step=True, on_epoch=False, batch_size=1)
        return logs

    def _generator_loss(
        self, lq: torch.Tensor, hq: torch.Tensor, fake: torch.Tensor, ramp: float, logs: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """The weighted generator loss (adversarial term times ``ramp``); its parts are added to ``logs``."""
        w = self.cfg.loss
        l1 = F.l1_loss(fake, hq)
        loss = w.l1_weight * l1
        logs["train/g_l1"] = l1.detach()
        if w.ssim_weight > 0:
            ssim = ssim_torch(fake.float(), hq.float())
            loss = loss + w.ssim_weight * (1 - ssim)
            logs["train/g_ssim"] = ssim.detach()
        if self.discriminator is not None and ramp > 0:
            adv = self._adversarial(self.discriminator(lq, fake), True)
            loss = loss + ramp * w.adv_weight * adv
            logs["train/g_adv"] = adv.detach()
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        max_steps = self.cfg.trainer.max_steps
        if max_steps is not None and self.generator_steps >= max_steps:
            self.trainer.should_stop = True  # makes Lightning validate (and checkpoint) after this last step

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        lq, hq = batch
        pred = self.evaluated_generator(lq).float().cpu().numpy()
        target = hq.float().cpu().numpy()
        for p, t in zip(pred.reshape(-1, *pred.shape[-2:]), target.reshape(-1, *target.shape[-2:]), strict=True):
            scores = compare(p, t)["plain"]  # every channel of every image, as a 2D image
            self.log_dict({f"val/{k}": v for k, v in scores.items()}, on_epoch=True, batch_size=1, sync_dist=True, prog_bar=False)

    def on_validation_epoch_end(self) -> None:
        """Log where in the run this validation happened: the learning curves' x-axes."""
        when = {"time/train_seconds": self.train_seconds(), "time/generator_steps": float(self.generator_steps)}
        self.log_dict(when, batch_size=1, rank_zero_only=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["confocalize"] = {
            "format": CHECKPOINT_FORMAT,
            "version": __version__,
            **architecture(self.cfg),
            "val": {k[4:]: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")},
        }


class PairsData(L.LightningDataModule):
    """Training patches and validation crops; the patch dataset is rebuilt every epoch (new seed)."""

    def __init__(self, train: list[PairImages], val: list[PairImages], config: TrainConfig) -> None:
        super().__init__()
        self.train_images, self.val_images, self.cfg = train, val, config
        self.origins = PatchOrigins(train, config.data.patch_size, config.data.patch_signal)

    def train_dataloader(self) -> DataLoader:
        d = self.cfg.data
        patches = PairedPatches(
            self.train_images, d.patch_size, d.patches_per_epoch, d.augment,
            seed=self.cfg.trainer.seed, epoch=self.trainer.current_epoch, rank=self.trainer.global_rank, origins=self.origins,
        )  # fmt: skip
        return DataLoader(patches, batch_size=d.batch_size, num_workers=d.num_workers)

    def val_dataloader(self) -> DataLoader:
        crops = CentralCrops(self.val_images, multiple=2**self.cfg.generator.depth)
        return DataLoader(crops, batch_size=1, num_workers=self.cfg.data.num_workers)


def fit(
    config: TrainConfig, resume: Path | None = None, progress: bool | None = None, callbacks: Sequence[Callback] = ()
) -> TrainResult:
    """Train a model as ``config`` says; write the run folder (see the module docstring).

    ``resume`` is a checkpoint (or a run folder, meaning its ``checkpoints/last.ckpt``) to continue
    from, up to the same ``max_steps``. ``progress`` overrides ``trainer.progress_bar``. ``callbacks``
    are added to the Trainer's (e.g. :class:`confocalize.training_log.TrainingLog` into a GUI,
    :class:`confocalize.guards.StopRequest`).
    """
    start = time.monotonic()
    parent = None
    if config.init_from:
        parent, config = parent_package(config)  # the parent's settings where the config sets none
    out = Path(config.output_dir)
    d = config.data
    if d.val_fraction == 0:
        raise ConfocalizeError("data.val_fraction is 0: training needs validation fields to pick the best model; set it > 0")
    ckpt_path = None
    if resume is not None:
        ckpt_path, config = _resumable(resume, config)
    else:
        _refuse_existing_run(out)
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    pairs = collect_pairs(**_pairs_source(config), field_pattern=d.field_pattern)
    split = split_by_field(pairs, d.val_fraction, d.test_fraction, config.trainer.seed)
    train_images, val_images = load_pairs(split["train"], d), load_pairs(split["val"], d)
    channels = sample_channels(train_images + val_images)
    if config.generator.residual == "auto":
        config = _with_residual(config, choose_residual(train_images))
    if parent is not None:
        check_channels(parent, config, channels)
    module = Pix2Pix(config, channels)
    if parent is not None and ckpt_path is None:  # a resumed run has its weights in the checkpoint
        module.generator.load_state_dict(parent.generator.state_dict())
    with _quiet_lightning():
        trainer = _trainer(config, module.n_optimizers, progress, callbacks)
        if trainer.is_global_zero:
            dump_config(config, out / "config.yaml")
            write_split(out / "split.json", split)
        trainer.fit(module, datamodule=PairsData(train_images, val_images, config), ckpt_path=ckpt_path, weights_only=True)
    model_dir = out / "model"
    best_val: dict[str, float] = {}
    if trainer.is_global_zero:
        run = TrainingRun(steps=module.generator_steps, seconds=module.train_seconds(), hardware=_hardware(trainer),
                          command=" ".join(sys.argv))  # fmt: skip
        provenance = _provenance(config, pairs, split, train_images + val_images).model_copy(
            update={"training": run, "lineage": lineage(config.init_from, parent) if parent is not None else []}
        )
        best_val = _export(config, out / "checkpoints" / BEST, model_dir, provenance, _pixel_size(train_images), channels,
                           split["val"][: config.trainer.calibrate_uncertainty])  # fmt: skip
        write_report(out, load_package(model_dir), run_dir=out, pairs={"train": split["train"], "val": split["val"]})
    return TrainResult(out, model_dir, best_val, split_summary(split), module.generator_steps, time.monotonic() - start)


def _refuse_existing_run(out: Path) -> None:
    """Refuse to start a new run over an existing one (which would mix two runs' checkpoints)."""
    if (out / "checkpoints" / LAST).exists():
        raise ConfocalizeError(f"{out}: already holds a training run; resume it (--resume {out}) or choose another output_dir")


def _with_residual(config: TrainConfig, residual: bool) -> TrainConfig:
    """``config`` with ``generator.residual`` decided."""
    return config.model_copy(update={"generator": config.generator.model_copy(update={"residual": residual})})


def _resumable(resume: Path, config: TrainConfig) -> tuple[Path, TrainConfig]:
    """The checkpoint to resume from, checked against ``config`` (one-line errors otherwise), and
    ``config`` with the checkpoint's ``generator.residual`` where it leaves that to the pairs."""
    path = Path(resume)
    path = path / "checkpoints" / LAST if path.is_dir() else path
    meta = _read_checkpoint(path).get("confocalize")
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        found = meta.get("version", "?") if isinstance(meta, dict) else "not confocalize"
        raise ConfocalizeError(
            f"{path}: checkpoint of another version ({found}), this is confocalize {__version__}; start a new run"
        )
    if config.generator.residual == "auto" and isinstance(meta.get("generator"), dict):
        config = _with_residual(config, bool(meta["generator"].get("residual")))
    expected = architecture(config)
    if {k: meta.get(k) for k in expected} != expected:
        raise ConfocalizeError(
            f"{path}: trained with other generator/discriminator settings than this config; resume with the run's config.yaml"
        )
    return path, config


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint's dictionary (tensors only, never arbitrary objects) on the CPU."""
    if not path.is_file():
        raise ConfocalizeError(f"{path}: no such checkpoint; give checkpoints/{LAST} of an earlier run (or the run folder)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfocalizeError(f"{path}: not a readable checkpoint ({reason[:120]}); delete it and start a new run") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfocalizeError(f"{path}: not a Lightning checkpoint; give checkpoints/{LAST} of an earlier run")
    return ckpt


def _trainer(config: TrainConfig, n_optimizers: int, progress: bool | None, extra: Sequence[Callback] = ()) -> L.Trainer:
    """A Trainer whose step, validation, time limits and checkpoints follow ``config.trainer``."""
    t = config.trainer
    folder = Path(config.output_dir) / "checkpoints"
    best = ModelCheckpoint(dirpath=folder, filename=Path(BEST).stem, monitor="val/ssim", mode="max", save_top_k=1,
                           auto_insert_metric_name=False, enable_version_counter=False)  # fmt: skip
    # Lightning's save_last writes last.ckpt only when the best one improved; this one writes it at every
    # validation, after the best one (so the state it saves knows the newest best).
    last = ModelCheckpoint(dirpath=folder, filename=Path(LAST).stem, save_top_k=1, enable_version_counter=False)
    show_progress = t.progress_bar if progress is None else progress
    strategy = t.strategy
    if strategy in DDP_STRATEGIES and n_optimizers > 1:
        strategy += "_find_unused_parameters_true"  # each optimizer's step leaves the other net without gradients
    return L.Trainer(
        max_steps=t.max_steps * n_optimizers if t.max_steps is not None else -1,
        val_check_interval=t.val_every_steps,
        check_val_every_n_epoch=None,
        reload_dataloaders_every_n_epochs=1,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_steps,
        enable_progress_bar=show_progress and sys.stderr.isatty(),
        enable_model_summary=False,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=strategy,
        precision=t.precision,  # type: ignore[arg-type]
        sync_batchnorm=_on_gpu(t),  # BatchNorm statistics over all processes; torch syncs them on GPUs only
        logger=_loggers(Path(config.output_dir) / "logs"),
        callbacks=[_timer(t), *training_guards(t, folder / LAST, n_optimizers), best, last]
        + _progress_callbacks(show_progress, t.max_steps) + list(extra),
        plugins=[AtomicCheckpointIO()],
        default_root_dir=config.output_dir,
    )


def _timer(t: TrainerConfig) -> Timer:
    """Lightning's timer, always present: it ends a run at ``max_time_minutes`` (if set) and measures
    the training time that the schedules and the learning curves use; resumed runs continue its count."""
    duration = timedelta(minutes=t.max_time_minutes) if t.max_time_minutes else None
    return Timer(duration=duration, interval="step", verbose=False)


def _progress_callbacks(show: bool, max_steps: int | None) -> list[Callback]:
    """A live bar on a terminal; plain lines (``training_log.TrainingLog``) into a file or a pipe."""
    if not show:
        return []
    return [_ProgressBar()] if sys.stderr.isatty() else [TrainingLog(max_steps)]


def _hardware(trainer: L.Trainer) -> str:
    """The processes and devices that trained, in words (e.g. "1 x NVIDIA H200" or "1 x 2-core AMD EPYC")."""
    n = trainer.world_size
    if trainer.strategy.root_device.type == "cuda":
        return f"{n} x {torch.cuda.get_device_name(trainer.strategy.root_device)}"
    return f"{n} x {os.cpu_count()}-core {cpu_model()} ({torch.get_num_threads()} torch threads)"


def cpu_model() -> str:
    """The processor's model name (Linux ``/proc/cpuinfo``; elsewhere what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _on_gpu(t: TrainerConfig) -> bool:
    """Whether the trainer will run on CUDA devices."""
    return t.accelerator in ("gpu", "cuda") or (t.accelerator == "auto" and torch.cuda.is_available())


class _ProgressBar(RichProgressBar):
    """Lightning's rich bar without the version number and the "/-2" of runs limited by steps."""

    def _get_train_description(self, current_epoch: int) -> str:
        return f"Epoch {current_epoch}"

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return {k: v for k, v in super().get_metrics(trainer, pl_module).items() if k != "v_num"}


def _loggers(log_dir: Path) -> list[Logger]:
    """CSV logs always; TensorBoard logs when tensorboard is installed."""
    loggers: list[Logger] = [CSVLogger(log_dir, name="csv")]
    if importlib.util.find_spec("tensorboard") is not None:
        loggers.append(TensorBoardLogger(log_dir, name="tensorboard", default_hp_metric=False))
    return loggers


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's informational lines and hints; warnings and the progress bar stay."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval.*")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")  # resuming
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _pixel_size(images: list[PairImages]) -> float | None:
    """The LQ pixel size shared by all training images, else ``None``."""
    sizes = {im.pixel_size for im in images}
    return sizes.pop() if len(sizes) == 1 else None


def _pairs_source(config: TrainConfig) -> dict[str, Path | None]:
    """The pair-source settings, as :func:`collect_pairs` takes them."""
    d = config.data
    return {"pairs_dir": d.pairs_dir, "lq_dir": d.lq_dir, "hq_dir": d.hq_dir, "pairs_csv": d.pairs_csv}


def _provenance(
    config: TrainConfig, pairs: list[PairPaths], split: dict[str, list[PairPaths]], images: list[PairImages]
) -> Provenance:
    """The microscopes (as configured), where the training data came from, and how it was trained."""
    data = TrainingData(
        source={k: str(v) for k, v in _pairs_source(config).items() if v is not None},
        n_pairs=len(pairs),
        n_fields=len({p.field for p in pairs}),
        split=split_summary(split),
        lq_pixel_sizes_um=sorted({im.pixel_size for im in images if im.pixel_size is not None}),
    )
    p = config.provenance
    return Provenance(lq_system=p.lq_system, hq_system=p.hq_system, training_data=data, config=config.model_dump(mode="json"))


def _export(
    config: TrainConfig, best: Path, model_dir: Path, provenance: Provenance, pixel_size: float | None,
    channels: tuple[int, int], calibration_pairs: list[PairPaths],
) -> dict[str, float]:  # fmt: skip
    """Save the (EMA) generator of ``best`` as a model package, with the calibration of ``enhance --uncertainty``
    fitted on ``calibration_pairs`` (validation pairs; none: no calibration); return its validation metrics."""
    ckpt = _read_checkpoint(best)
    prefix = "generator." if config.optim.ema_decay == 0 else "generator_ema.module."
    generator = build_generator(config.generator, *channels)
    generator.load_state_dict({k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)})
    val = ckpt.get("confocalize", {}).get("val", {})
    package = ModelPackage(
        generator=generator.eval(),
        generator_config=config.generator,
        normalization=config.data.normalization,
        in_channels=channels[0],
        out_channels=channels[1],
        context_slices=config.data.context_slices,
        lq_pixel_size=pixel_size,
        provenance=provenance,
        metrics={"val": val},
    )
    if calibration_pairs:
        names = ", ".join(p.name for p in calibration_pairs)
        # torch, as trained: an ONNX export here would cost more than the calibration
        package.uncertainty = calibrate(package, calibration_pairs, data=f"validation images of the training split: {names}",
                                        lq_pixel_size=config.data.lq_pixel_size, backend="torch")  # fmt: skip
    save_package(package, model_dir)
    return val


def _ema_update(decay: float) -> Any:
    """``AveragedModel``'s update of all tensors at once, with the warmed-up decay of :func:`recipe.ema_decay`."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        d = ema_decay(decay, int(n_averaged))
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:  # integer buffers (BatchNorm's batch counters) follow the model
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)

    return update
