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


def test_defaults_follow_pix2pix():
    cfg = TrainConfig()
    assert cfg.loss.l1_weight == 100 and cfg.optim.lr == 2e-4 and cfg.optim.beta1 == 0.5
