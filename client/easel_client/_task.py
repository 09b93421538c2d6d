"""What ``Task`` and ``AsyncTask`` share: reading an envelope, and the flows (see ``_core``)
that wait for a job and download its images."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from easel_client._core import Core, Flow
from easel_client._progress import Bar
from easel_client.errors import TaskCanceled, TaskFailed, WaitTimeout

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


class BaseTask:
    """A job on the server, as its latest envelope; ``Task`` and ``AsyncTask`` add the calls."""

    def __init__(self, envelope: dict[str, Any]) -> None:
        self.envelope = envelope

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.status} {self.state}>"

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


def wait(
    core: Core,
    task: BaseTask,
    timeout: float | None = None,
    progress: bool | TextIO = False,
    raise_on_error: bool = True,
) -> Flow[None]:
    """Long-poll until the job ends, renewing ``task.envelope``; see ``Task.wait``."""
    bar = Bar(sys.stderr if progress is True else progress) if progress else None
    poll_s = POLL_WITH_BAR_S if bar else POLL_S
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            if bar:
                bar.show(task)
            if task.done:
                break
            hold = poll_s
            if deadline is not None:
                hold = min(hold, deadline - time.monotonic())
                if hold <= 0:
                    raise WaitTimeout(f"task {task.id} still {task.state} after {timeout} s")
            task.envelope = yield from core.call(core.task_request(task.id, wait=round(hold, 3)))
    finally:
        if bar:
            bar.close()
    if raise_on_error and task.status == "FAILED":
        raise TaskFailed(task)
    if raise_on_error and task.status == "CANCELED":
        raise TaskCanceled(task)


def images(
    core: Core, task: BaseTask, dest_dir: str | Path | None
) -> Flow[list[bytes] | list[Path]]:
    """Wait for the job, download its images, and save them when given a folder."""
    yield from wait(core, task)  # at once if it has ended; raises if it ended without images
    contents = []
    for url in task.urls:
        contents.append((yield from core.download(url)))
    if dest_dir is None:
        return contents
    folder = Path(dest_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (url, content) in enumerate(zip(task.urls, contents, strict=True)):
        suffix = Path(urlsplit(url).path).suffix or ".png"
        path = folder / f"{task.id}-{index}{suffix}"
        path.write_bytes(content)
        paths.append(path)
    return paths
