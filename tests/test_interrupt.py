"""Interrupted training, for real: SIGTERM and SIGINT save the exact step, ``kill -9`` loses at most
the steps since the last checkpoint, and ``--resume`` ends at the same final step as an uninterrupted run.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from test_train import logged, tiny_config, write_tiny_pairs

from confocalize.config import dump_config
from confocalize.guards import Interrupted
from confocalize.train import fit

MAX_STEPS = 60
EVERY = 5  # trainer.checkpoint_every_steps
TIMEOUT = 120  # seconds any one training process may take
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # on a busy machine, torch threads fighting for cores cost 10x


def generator_step(ckpt: Path) -> int:
    """Generator steps recorded in a checkpoint (two optimizer steps each)."""
    return torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] // 2


def wait_for_checkpoint(ckpt: Path, min_step: int, proc: subprocess.Popen | None = None) -> int:
    """Poll until ``ckpt`` holds at least ``min_step`` generator steps; return that step."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"training ended (code {proc.returncode}) before step {min_step}: {proc.stderr.read() if proc.stderr else ''}")
        if ckpt.is_file() and (step := generator_step(ckpt)) >= min_step:
            return step
        time.sleep(0.02)
    pytest.fail(f"no checkpoint with step >= {min_step} within {TIMEOUT} s")


@pytest.fixture()
def pairs(tmp_path: Path) -> Path:
    """A folder with tiny training pairs in ``lq/`` and ``hq/``."""
    write_tiny_pairs(tmp_path)
    return tmp_path


def _run_config(pairs: Path, max_steps: int) -> Path:
    """A YAML config for a tiny GAN run of ``max_steps`` steps, checkpointing every EVERY steps."""
    config = tiny_config(
        pairs, "run", data={"patches_per_epoch": 64},
        trainer={"max_steps": max_steps, "val_every_steps": 100, "checkpoint_every_steps": EVERY, "log_every_steps": 1},
    )  # fmt: skip
    return dump_config(config, pairs / "run.yaml")


@pytest.fixture()
def run_config(pairs: Path) -> Path:
    """A tiny GAN run of MAX_STEPS steps (a resumed run must reach its end)."""
    return _run_config(pairs, MAX_STEPS)


@pytest.fixture()
def endless_config(pairs: Path) -> Path:
    """A tiny GAN run far longer than any test waits: a signal always finds it training (MAX_STEPS tiny steps can
    all be done before the signal lands when the test process is kept off the cores for a second)."""
    return _run_config(pairs, 100 * MAX_STEPS)


def start_training(config: Path, *extra: object) -> subprocess.Popen:
    command = [sys.executable, "-m", "confocalize.cli", "train", "--config", str(config), *map(str, extra)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ONE_THREAD)


def test_kill_9_then_resume_reaches_the_same_final_step(run_config: Path) -> None:
    run = run_config.parent / "run"
    last = run / "checkpoints" / "last.ckpt"
    proc = start_training(run_config)
    wait_for_checkpoint(last, 2 * EVERY, proc)
    proc.kill()  # SIGKILL: no handler runs, nothing is saved on the way out
    proc.communicate(timeout=TIMEOUT)
    saved = generator_step(last)  # written atomically: never a truncated file
    assert saved % EVERY == 0 and 2 * EVERY <= saved < MAX_STEPS

    resumed = subprocess.run(
        [sys.executable, "-m", "confocalize.cli", "train", "--config", str(run_config), "--resume", str(last)],
        check=False, capture_output=True, text=True, timeout=TIMEOUT, env=ONE_THREAD,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert generator_step(last) == MAX_STEPS  # what an uninterrupted run reaches
    steps = [int(r["step"]) for r in logged(run, 1) if r["train/g_l1"]]
    assert min(steps) >= saved - 1 and max(steps) == MAX_STEPS - 1  # continued, not restarted
    assert (run / "model" / "weights.safetensors").is_file()


def test_sigterm_saves_the_exact_step_and_exits_143(endless_config: Path) -> None:
    run = endless_config.parent / "run"
    last = run / "checkpoints" / "last.ckpt"
    proc = start_training(endless_config)
    wait_for_checkpoint(last, EVERY, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT)
    message = " ".join(err.split())
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    found = re.search(r"training interrupted by SIGTERM at step (\d+); checkpoint saved: (\S+);", message)
    assert found, message
    assert generator_step(last) == int(found[1]) and Path(found[2]) == last
    assert f"--resume {run}" in message
    assert not (run / "model").exists()


def _signal_once_saved(ckpt: Path, signum: int) -> None:
    """Send ``signum`` to this process once ``ckpt`` exists (run in a thread)."""
    wait_for_checkpoint(ckpt, 1)
    os.kill(os.getpid(), signum)


@pytest.mark.usefixtures("torch_one_thread")
def test_sigint_saves_the_exact_step_and_restores_the_handlers(pairs: Path) -> None:
    config = tiny_config(pairs, "run", trainer={"max_steps": 500, "val_every_steps": 1000, "checkpoint_every_steps": 2})
    last = pairs / "run" / "checkpoints" / "last.ckpt"
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    threading.Thread(target=_signal_once_saved, args=(last, signal.SIGINT), daemon=True).start()
    with pytest.raises(Interrupted, match=r"interrupted by SIGINT at step \d+") as err:
        fit(config)
    assert err.value.exit_code == 130
    step = int(re.search(r"at step (\d+)", str(err.value))[1])
    assert generator_step(last) == step < 500
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
