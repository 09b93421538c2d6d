"""``Task``: one job, as its latest envelope, with refresh, wait, cancel and download."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, overload
from urllib.parse import urlsplit

from tqdm import tqdm

from client.errors import TaskCanceled, TaskFailed, WaitTimeout

if TYPE_CHECKING:
    from client._client import Client

TERMINAL = ("SUCCESS", "FAILED", "CANCELED")
# Each long poll is cut this short so a progress bar moves while the job runs; without a
# bar the server may hold longer. Either way the answer comes as soon as the job ends.
POLL_WITH_BAR_S = 1.0
POLL_S = 10.0


@dataclass(frozen=True)
class Progress:
    """How far the denoising loop has got."""

    step: int
    total: int

    @property
    def percent(self) -> float:
        """Share of steps done, 0 to 100."""
        return round(100 * self.step / self.total, 1) if self.total else 0.0


class Task:
    """A job on the server; attributes read its latest envelope (``refresh()`` renews it)."""

    def __init__(self, client: Client, envelope: dict[str, Any]) -> None:
        self._client = client
        self.envelope = envelope

    def __repr__(self) -> str:
        return f"<Task {self.id} {self.status} {self.state}>"

    @property
    def id(self) -> str:
        """The task id."""
        return str(self.envelope["task_id"])

    @property
    def status(self) -> str:
        """PENDING, SUCCESS, FAILED or CANCELED."""
        return str(self.envelope["status"])

    @property
    def state(self) -> str | None:
        """queued, running, uploading, succeeded, failed or canceled."""
        state = self.envelope.get("state")
        return None if state is None else str(state)

    @property
    def done(self) -> bool:
        """Whether the job has ended, well or badly."""
        return self.status in TERMINAL

    @property
    def progress(self) -> Progress | None:
        """Denoising steps done, once the job has started."""
        raw = self.envelope.get("progress")
        if not raw:
            return None
        return Progress(int(raw["step"]), int(raw["total"]))

    @property
    def queue_position(self) -> int | None:
        """Place on the GPU class's queue while it waits (1 = next)."""
        position = self.envelope.get("queue_position")
        return None if position is None else int(position)

    @property
    def eta_seconds(self) -> float | None:
        """The server's estimate of when a queued job starts."""
        eta = self.envelope.get("eta_seconds")
        return None if eta is None else float(eta)

    @property
    def urls(self) -> list[str]:
        """Presigned image URLs once the job succeeded; empty before."""
        output = self.envelope.get("output") or {}
        return list(output.get("result") or output.get("images") or [])

    @property
    def low_res_urls(self) -> list[str]:
        """Small JPEG previews of the images."""
        return list((self.envelope.get("output") or {}).get("low_res_urls") or [])

    @property
    def seeds(self) -> list[int]:
        """The seed of each image."""
        return list((self.envelope.get("output") or {}).get("seeds") or [])

    @property
    def error(self) -> str | None:
        """Why the job failed, in one line."""
        error = self.envelope.get("error")
        return None if error is None else str(error)

    def refresh(self) -> Task:
        """Read the envelope again (image URLs come back freshly signed)."""
        self.envelope = self._client.envelope(self.id)
        return self

    def cancel(self) -> Task:
        """Cancel the job: a queued one never runs, a running one stops at its next step."""
        self.envelope = self._client.cancel_task(self.id)
        return self

    def wait(
        self,
        timeout: float | None = None,
        progress: bool | TextIO = False,
        *,
        raise_on_error: bool = True,
    ) -> Task:
        """Long-poll until the job ends; ``progress`` draws a bar (``True``: on stderr).

        Raises ``TaskFailed`` or ``TaskCanceled`` when it ends badly, unless
        ``raise_on_error`` is false, and ``WaitTimeout`` after ``timeout`` seconds.
        """
        bar = _Bar(sys.stderr if progress is True else progress) if progress else None
        poll_s = POLL_WITH_BAR_S if bar else POLL_S
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                if bar:
                    bar.show(self)
                if self.done:
                    break
                hold = poll_s
                if deadline is not None:
                    hold = min(hold, deadline - time.monotonic())
                    if hold <= 0:
                        raise WaitTimeout(f"task {self.id} still {self.state} after {timeout} s")
                self.envelope = self._client.envelope(self.id, wait=round(hold, 3))
        finally:
            if bar:
                bar.close()
        if raise_on_error and self.status == "FAILED":
            raise TaskFailed(self)
        if raise_on_error and self.status == "CANCELED":
            raise TaskCanceled(self)
        return self

    @overload
    def images(self, dest_dir: None = None) -> list[bytes]: ...
    @overload
    def images(self, dest_dir: str | Path) -> list[Path]: ...
    def images(self, dest_dir: str | Path | None = None) -> list[bytes] | list[Path]:
        """Download the images, waiting for the job first; saved into ``dest_dir`` when given."""
        self.wait()  # at once if it has ended; raises if it ended without images
        contents = [self._client.download(url) for url in self.urls]
        if dest_dir is None:
            return contents
        folder = Path(dest_dir)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, (url, content) in enumerate(zip(self.urls, contents, strict=True)):
            suffix = Path(urlsplit(url).path).suffix or ".png"
            path = folder / f"{self.id}-{index}{suffix}"
            path.write_bytes(content)
            paths.append(path)
        return paths


class _Bar:
    """A tqdm bar that reads "queued (position N)", then counts denoising steps."""

    # Until the job reports steps there is nothing to count: its state and the time waited.
    WAITING = "{desc} [{elapsed}]"

    def __init__(self, file: TextIO) -> None:
        self._file = file
        self._bar: tqdm[NoReturn] | None = None

    def show(self, task: Task) -> None:
        """Draw the task's latest state."""
        desc, progress = _describe(task), task.progress
        if self._bar is None:  # created on the first answer, so its first line is right
            self._bar = tqdm(
                desc=desc, unit="step", file=self._file, mininterval=0, bar_format=self.WAITING
            )
            if not _fit_unsized_terminal(self._bar) and progress is None:
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


def _fit_unsized_terminal(bar: tqdm[NoReturn]) -> bool:
    """A pty that reports no size (``script``, some CI runners) makes tqdm draw nothing."""
    unsized = (bar.ncols is not None and bar.ncols <= 0) or (
        bar.nrows is not None and bar.nrows <= 0
    )
    if unsized:
        bar.ncols = bar.nrows = None  # tqdm's compact bar, one row
    return unsized


def _describe(task: Task) -> str:
    if task.state == "queued" and task.queue_position:
        return f"queued (position {task.queue_position})"
    return task.state or task.status.lower()
