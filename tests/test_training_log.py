"""Progress where there is no terminal: plain lines from training and from the CLI's other stages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_train import tiny_config, write_tiny_pairs

from confocalize import cli
from confocalize.train import fit


def test_training_into_a_file_prints_a_line_per_validation_and_at_the_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_tiny_pairs(tmp_path)
    fit(tiny_config(tmp_path, "run", trainer={"max_steps": 4, "val_every_steps": 2}), progress=True)
    lines = capsys.readouterr().err.splitlines()
    validations = [line for line in lines if line.startswith("train validation:")]
    assert len(validations) == 2 and "step 2/4" in validations[0] and "step 4/4" in validations[1]
    assert all(re.search(r"val PSNR [\d.]+ dB SSIM [\d.]+", line) and "steps/s" in line for line in validations)
    assert "min left of the budget" in validations[0] and "g_l1" in validations[0]
    assert lines[-1].startswith("train finished: step 4/4")
    assert not any("━" in line for line in lines)  # no live bar in a file


def test_cli_stages_print_plain_progress_without_a_terminal(capsys: pytest.CaptureFixture) -> None:
    with cli.progress_bar("register") as update:
        for done in range(1, 4):
            update(done, 3)
    assert capsys.readouterr().err.splitlines() == ["register: 3/3 after 0 s"]  # only the end: under 30 s
