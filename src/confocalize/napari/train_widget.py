"""The Train widget: a model trained on a pairs folder for some minutes, as ``confocalize train PAIRS --minutes M``.

The work is ``train.fit`` with the default recipe and a wall-time budget. Progress and validation
metrics arrive live as ``training_log.TrainingLog`` lines (step, steps/s, losses, validation
PSNR/SSIM, minutes left); Stop ends the run early through ``guards.StopRequest``, which still
validates and exports the best model. The model package is then offered by every Enhance widget.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from napari.components import ViewerModel
from qtpy.QtWidgets import (
    QDoubleSpinBox, QFileDialog, QFormLayout, QHBoxLayout, QLineEdit, QPlainTextEdit, QPushButton, QSpinBox, QVBoxLayout, QWidget,
)  # fmt: skip

from confocalize.config import parse_config
from confocalize.errors import ConfocalizeError
from confocalize.guards import StopRequest
from confocalize.napari.enhance_widget import TRAINED_MODELS
from confocalize.napari.tasks import TaskPanel
from confocalize.train import TrainResult, fit
from confocalize.training_log import TrainingLog

PROGRESS_EVERY_S = 5.0  # a progress line at least this often, besides one per validation


class _Lines:
    """A text stream that hands each complete line to ``emit`` (TrainingLog prints into it from the worker)."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self.emit, self.buffer = emit, ""

    def write(self, text: str) -> int:
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            if line:
                self.emit(line)
        return len(text)

    def flush(self) -> None:
        """Nothing is held back but an unfinished line."""


class TrainWidget(QWidget):
    """Choose a pairs folder (from ``confocalize register``), a run folder and minutes; train live."""

    def __init__(self, napari_viewer: ViewerModel) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.pairs = QLineEdit()
        self.pairs.setPlaceholderText("folder with pairs.json (confocalize register)")
        self.pairs.editingFinished.connect(self._suggest_output)
        self.output = QLineEdit()
        self.output.setPlaceholderText("run folder to create")
        self.minutes = QDoubleSpinBox()
        self.minutes.setRange(0.1, 24 * 60)
        self.minutes.setValue(5.0)
        self.minutes.setSuffix(" min")
        self.val_every = QSpinBox()
        self.val_every.setRange(1, 100000)
        self.val_every.setValue(50)
        self.val_every.setSuffix(" steps")
        form = QFormLayout()
        form.addRow("pairs folder", self._with_browse(self.pairs, "Pairs folder"))
        form.addRow("run folder", self._with_browse(self.output, "Run folder"))
        form.addRow("budget", self.minutes)
        form.addRow("validate every", self.val_every)
        self.task = TaskPanel("Train", cancel_text="Stop (keeps the best model)")
        self.task.run_button.clicked.connect(self.start)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.task.progressed.connect(self.log.appendPlainText)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.task)
        layout.addWidget(self.log)

    def start(self) -> None:
        """Train in a worker thread with the settings of the fields."""
        pairs, output = self.pairs.text().strip(), self.output.text().strip()
        try:
            if not pairs or not output:
                raise ConfocalizeError("give a pairs folder (from confocalize register) and a run folder to create")
            config = parse_config(
                {"output_dir": output, "data": {"pairs_dir": pairs},
                 "trainer": {"max_time_minutes": self.minutes.value(), "max_steps": None, "progress_bar": False,
                             "val_every_steps": self.val_every.value()}},
                source="Train widget",
            )  # fmt: skip
        except ConfocalizeError as exc:
            self.task.fail(exc)
            return
        self.log.clear()
        lines = _Lines(self.task.report)
        callbacks = [TrainingLog(None, every_s=PROGRESS_EVERY_S, stream=lines), StopRequest(self.task.cancel_requested)]  # type: ignore[arg-type]

        def done(result: TrainResult) -> None:
            TRAINED_MODELS.add(result.model_dir)
            scores = ", ".join(f"{k} {v:.4g}" for k, v in result.best_val.items())
            self.task.status.setText(f"model {result.model_dir} ({result.steps} steps; best validation: {scores}); now offered in Enhance")

        self.task.run(lambda: fit(config, callbacks=callbacks), done, f"training on {pairs} for {self.minutes.value():g} min...")

    def _with_browse(self, field: QLineEdit, title: str) -> QHBoxLayout:
        """``field`` with a button that fills it from a folder dialog."""
        button = QPushButton("Browse...")

        def browse() -> None:
            folder = QFileDialog.getExistingDirectory(self, title)
            if folder:
                field.setText(folder)
                field.editingFinished.emit()

        button.clicked.connect(browse)
        row = QHBoxLayout()
        row.addWidget(field)
        row.addWidget(button)
        return row

    def _suggest_output(self) -> None:
        """Offer ``PAIRS-run`` beside the pairs folder while the run folder is empty."""
        pairs = self.pairs.text().strip()
        if pairs and not self.output.text().strip():
            folder = Path(pairs)
            self.output.setText(str(folder.with_name(f"{folder.name}-run")))
