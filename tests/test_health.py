"""Numerical health: NaN/Inf losses or weights and a collapsed discriminator stop training with one
clear line, and the last checkpoint on disk stays the last good one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from test_train import tiny_config, write_tiny_pairs

from confocalize.cli import main
from confocalize.config import dump_config
from confocalize.guards import Diverged
from confocalize.train import Pix2Pix, fit

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pairs")
    write_tiny_pairs(root)
    return root


def checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_exploding_learning_rate_stops_at_once_cli(pairs: Path, capsys) -> None:
    config = dump_config(tiny_config(pairs, "lr", optim={"lr": 1e30}, trainer={"max_steps": 20}), pairs / "lr.yaml")
    assert main(["train", "--config", str(config)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Traceback" not in err and err.count("confocalize: error:") == 1
    assert re.search(r"training stopped at step [12]: (losses|weights) diverged", err) and "lower optim.lr" in err
    assert "no checkpoint had been saved yet" in err
    assert not (pairs / "lr" / "checkpoints").exists() and not (pairs / "lr" / "model").exists()


def test_nan_weights_keep_the_last_good_checkpoint(pairs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    poison_from = 5  # the loss of this generator step is NaN, so its update writes NaN into the weights
    healthy = Pix2Pix._generator_loss

    def poisoned(self: Pix2Pix, *args: torch.Tensor) -> torch.Tensor:
        loss = healthy(self, *args)
        return loss * float("nan") if self.generator_steps + 1 >= poison_from else loss

    monkeypatch.setattr(Pix2Pix, "_generator_loss", poisoned)
    config = tiny_config(pairs, "nan", trainer={"max_steps": 20, "val_every_steps": 100, "checkpoint_every_steps": 2})
    assert config.trainer.health_check_every_steps > 2  # checked before each checkpoint all the same
    last = pairs / "nan" / "checkpoints" / "last.ckpt"
    with pytest.raises(Diverged, match=rf"stopped at step {poison_from + 1}: (losses|weights) diverged") as err:
        fit(config)
    assert f"last good checkpoint: {last}" in str(err.value)
    kept = checkpoint(last)
    assert kept["global_step"] == 2 * 4  # the checkpoint of step 4, before the NaN
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())
    assert not (pairs / "nan" / "model").exists()


def test_collapsed_discriminator_stops_training(pairs: Path) -> None:
    config = tiny_config(
        pairs, "collapse", loss={"fidelity_fraction": 0.0},  # the discriminator learns from the first step
        trainer={"max_steps": 20, "checkpoint_every_steps": 2, "d_collapse_threshold": 10.0, "d_collapse_steps": 3,
                 "health_check_every_steps": 1},
    )  # fmt: skip
    with pytest.raises(Diverged, match=r"at step 3: discriminator collapsed \(D loss below 10 for 3 steps\)"):
        fit(config)
    assert checkpoint(pairs / "collapse" / "checkpoints" / "last.ckpt")["global_step"] == 2 * 2


def test_checks_every_n_steps_still_see_a_short_collapse(pairs: Path) -> None:
    """Between checks the guard only accumulates on the device; the next check reports the whole run of low D losses."""
    config = tiny_config(
        pairs, "collapse_n", loss={"fidelity_fraction": 0.0},
        trainer={"max_steps": 20, "val_every_steps": 100, "d_collapse_threshold": 10.0, "d_collapse_steps": 3,
                 "health_check_every_steps": 5},
    )  # fmt: skip
    with pytest.raises(Diverged, match=r"at step 5: discriminator collapsed \(D loss below 10 for 5 steps\)"):
        fit(config)


def test_collapse_check_can_be_switched_off(pairs: Path) -> None:
    config = tiny_config(pairs, "on", trainer={"max_steps": 2, "d_collapse_threshold": 10.0, "d_collapse_steps": 0})
    assert fit(config).steps == 2
