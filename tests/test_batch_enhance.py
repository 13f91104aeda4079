"""Batch enhancement: a bad file is reported and skipped, finished outputs are verified and skipped,
so an interrupted batch resumes where it stopped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import confocalize.predict
from confocalize.batch import BatchSummary, sidecar
from confocalize.cli import main
from confocalize.config import GeneratorConfig, NormalizationConfig
from confocalize.errors import ConfocalizeError
from confocalize.io import write_image
from confocalize.package import ModelPackage, build_generator, load_package, save_package
from confocalize.predict import enhance_files

TINY = GeneratorConfig(depth=2, base_channels=4, residual=False)
NAMES = ("a", "b", "c")


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    return save_package(ModelPackage(build_generator(TINY), TINY, NormalizationConfig()), tmp_path / "model")


@pytest.fixture()
def inputs(tmp_path: Path) -> Path:
    """A folder with three small images a, b, c."""
    rng = np.random.default_rng(0)
    for name in NAMES:
        write_image(tmp_path / "in" / f"{name}.tif", rng.integers(0, 4000, (16, 16), dtype=np.uint16), "YX", pixel_size=0.1)
    return tmp_path / "in"


def spoil(path: Path) -> None:
    path.write_bytes(b"II*\x00 this is not a TIFF any more")


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_a_bad_file_in_a_folder_is_listed_and_the_others_are_written(tmp_path: Path, model: Path, inputs: Path) -> None:
    spoil(inputs / "b.tif")
    summary = enhance_files(load_package(model), [inputs], tmp_path / "out")
    assert [p.name for p in summary.written] == ["a.ome.tif", "c.ome.tif"] and list(summary) == list(summary.written)
    [failure] = summary.failed
    assert failure.path == inputs / "b.tif" and "not a readable TIFF" in failure.reason and "\n" not in failure.reason
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.ome.tif", "a.ome.tif.sha256", "c.ome.tif", "c.ome.tif.sha256"]


def test_cli_lists_the_failed_file_and_exits_2(tmp_path: Path, model: Path, inputs: Path, capsys) -> None:
    spoil(inputs / "b.tif")
    assert main(["enhance", str(model), str(inputs), "-o", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    out, err = " ".join(captured.out.split()), " ".join(captured.err.split())
    assert "b.tif" in out and "not a readable TIFF" in out and "wrote 2, skipped 0 already complete, 1 failed" in out
    assert "Traceback" not in err and "1 file(s) failed" in err
    assert (tmp_path / "out" / "c.ome.tif").is_file()


def test_without_keep_going_the_batch_stops_at_the_bad_file(tmp_path: Path, model: Path, inputs: Path, capsys) -> None:
    spoil(inputs / "b.tif")
    assert main(["enhance", str(model), str(inputs), "-o", str(tmp_path / "out"), "--no-keep-going"]) == 2
    assert "b.tif: not a readable TIFF" in " ".join(capsys.readouterr().err.split())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.ome.tif", "a.ome.tif.sha256"]


def test_keep_going_also_works_for_a_list_of_files(tmp_path: Path, model: Path, inputs: Path) -> None:
    files = [inputs / f"{name}.tif" for name in NAMES]
    spoil(files[0])
    with pytest.raises(ConfocalizeError, match="a.tif: not a readable TIFF"):
        enhance_files(load_package(model), files, tmp_path / "out")  # files only: stop at the first problem
    summary = enhance_files(load_package(model), files, tmp_path / "out", keep_going=True)
    assert [f.path for f in summary.failed] == [files[0]] and len(summary.written) == 2


def test_a_rerun_skips_complete_outputs_without_touching_them(tmp_path: Path, model: Path, inputs: Path) -> None:
    package = load_package(model)
    first = enhance_files(package, [inputs], tmp_path / "out")
    before = mtimes(tmp_path / "out")
    calls: list[tuple[int, int]] = []
    again = enhance_files(package, [inputs], tmp_path / "out", tile=64, progress=lambda d, t: calls.append((d, t)))
    assert again == BatchSummary(outputs=first.outputs, skipped=first.outputs)  # the tile size does not change results
    assert mtimes(tmp_path / "out") == before and calls == [(1, 3), (2, 3), (3, 3)]


def test_an_interrupted_batch_resumes(tmp_path: Path, model: Path, inputs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = load_package(model)
    enhance = confocalize.predict.enhance_image
    seen: list[str] = []

    def interrupted_at_b(package: ModelPackage, image, *args: object) -> object:
        seen.append(image.name)
        if image.name == "b":
            raise KeyboardInterrupt
        return enhance(package, image, *args)

    monkeypatch.setattr(confocalize.predict, "enhance_image", interrupted_at_b)
    with pytest.raises(KeyboardInterrupt):
        enhance_files(package, [inputs], tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.ome.tif", "a.ome.tif.sha256"]  # no partial b
    monkeypatch.setattr(confocalize.predict, "enhance_image", enhance)
    summary = enhance_files(package, [inputs], tmp_path / "out")
    assert [p.name for p in summary.skipped] == ["a.ome.tif"] and [p.name for p in summary.written] == ["b.ome.tif", "c.ome.tif"]


def _truncate_output(out: Path, inputs: Path, package: ModelPackage) -> None:
    (out / "a.ome.tif").write_bytes((out / "a.ome.tif").read_bytes()[:-10])


def _damage_sidecar(out: Path, inputs: Path, package: ModelPackage) -> None:
    sidecar(out / "a.ome.tif").write_text("{not json")


def _change_input(out: Path, inputs: Path, package: ModelPackage) -> None:
    write_image(inputs / "a.tif", np.ones((16, 16), np.uint16), "YX", pixel_size=0.1)


def _change_model(out: Path, inputs: Path, package: ModelPackage) -> None:
    package.normalization = NormalizationConfig(low=2.0)


def _no_change(out: Path, inputs: Path, package: ModelPackage) -> None:
    pass


@pytest.mark.parametrize(
    ("change", "dtype", "redone"),
    [
        (_truncate_output, "float32", ["a"]),
        (_damage_sidecar, "float32", ["a"]),
        (_change_input, "float32", ["a"]),
        (_change_model, "float32", ["a", "b"]),
        (_no_change, "uint16", ["a", "b"]),  # another output type
    ],
)
def test_outputs_that_do_not_check_out_are_redone(tmp_path: Path, model: Path, inputs: Path, change, dtype, redone) -> None:
    out = tmp_path / "out"
    files = [inputs / "a.tif", inputs / "b.tif"]
    enhance_files(load_package(model), files, out)
    package = load_package(model)
    change(out, inputs, package)
    summary = enhance_files(package, files, out, dtype=dtype)
    assert [p.name for p in summary.written] == [f"{name}.ome.tif" for name in redone]
    record = json.loads(sidecar(out / "a.ome.tif").read_text())
    assert record["input"] == str(inputs / "a.tif") and len(record["output_sha256"]) == 64
