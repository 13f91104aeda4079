"""report.html after train and evaluate: its sections, embedded PNGs, numbers equal to metrics.json,
escaped text, no external resources, and a headless-Chromium screenshot that is not blank."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from test_register import texture
from test_train import tiny_config

from confocalize import metrics
from confocalize.config import SystemDescription
from confocalize.data import read_split
from confocalize.evaluate import evaluate_pairs
from confocalize.io import read_image, write_image
from confocalize.package import load_package
from confocalize.pairs import register_folder
from confocalize.predict import enhance_image
from confocalize.register import synthetic_pair
from confocalize.report import REPORT, format_metric, run_folder, table_rows, write_report
from confocalize.train import fit

VOID = {"img", "meta", "br", "hr", "link", "input"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Node:
    tag: str
    attrs: dict[str, str | None]
    children: list[Node | str] = field(default_factory=list)

    def find_all(self, tag: str) -> list[Node]:
        found = []
        for child in self.children:
            if isinstance(child, Node):
                found += [child] if child.tag == tag else []
                found += child.find_all(tag)
        return found

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)


class Tree(HTMLParser):
    """A small DOM: nested nodes, text kept; unclosed or stray tags are counted."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("document", {})
        self.stack = [self.root]
        self.stray: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, dict(attrs))
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        if self.stack[-1].tag == tag:
            self.stack.pop()
        else:
            self.stray.append(tag)

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(path: Path) -> Node:
    tree = Tree()
    tree.feed(path.read_text(encoding="utf-8"))
    tree.close()
    assert tree.stack == [tree.root] and not tree.stray, (tree.stack[-1].tag, tree.stray)
    return tree.root


def sections(page: Node) -> dict[str, Node]:
    return {s.attrs["id"]: s for s in page.find_all("section")}


def png_of(img: Node) -> bytes:
    src = img.attrs["src"] or ""
    assert src.startswith("data:image/png;base64,")
    data = base64.b64decode(src.split(",", 1)[1], validate=True)
    assert data.startswith(PNG_SIGNATURE)
    with PILImage.open(BytesIO(data)) as image:
        image.verify()
    return data


def assert_self_contained(page: Node) -> None:
    """Nothing is fetched: no scripts, style sheets or frames, every src embedded, every link in-page."""
    for tag in ("script", "link", "iframe", "object", "embed"):
        assert not page.find_all(tag), tag
    for node in page.find_all("img"):
        png_of(node)
    for node in page.find_all("a"):
        assert (node.attrs.get("href") or "").startswith("#")


def cells(row: Node) -> list[Node]:
    return row.find_all("td")


def split_rows(section: Node) -> list[Node]:
    """The body rows of the split table (set, fields, pairs, field ids)."""
    (table,) = [t for t in section.find_all("table") if t.attrs.get("class") == "split"]
    return table.find_all("tbody")[0].find_all("tr")


@dataclass(frozen=True)
class Chain:
    pairs_dir: Path
    run: Path
    evaluation: Path


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    """Four synthetic fields registered into a pairs folder, 3 training steps on it, the test field evaluated."""
    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(5)
    raw = []
    for f in range(4):
        lq, hq, _ = synthetic_pair(texture(rng), rng, 0.5, size=96)
        raw.append((write_image(root / "raw" / "lq" / f"{f:03d}.tif", lq.data, "YX", lq.pixel_size),
                    write_image(root / "raw" / "hq" / f"{f:03d}.tif", hq.data, "YX", hq.pixel_size)))  # fmt: skip
    records = register_folder(raw, root / "pairs")
    assert all(r.status == "ok" for r in records), [r.reason for r in records]
    config = tiny_config(root, "run", data={"pairs_dir": str(root / "pairs"), "lq_dir": None, "hq_dir": None, "field_pattern": None})
    result = fit(config)
    # evaluate_model's steps, enhancing on PyTorch: its default backend first builds an ONNX graph (seconds)
    package = load_package(result.model_dir)
    test_pairs = read_split(result.output_dir / "split.json")["test"]
    predictions = {p.name: enhance_image(package, read_image(p.lq), backend="torch").data for p in test_pairs}
    evaluation = evaluate_pairs(test_pairs, predictions, root / "eval")
    write_report(root / "eval", package, run_dir=run_folder(package), evaluation=evaluation, figure=root / "eval" / "figure.png",
                 pairs={"evaluated": test_pairs})  # fmt: skip
    return Chain(root / "pairs", result.output_dir, root / "eval")


