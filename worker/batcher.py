"""Cross-request micro-batching: compatible jobs share one pipeline call.

A worker runs each job on its own thread of Celery's threads pool, from its message to its
ack (worker/runner.py). That thread fetches and fits the job's input, hands the job to the
``Batcher`` and blocks; the batcher's one GPU thread takes waiting jobs in arrival order,
groups those whose pipeline call would be the same (``batch_key``) up to the model's
``max_batch`` images, lets a lone job wait at most ``max_wait_ms`` for a partner while
another job of this worker is still fetching its input (a partner can only come from
there: with none on its way, it runs at once), and runs the group in one call.
Each job's thread then encodes and uploads its own images and writes its own record, while
the GPU runs the next group: fetching, decoding, encoding and uploading overlap the GPU's
work instead of standing between its calls.

Every job keeps its own record, progress, cancel, time limit and webhooks: the step callback
checks each member, and a member canceled (or past its time limit) ends at once while its
partners run on; when no member is left the call stops. If a shared call fails it is split:
an out-of-memory error retries the members in two halves, any other error reruns each
member alone, so one bad job never fails its partners. A message is acked by Celery only
when its job's thread returns, after its record is terminal; a worker killed mid-batch
leaves every member marked running on a dead worker, and the reaper requeues them all.

Why our own batcher and not ``celery-batches``: celery-batches hands a task the buffered
messages as one list and acks them together when that task returns. The GPU would then wait
for the whole batch's uploads (and the next batch's fetches) before its next call, which is
the idle gap this module exists to close; one job's slow upload would hold its partners'
acks; and its flush is by count or timer, blind to which messages can share a call. Holding
each job on a thread of Celery's own threads pool keeps Celery's delivery, acks and warm
shutdown as they are, and leaves only the grouping, a hundred lines, to us.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from PIL import Image

from shared.models import GenerationParams, JobRecord
from shared.registry import ModelSpec
from worker.pipelines import BatchItem

log = logging.getLogger(__name__)

BatchKey = tuple[Hashable, ...]
HARD_GRACE_S = 60.0  # past every member's time limit by this much, the call is stuck


def start_step(steps: int, strength: float) -> int:
    """Where diffusers' img2img starts in a schedule of ``steps`` at this strength
    (``get_timesteps``): two strengths with the same start run the same timesteps."""
    return max(steps - min(int(steps * strength), steps), 0)


def batch_key(spec: ModelSpec, params: GenerationParams, size: tuple[int, int]) -> BatchKey:
    """What one pipeline call cannot vary per image; jobs with equal keys may share a call.

    Prompts, negative prompts, inputs and seeds vary per image. The call takes one strength
    (equal steps and start step give equal timesteps), one guidance scale, one size (the
    fitted input's, which also decides VAE tiling), and one negative prompt mode: SDXL
    encodes a missing negative prompt as zeros but an empty one as text.
    """
    steps = spec.steps_for(params.strength) or 0
    return (
        spec.app_id,
        size,
        steps,
        start_step(steps, params.strength),
        params.guidance_scale,
        params.negative_prompt is None,
    )


@dataclass(eq=False)
class Member:
    """One job waiting for, or riding in, a pipeline call."""

    record: JobRecord
    spec: ModelSpec
    item: BatchItem
    deadline: float  # time.monotonic() past which the job has run out of time
    key: BatchKey = ()
    arrived: float = field(default_factory=time.monotonic)
    images: list[Image.Image] = field(default_factory=list)
    flags: list[bool] = field(default_factory=list)
    error: BaseException | None = None
    call_images: int = 0  # images in the call that ran this job, partners' included
    last_progress: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        if not self.key:
            self.key = batch_key(self.spec, self.record.params, self.item.image.size)

    @property
    def size(self) -> int:
        """Images this job asks for."""
        return len(self.item.seeds)

    @property
    def ended(self) -> bool:
        """Whether this job's thread has been released."""
        return self.done.is_set()

    def end(self, error: BaseException | None = None) -> None:
        """Release this job's thread: with its images, or with the error that ended it."""
        self.error = error
        self.done.set()


class NobodyLeft(Exception):
    """Raised from a step callback when every member of the call has ended: stop it."""


class Dropped(Exception):
    """Ends a member whose job ended elsewhere while it waited (canceled): write nothing."""


Execute = Callable[[list[Member]], None]
Admit = Callable[[list[Member]], list[Member]]
Observe = Callable[[list[Member], float | None], None]


class Batcher:
    """Groups members into pipeline calls on one GPU thread; see the module docstring.

    ``admit(group)`` marks a group's jobs running and returns those still to run (it ends
    the others). ``execute(group)`` runs one call: it fills each live member's images and
    flags, may end members early, and raises if the call failed. ``observe(group, idle_s)``
    sees every call, with the GPU's idle time before it when a job was already waiting.
    ``is_out_of_memory`` and ``recover`` decide and clean up after an OOM.
    """

    def __init__(
        self,
        execute: Execute,
        is_out_of_memory: Callable[[BaseException], bool],
        recover: Callable[[], None] = lambda: None,
        observe: Observe = lambda group, idle_s: None,
        admit: Admit = lambda group: group,
    ) -> None:
        self.execute, self.observe, self.admit = execute, observe, admit
        self.is_out_of_memory, self.recover = is_out_of_memory, recover
        self._pending: list[Member] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._last_end: float | None = None
        self._call_deadline: float | None = None
        self._arriving = 0  # jobs of this worker still fetching: the only partners to come
        self._finished: list[Member] = []  # done, released once the next call is under way

    def run(self, member: Member) -> Member:
        """Queue one job and block until it ended; raises what ended it, if not success."""
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="easel-gpu", daemon=True)
                self._thread.start()
            self._pending.append(member)
            self._cond.notify_all()
        member.done.wait()
        if member.error is not None:
            raise member.error
        return member

    @contextmanager
    def arriving(self) -> Iterator[None]:
        """Mark a job on its way here (fetching its input): worth waiting for."""
        with self._cond:
            self._arriving += 1
        try:
            yield
        finally:
            with self._cond:
                self._arriving -= 1
                self._cond.notify_all()

    def stuck_for(self, now: float | None = None) -> float:
        """Seconds the running call is past every member's time limit plus a grace (0: not)."""
        deadline = self._call_deadline
        if deadline is None:
            return 0.0
        return max(0.0, (now or time.monotonic()) - deadline)

    def _loop(self) -> None:
        while True:
            group = self._next_group()
            started = time.monotonic()
            last = self._last_end
            idle_s = started - last if last is not None and group[0].arrived <= last else None
            self._call_deadline = max(m.deadline for m in group) + HARD_GRACE_S
            live: list[Member] = []
            try:
                live = self.admit(group)
                # The last call's jobs wake only now: their threads' encoding and uploads
                # would otherwise take the GIL from this thread while it starts the next.
                self._release()
                if live:
                    self._run(live)
            except BaseException as exc:  # the GPU thread must outlive any one call
                log.exception("batch runner failed; ending its jobs")
                self._release()
                for member in group:
                    if not member.ended:
                        member.end(exc)
            finally:
                self._call_deadline = None
                self._last_end = time.monotonic()
            if live:  # a call ran, over the jobs admitted to it (not those canceled first)
                self.observe(live, idle_s)

    def _release(self) -> None:
        """Hand the finished jobs back to their threads."""
        finished, self._finished = self._finished, []
        for member in finished:
            member.end()

    def _next_group(self) -> list[Member]:
        """The oldest waiting job and its compatible partners, waiting briefly for more."""
        with self._cond:
            if not self._pending:
                self._release()  # nothing to start: no reason to hold them
            while not self._pending:
                self._cond.wait()
            head = self._pending[0]
            capacity = max(head.spec.max_batch, head.size)
            wait_until = head.arrived + head.spec.max_wait_ms / 1000
            while True:
                group = self._compatible(head, capacity)
                left = wait_until - time.monotonic()
                full = sum(m.size for m in group) >= capacity
                # Only a lone job waits, and only for a partner on its way: a group that
                # already shares the call goes, and the GPU idles no longer than it must.
                if full or len(group) > 1 or left <= 0 or not self._arriving:
                    break
                self._release()  # the GPU waits anyway
                self._cond.wait(timeout=left)
            for member in group:
                self._pending.remove(member)
            return group

    def _compatible(self, head: Member, capacity: int) -> list[Member]:
        group, room = [head], capacity - head.size
        for member in self._pending[1:]:
            if member.key == head.key and member.size <= room:
                group.append(member)
                room -= member.size
        return group

    def _run(self, group: list[Member]) -> None:
        """One call for the group; on failure, split it so partners do not share the fault."""
        try:
            self.execute(group)
        except NobodyLeft:
            return
        except Exception as exc:  # noqa: BLE001 - each member's own thread maps it (runner)
            live = [m for m in group if not m.ended]
            if len(live) <= 1:
                for member in live:
                    member.end(exc)
                return
            if self.is_out_of_memory(exc):
                log.warning("out of memory at %d images; retrying in halves", _images(live))
                self.recover()
                half = len(live) // 2
                self._run(live[:half])
                self._run(live[half:])
                return
            log.warning("a call of %d jobs failed; running each alone", len(live))
            for member in live:
                self._run([member])
            return
        self._finished.extend(m for m in group if not m.ended)


def _images(group: list[Member]) -> int:
    return sum(m.size for m in group)
