"""The part every widget shares: run one API call in a worker thread, with progress, cancel and status.

User errors (:class:`confocalize.errors.ConfocalizeError`) become a napari error notification with
their one-line message, and the same line in the status label; no traceback dialog. Any other
exception goes to napari's error notifications with its traceback, as the bug it is. Warnings of the
work (e.g. a pixel size unlike the model's) become napari warning notifications.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from napari.qt.threading import create_worker
from napari.utils.notifications import notification_manager, show_error
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from confocalize.errors import ConfocalizeError


class Cancelled(Exception):
    """The user pressed Cancel; raised inside the work to abandon it."""


class TaskPanel(QWidget):
    """Run and Cancel buttons, a busy bar and a status line for one kind of work.

    ``run(work, done, what)`` calls ``work()`` in a worker thread and ``done(result)`` in the main
    thread. The work reports lines with :meth:`report` (thread-safe) and calls :meth:`check_cancel`
    (or reads :attr:`cancel_requested`).
    """

    progressed = Signal(str)  # a line of progress; emitted from the worker thread
    finished = Signal()  # the work ended, whatever its outcome (for tests and callers)

    def __init__(self, run_text: str, cancel_text: str = "Cancel", can_cancel: bool = True) -> None:
        super().__init__()
        self.run_button = QPushButton(run_text)
        self.cancel_button = QPushButton(cancel_text)
        self.cancel_button.setVisible(can_cancel)
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        self.cancel_requested = threading.Event()
        self.worker: Any = None
        self.progressed.connect(self.status.setText)

    def run(self, work: Callable[[], Any], done: Callable[[Any], None], what: str) -> None:
        """Start ``work`` in a thread (``what``: the status while it runs); ``done(result)`` when it returns."""
        self.cancel_requested.clear()
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)  # busy: the status line says how far the work is
        self.progress.setVisible(True)
        self.status.setText(what)
        start = time.monotonic()
        self.worker = create_worker(work, _ignore_errors=True)  # errors are ours to report (fail)
        self.worker.returned.connect(lambda result: self._done(done, result, start))
        self.worker.errored.connect(self.fail)
        self.worker.finished.connect(self._finished)
        self.worker.start()

    def report(self, line: str) -> None:
        """A line of progress from the work (any thread), shown as the status."""
        self.progressed.emit(line)

    def check_cancel(self) -> None:
        """Raise :class:`Cancelled` if the user asked to cancel (call it from the work)."""
        if self.cancel_requested.is_set():
            raise Cancelled

    def cancel(self) -> None:
        """Ask the work to stop at its next check."""
        self.cancel_requested.set()
        self.cancel_button.setEnabled(False)
        self.status.setText("stopping...")

    def _done(self, done: Callable[[Any], None], result: Any, start: float) -> None:
        self.status.setText(f"done in {time.monotonic() - start:.1f} s")
        done(result)

    def fail(self, exc: BaseException) -> None:
        """Report what stopped the work (or a user error found before it started): one line, or a bug's traceback."""
        if isinstance(exc, Cancelled):
            self.status.setText("cancelled")
        elif isinstance(exc, ConfocalizeError):
            self.status.setText(str(exc))
            show_error(str(exc))
        else:
            self.status.setText(f"failed: {type(exc).__name__}: {exc}")
            notification_manager.receive_error(type(exc), exc, exc.__traceback__)

    def _finished(self) -> None:
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress.setVisible(False)
        self.finished.emit()
