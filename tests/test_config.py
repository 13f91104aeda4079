"""Settings: YAML round trip and one-line errors for unknown or mistyped keys."""

from __future__ import annotations

import pytest

from confocalize.config import TrainConfig, dump_config, load_config, parse_config
from confocalize.errors import ConfocalizeError


def test_yaml_round_trip(tmp_path):
    cfg = parse_config({"trainer": {"max_steps": 7}, "generator": {"depth": 3}})
    path = dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(path) == cfg
    assert load_config(path).trainer.max_steps == 7


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("trainer:\n  max_stepz: 3\n", "trainer.max_stepz.*unknown key"),
        ("trainer:\n  max_steps: many\n", "trainer.max_steps"),
        ("generator:\n  norm: instance\n", "generator.norm"),
        ("data:\n  val_fraction: 0.6\n  test_fraction: 0.5\n", "sum < 1"),
        ("- a list\n", "must be a mapping"),
        ("trainer: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_yaml_is_one_clear_line(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfocalizeError, match=message) as err:
        load_config(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfocalizeError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")


def test_defaults_are_the_recipe():
    cfg = TrainConfig()
    assert cfg.loss.l1_weight == 100 and cfg.loss.adv_weight > 0 and 0 < cfg.loss.fidelity_fraction < 1  # fidelity, then GAN
    assert cfg.optim.schedule == "cosine" and cfg.optim.ema_decay > 0 and cfg.data.patch_signal == 0


def test_fp16_with_a_fidelity_phase_is_refused_in_one_line():
    with pytest.raises(ConfocalizeError, match="use bf16-mixed or 32-true"):
        parse_config({"trainer": {"precision": "16-mixed"}})
    assert parse_config({"trainer": {"precision": "16-mixed"}, "loss": {"fidelity_fraction": 0}}).trainer.precision == "16-mixed"


def test_minutes_alone_lift_the_step_cap_unless_steps_are_given(tmp_path):
    from confocalize.cli import _train_config, build_parser

    def trainer(*extra):
        return _train_config(build_parser().parse_args(["train", "pairs", *extra])).trainer

    assert trainer().max_steps == 2000 and trainer().max_time_minutes is None
    assert trainer("--minutes", "30").max_steps is None  # the wall time is the whole budget
    assert trainer("--minutes", "30", "--steps", "500").max_steps == 500
    config = tmp_path / "c.yaml"
    config.write_text("trainer:\n  max_steps: 700\n")
    assert trainer("--minutes", "30", "--config", str(config)).max_steps == 700  # the file's own cap stays
    with pytest.raises(ConfocalizeError, match="needs a budget"):
        parse_config({"trainer": {"max_steps": None}})
