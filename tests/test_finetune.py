"""Built-in models by name, fine-tuning from a package (--init-from), refusals and the recorded lineage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from test_train import tiny_config, write_tiny_pairs

from confocalize import package as package_module
from confocalize.cli import main
from confocalize.config import dump_config
from confocalize.errors import ConfocalizeError
from confocalize.package import load_package, package_summary
from confocalize.train import fit


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pairs")
    write_tiny_pairs(root)
    return root, fit(tiny_config(root, "parent")).model_dir


def test_fine_tuning_starts_from_the_parent_and_records_the_lineage(parent: tuple[Path, Path], tmp_path: Path) -> None:
    root, parent_dir = parent
    frozen = {"lr": 1e-12, "d_lr": 1e-12}  # no learning: the child must keep the parent's weights
    child = fit(tiny_config(root, str(tmp_path / "child"), optim=frozen, trainer={"max_steps": 1}).model_copy(
        update={"init_from": str(parent_dir)}))  # fmt: skip
    p, c = load_package(parent_dir), load_package(child.model_dir)
    child_weights = dict(c.generator.named_parameters())  # BatchNorm statistics move with every batch: parameters only
    for name, value in p.generator.named_parameters():
        torch.testing.assert_close(child_weights[name], value, atol=1e-6, rtol=0, msg=name)
    assert [(x.name, x.sha256) for x in c.provenance.lineage] == [(str(parent_dir), p.sha256)]
    assert c.provenance.training is not None and c.provenance.training.steps == 1 and c.provenance.training.hardware
    grandchild = fit(tiny_config(root, str(tmp_path / "grandchild")).model_copy(update={"init_from": str(child.model_dir)}))
    g = load_package(grandchild.model_dir)
    assert [x.sha256 for x in g.provenance.lineage] == [c.sha256, p.sha256]
    assert package_summary(g)["lineage"] == {"parent": f"{child.model_dir} (sha256 {c.sha256})",
                                             "parent 2": f"{parent_dir} (sha256 {p.sha256})"}  # fmt: skip


def test_a_package_that_does_not_fit_is_refused_in_one_line(parent: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    root, parent_dir = parent
    wider = tiny_config(root, str(tmp_path / "wide"), generator={"base_channels": 8}).model_copy(update={"init_from": str(parent_dir)})
    with pytest.raises(ConfocalizeError, match=r"cannot fine-tune from this model: its generator is \(depth 2, base_channels 4"):
        fit(wider)
    config = dump_config(wider.model_copy(update={"init_from": None}), tmp_path / "wide.yaml")
    code = main(["train", "--config", str(config), "-o", str(tmp_path / "cli"), "--init-from", str(parent_dir)])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "Traceback" not in err and "cannot fine-tune from this model" in err and "its generator is" in err
    assert not (tmp_path / "cli" / "model").exists()


def test_settings_the_run_leaves_open_come_from_the_parent(parent: tuple[Path, Path], tmp_path: Path) -> None:
    """A parent of other generator and normalisation settings (e.g. a format-3 package) fine-tunes with --init-from alone."""
    root, _ = parent
    old = fit(tiny_config(root, str(tmp_path / "old"), generator={"depth": 2, "base_channels": 4, "residual": False},
                          data={"normalization": {"input_window": 1}}))  # fmt: skip
    raw = tiny_config(root, "unused").model_dump(mode="json", exclude_unset=True)
    del raw["generator"]  # the child's config says nothing about the network
    config = tmp_path / "child.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["train", "--config", str(config), "-o", str(tmp_path / "child"), "--init-from", str(old.model_dir)]) == 0
    child = load_package(tmp_path / "child" / "model")
    assert child.generator_config == load_package(old.model_dir).generator_config
    assert child.normalization.input_window == 1 and not child.generator_config.residual


def test_built_in_models_load_by_name_everywhere(parent: tuple[Path, Path], tmp_path: Path, monkeypatch, capsys) -> None:
    root, parent_dir = parent
    shelf = tmp_path / "models"
    load_package(parent_dir)  # checks out
    (shelf / "tiny-test").mkdir(parents=True)
    for f in parent_dir.iterdir():
        (shelf / "tiny-test" / f.name).write_bytes(f.read_bytes())
    monkeypatch.setattr(package_module, "BUILTIN_DIR", shelf)
    assert load_package("tiny-test").sha256 == load_package(parent_dir).sha256
    assert main(["models"]) == 0 and "tiny-test" in capsys.readouterr().out
    assert main(["enhance", "tiny-test", str(root / "lq" / "000_0.tif"), "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "000_0.ome.tif").is_file()
    capsys.readouterr()
    assert main(["info", "tiny-test", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["package"]["path"] == str(shelf / "tiny-test")
    with pytest.raises(ConfocalizeError, match=r"no such model folder or .zip or a built-in model \(tiny-test;"):
        load_package("no-such-model")


def test_the_shipped_models_load_offline_and_state_their_licence_and_scores(tmp_path: Path) -> None:
    from confocalize.package import builtin_names

    assert {"w2s-denoise", "dscm-confocal-sted", "sim-widefield-confocal"} <= set(builtin_names())
    for name in builtin_names():
        pkg = load_package(name)
        assert pkg.provenance.data_licence and pkg.provenance.training and pkg.provenance.training.scores, name
    assert main(["models"]) == 0
