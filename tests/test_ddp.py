"""Multi-process training: `confocalize train --devices 2 --strategy ddp` on CPU (gloo) with a tiny GAN.

Lightning's DDP launcher starts rank 1 by running the same command again, so the run goes through
a small script in a subprocess. The script records, per rank, a hash of every training patch drawn
and, when training starts and ends, a hash of all network parameters (generator and discriminator).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from test_train import write_tiny_pairs

from confocalize.package import load_package

SCRIPT = """
import hashlib, sys
from pathlib import Path

from confocalize import data, train
from confocalize.cli import main

record = Path(sys.argv[1])
draw = data.PairedPatches.__getitem__


def recorded_draw(self, index):
    lq, hq = draw(self, index)
    with open(record / f"patches_rank{self.keys[2]}.txt", "a") as fh:
        fh.write(hashlib.sha256(lq.numpy().tobytes()).hexdigest() + "\\n")
    return lq, hq


def parameters_recorder(when):
    def record_parameters(self):
        params = b"".join(p.detach().numpy().tobytes() for _, p in sorted(self.named_parameters()))
        (record / f"parameters_{when}_rank{self.global_rank}.txt").write_text(hashlib.sha256(params).hexdigest())

    return record_parameters


data.PairedPatches.__getitem__ = recorded_draw
train.Pix2Pix.on_train_start = parameters_recorder("start")
train.Pix2Pix.on_train_end = parameters_recorder("end")
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_two_ddp_processes_draw_different_patches_and_end_with_identical_weights(tmp_path: Path) -> None:
    write_tiny_pairs(tmp_path)
    config = {
        "data": {"field_pattern": r"^(\d+)_", "patch_size": 32, "batch_size": 2, "patches_per_epoch": 8},
        "generator": {"depth": 2, "base_channels": 4},
        "discriminator": {"base_channels": 4, "n_layers": 2},
        "trainer": {"max_steps": 3, "val_every_steps": 2, "log_every_steps": 1, "progress_bar": False},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    script = tmp_path / "train_ddp.py"
    script.write_text(textwrap.dedent(SCRIPT))
    record = tmp_path / "record"
    record.mkdir()
    run_dir = tmp_path / "run"
    command = [
        sys.executable, str(script), str(record), "train", "--lq", str(tmp_path / "lq"), "--hq", str(tmp_path / "hq"),
        "--config", str(tmp_path / "config.yaml"), "-o", str(run_dir),
        "--accelerator", "cpu", "--devices", "2", "--num-nodes", "1", "--strategy", "ddp",
    ]  # fmt: skip
    start = time.monotonic()
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    print(f"DDP training, 2 CPU processes: {time.monotonic() - start:.1f} s")
    assert run.returncode == 0, run.stderr[-3000:]
    patches = [(record / f"patches_rank{r}.txt").read_text().split() for r in (0, 1)]
    assert all(len(p) >= 3 * 2 for p in patches)  # 3 steps of 2 patches on each rank (Lightning may fetch ahead)
    assert not set(patches[0]) & set(patches[1])  # the ranks drew different patches
    start, end = ([(record / f"parameters_{when}_rank{r}.txt").read_text() for r in (0, 1)] for when in ("start", "end"))
    assert start[0] == start[1] and end[0] == end[1]  # gradients were averaged: both ranks hold the same networks
    assert start[0] != end[0]  # ... and training changed them
    assert load_package(run_dir / "model").generator_config.depth == 2  # rank 0 exported the model
