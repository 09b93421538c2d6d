"""The progress bar of ``wait(progress=...)``: "queued (position N)", then denoising steps.

tqdm draws it; it is a required dependency (see client/pyproject.toml).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn, TextIO

from tqdm import tqdm

if TYPE_CHECKING:
    from easel_client._task import BaseTask


class Bar:
    """A tqdm bar that reads "queued (position N)", then counts denoising steps."""

    # Until the job reports steps there is nothing to count: its state and the time waited.
    WAITING = "{desc} [{elapsed}]"

    def __init__(self, file: TextIO) -> None:
        self._file = file
        self._bar: tqdm[NoReturn] | None = None

    def show(self, task: BaseTask) -> None:
        """Draw the task's latest state."""
        desc, progress = describe(task), task.progress
        if self._bar is None:  # created on the first answer, so its first line is right
            self._bar = tqdm(
                desc=desc, unit="step", file=self._file, mininterval=0, bar_format=self.WAITING
            )
            if not fit_unsized_terminal(self._bar) and progress is None:
                return  # tqdm has drawn it already
        bar = self._bar
        bar.set_description_str(desc, refresh=False)
        if progress is not None:
            bar.bar_format = None  # tqdm's own: percent, bar, step/total, rate
            bar.total = progress.total
            bar.n = progress.total if task.status == "SUCCESS" else progress.step
        bar.refresh()

    def close(self) -> None:
        """Leave the last state on screen."""
        if self._bar is not None:
            self._bar.close()


def fit_unsized_terminal(bar: tqdm[NoReturn]) -> bool:
    """A pty that reports no size (``script``, some CI runners) makes tqdm draw nothing."""
    unsized = (bar.ncols is not None and bar.ncols <= 0) or (
        bar.nrows is not None and bar.nrows <= 0
    )
    if unsized:
        bar.ncols = bar.nrows = None  # tqdm's compact bar, one row
    return unsized


def describe(task: BaseTask) -> str:
    """The bar's label: the job's state, with its place in the queue while it waits."""
    if task.state == "queued" and task.queue_position:
        return f"queued (position {task.queue_position})"
    return task.state or task.status.lower()