def test_training_report_shows_curves_split_overlays_provenance_and_settings(chain: Chain) -> None:
    page = parse(chain.run / REPORT)
    assert_self_contained(page)
    found = sections(page)
    assert list(found) == ["curves", "data", "overlays", "model", "settings"]
    assert len(found["curves"].find_all("img")) == 1
    split = json.loads((chain.run / "split.json").read_text())
    rows = {cells(r)[0].text(): [c.text() for c in cells(r)[1:]] for r in split_rows(found["data"])}
    assert rows == {s: [str(len(split[s]["fields"])), str(len(split[s]["pairs"])), ", ".join(split[s]["fields"])]
                    for s in ("train", "val", "test")}  # fmt: skip
    assert str(chain.pairs_dir) in found["data"].text()  # where the pairs came from
    overlays = found["overlays"].find_all("figure")
    used = split["train"]["fields"] + split["val"]["fields"]
    assert len(overlays) == len(used) and all(png_of(f.find_all("img")[0]) for f in overlays)
    assert sorted(f.find_all("figcaption")[0].text().split(" ")[0] for f in overlays) == sorted(used)  # one per field
    package = load_package(chain.run / "model")
    assert package.sha256 in found["model"].text() and package.sha256 in page.find_all("p")[0].text()
    settings = {cells(r)[0].text(): cells(r)[1].text() for r in found["settings"].find_all("tr")[1:]}
    assert settings["trainer.max_steps"] == "3" and settings["data.pairs_dir"] == str(chain.pairs_dir)


def test_evaluation_report_numbers_equal_metrics_json(chain: Chain) -> None:
    page = parse(chain.evaluation / REPORT)
    assert_self_contained(page)
    found = sections(page)
    assert list(found) == ["evaluation", "curves", "data", "overlays", "model", "settings"]
    result = json.loads((chain.evaluation / "metrics.json").read_text())
    evaluation = found["evaluation"]
    for key in ("median", "median_affine"):
        (table,) = [t for t in evaluation.find_all("table") if t.attrs.get("class") == key.replace("_", "-")]
        header, rows = table_rows(result, key)
        assert [c.text() for c in table.find_all("th")] == header
        assert [[c.text() for c in cells(r)] for r in table.find_all("tr")[1:]] == rows
    (per_image,) = [t for t in evaluation.find_all("table") if t.attrs.get("class") == "per-image"]
    body = per_image.find_all("tbody")[0].find_all("tr")
    assert len(body) == result["n_images"] == len(result["per_image"])
    for row, record in zip(body, result["per_image"], strict=True):
        row_cells = cells(row)
        assert [row_cells[0].text(), row_cells[1].text()] == [record["name"], record["field"]]
        expected = [(m, record[k][m]) for k in ("lq_vs_hq", "generated_vs_hq") for m in metrics.METRIC_NAMES]
        assert [float(c.attrs["data-value"]) for c in row_cells[2:]] == [v for _, v in expected]
        assert [c.text() for c in row_cells[2:]] == [format_metric(m, v) for m, v in expected]
    text = evaluation.text()
    assert result["normalisation"] in text and f"data_range={result['data_range']:g}" in text
    (figure,) = [i for i in evaluation.find_all("img") if i.attrs["alt"] == "evaluation figure"]
    assert png_of(figure) == (chain.evaluation / "figure.png").read_bytes()  # the evaluation's own figure, not a redraw
    assert len(found["curves"].find_all("img")) == 1  # the model is still RUN/model: its run's curves are found
    test_field = result["per_image"][0]["field"]
    assert [c.text() for c in cells(split_rows(found["data"])[-1])][:2] == ["evaluated here", "1"]
    assert test_field in found["data"].text() and not [p for p in found["data"].find_all("p") if p.attrs.get("class") == "warn"]
    (overlay,) = found["overlays"].find_all("figure")
    assert f"{test_field} (evaluated)" in overlay.text()


def test_report_escapes_text_and_warns_when_training_fields_are_scored(chain: Chain, tmp_path: Path) -> None:
    hostile = '<script>alert("x")</script> & <img src="http://example.org/x.png">'
    package = load_package(chain.run / "model")
    lq_system = SystemDescription(notes=hostile, microscope="<b>scope</b>")
    package = replace(package, provenance=package.provenance.model_copy(update={"lq_system": lq_system}))
    result = json.loads((chain.evaluation / "metrics.json").read_text())
    trained_on = package.provenance.training_data.split["train"]["fields"][0]
    result["per_image"][0] |= {"name": hostile, "field": trained_on}
    page = parse(write_report(tmp_path, package, evaluation=result, figure=tmp_path / "absent.png"))
    assert_self_contained(page)  # the hostile script and image stayed text
    assert hostile in page.text() and "<b>scope</b>" in page.text()
    found = sections(page)
    (warning,) = [p for p in found["data"].find_all("p") if p.attrs.get("class") == "warn"]
    assert trained_on in warning.text()
    assert "No training logs" in found["curves"].text() and "No registration overlays" in found["overlays"].text()
    assert not [i for i in found["evaluation"].find_all("img")]  # no figure file: none embedded


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="no chromium binary on PATH (Debian: apt-get install chromium; .ci/run installs it)")
def test_report_renders_in_headless_chromium(chain: Chain, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    command = [chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
               f"--screenshot={shot}", "--window-size=1200,2000", (chain.evaluation / REPORT).as_uri()]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert shot.is_file(), run.stderr[-2000:]
    with PILImage.open(shot) as image:
        gray = np.asarray(image.convert("L"), dtype=np.float64)
    assert gray.shape == (2000, 1200)
    assert gray.std() > 20 and (gray < 200).mean() > 0.03  # text, tables and images, not a blank page
