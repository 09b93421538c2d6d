"""The worker's Celery app: configuration, the one task, and process lifecycle hooks.

One ``easel worker`` is one process on Celery's threads pool: each job holds a thread from
its message to its ack, and one GPU thread (worker/batcher.py) runs the pipeline calls, so
jobs' fetches and uploads overlap the GPU's work and compatible jobs share a call. The
threads pool has no time limits (prefork's come from signals to a child), so the step
callback enforces each job's own limit, and the heartbeat thread ends the process when a
call hangs past every member's limit: its jobs count as a lost worker, as before.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
import uuid
from contextlib import suppress
from typing import Any

import redis
from celery import Celery, signals
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from shared.errors import BackendUnavailable
from shared.jobs import JobStore, connect_redis
from shared.logs import configure_logging
from shared.netguard import GuardedHttp, policy_from
from shared.queues import BROKER_DOWN, GENERATE_TASK, celery_config
from shared.registry import load_registry
from shared.settings import Settings
from shared.storage import Storage
from shared.webhooks import WebhookPublisher
from worker.metrics import init_worker_metrics, job_in_flight
from worker.pipelines import Loader, PipelineCache
from worker.reaper import Reaper
from worker.runner import WorkerContext, run_turn

GIL_SWITCH_S = 0.001
HUNG_EXIT_CODE = 70  # EX_SOFTWARE: a pipeline call hung past its jobs' limits

log = logging.getLogger(__name__)


class WorkerProcess:
    """Per-process state: built in each pool child after the fork, never before."""

    def __init__(self, settings: Settings, app: Celery, load: Loader | None = None) -> None:
        self.settings = settings
        self.app = app
        self.load = load
        self.nodename = "worker"
        self._ctx: WorkerContext | None = None
        self._stop = threading.Event()
        # Set once warm-up ended. Jobs wait for it: running one while the warm-up thread
        # imports diffusers races its lazy imports, and a job should find its model loaded.
        self.warmed = threading.Event()
        # Turns received and not yet used to pop (waiting for warm-up): the heartbeat says
        # how many, so the reaper counts them among the turns still to come.
        self.waiting_turns = 0
        self._turns_lock = threading.Lock()

    @property
    def ctx(self) -> WorkerContext:
        """The context of this process, built on first use."""
        if self._ctx is None:
            settings = self.settings
            client = connect_redis(settings)
            storage = Storage(settings)
            self._ctx = WorkerContext(
                settings=settings,
                registry=load_registry(settings.model_registry),
                jobs=JobStore(client, settings.job_ttl_s, settings.fair_share),
                storage=storage,
                pipelines=PipelineCache(
                    settings, vram_budget_gb=settings.vram_budget_gb, load=self.load
                ),
                http=GuardedHttp(policy_from(settings)),
                webhooks=WebhookPublisher(self.app.send_task, settings, BROKER_DOWN),
                name=f"{self.nodename}/{os.getpid()}",
            )
        return self._ctx

    def start(self) -> None:
        """Warm the configured models and their safety checkers, then announce this process
        as live, in the background."""
        # Job threads encode, upload and parse while the GPU thread does a few Redis round
        # trips between calls; each return from I/O waits for the GIL up to the switch
        # interval (5 ms by default), and the GPU idles meanwhile. 1 ms cuts that wait.
        sys.setswitchinterval(GIL_SWITCH_S)
        threading.Thread(target=self._warm_then_beat, name="easel-heartbeat", daemon=True).start()

    def stop(self) -> None:
        """Stop beating, leave the live set, and make sure the process ends."""
        self._stop.set()
        try:
            self.ctx.liveness.leave(self.ctx.queue, self.ctx.name)
        except (RedisError, BackendUnavailable):
            log.warning("could not leave the live set; the entry expires by itself")
        arm_exit()

    def _warm_then_beat(self) -> None:
        ctx = self.ctx
        if self.settings.torch_threads:  # only then: a simulated (bench) worker never needs it
            import torch

            torch.set_num_threads(self.settings.torch_threads)
        try:
            ctx.storage.ensure_bucket()
            for app_id in self.settings.warm_models:
                spec = ctx.registry.get(app_id)
                ctx.pipelines.get(spec)
                checker = spec.safety_checker
                if checker is not None:  # a job's safety check should not pay its load
                    ctx.checkers.get(checker, self.settings)
                log.info("model %s is warm (safety checker: %s)", app_id, checker)
        except Exception:
            # Never live, so the API sends no work here; jobs already queued fail clearly.
            log.exception("warm-up failed; this worker will not announce itself")
            self.warmed.set()
            return
        with suppress(RedisError, BackendUnavailable):  # live before the first job is held
            self.beat()
        self.warmed.set()
        reaper = Reaper(ctx.jobs, self.settings, self.app.send_task, self.broker())
        while True:
            self._exit_if_hung()
            try:
                self.beat()
                reaper.maybe_sweep()
            except (RedisError, BackendUnavailable, OperationalError):
                log.warning("heartbeat or reaper sweep failed; retrying")
            if self._stop.wait(self.settings.worker_heartbeat_s):
                return

    def wait_until_warm(self) -> None:
        """Block a turn until warm-up ended, counted among the waiting turns meanwhile."""
        with self._turns_lock:
            self.waiting_turns += 1
        try:
            self.warmed.wait()
        finally:
            with self._turns_lock:
                self.waiting_turns -= 1

    def beat(self) -> None:
        """Heartbeat: alive, the jobs in hand, the turns waiting."""
        ctx = self.ctx
        ctx.liveness.beat(ctx.queue, ctx.name, ctx.hands(), self.waiting_turns)

    def broker(self) -> redis.Redis | None:
        """A client of Celery's Redis when it is not the job store's (``EASEL_BROKER_URL``)."""
        url = self.settings.broker_url
        if url is None or url == self.settings.redis_url:
            return None
        return connect_redis(self.settings.model_copy(update={"redis_url": url}))

    def _exit_if_hung(self) -> None:
        """A call stuck past its jobs' limits cannot be interrupted from Python: end the
        process (as prefork's hard time limit ended its child), so its jobs go back."""
        stuck_s = self.ctx.batcher.stuck_for()
        if stuck_s > 0:
            log.critical("a pipeline call hung %.0f s past its jobs' limits; exiting", stuck_s)
            logging.shutdown()
            os._exit(HUNG_EXIT_CODE)


EXIT_GRACE_S = 30.0


def arm_exit(grace_s: float = EXIT_GRACE_S) -> None:
    """End this process ``grace_s`` from now unless it has ended by itself.

    After an unrecoverable broker error Celery's teardown can hang on the dead connection
    (kombu's Redis transport under the threads pool, seen in the fault suite: the Redis
    restart run), and a hung worker is one ``easel worker`` cannot restart.
    """

    def exit_if_still_here() -> None:
        time.sleep(grace_s)
        log.critical("still here %.0f s after the worker began to stop; exiting", grace_s)
        logging.shutdown()
        os._exit(1)

    threading.Thread(target=exit_if_still_here, name="easel-exit", daemon=True).start()


def failing_stop_exits(app: Celery) -> None:
    """Arm ``arm_exit`` whenever Celery stops the worker with a failure code (its
    "Unrecoverable error" path), before its teardown gets the chance to hang."""
    base: Any = app.Worker

    class Worker(base):  # type: ignore[misc]
        def stop(self, in_sighandler: bool = False, exitcode: int | None = None) -> None:
            if exitcode not in (None, 0):
                arm_exit()
            super().stop(in_sighandler=in_sighandler, exitcode=exitcode)

    app.Worker = Worker


def create_celery(settings: Settings | None = None, load: Loader | None = None) -> Celery:
    """Build the worker's Celery app for one GPU class (``load``: how pipelines load)."""
    settings = settings or Settings()
    app = Celery("easel-worker", set_as_current=True)
    app.config_from_object(celery_config(settings))
    # The threads pool cannot cancel a running job (Celery warns and carries on); a job
    # that loses Redis rides it out instead (its final write retries for 5 minutes).
    app.conf.worker_cancel_long_running_tasks_on_connection_loss = False
    process = WorkerProcess(settings, app, load)
    failing_stop_exits(app)

    def generate(*_earlier: Any) -> str | None:
        """A turn: run the next image-to-image job in fair order, reading its parameters
        from its record, which carries the result too; the id of the job it ran, which
        Flower shows as the result. (Messages published before turns carried a job id;
        that job is in a lane like any other, so the id is ignored.)"""
        process.wait_until_warm()
        with job_in_flight(process.ctx.name):
            done = run_turn(process.ctx)
        return None if done is None else done.task_id

    def remember_nodename(sender: Any = None, **_: Any) -> None:
        process.nodename = getattr(sender, "hostname", None) or process.nodename

    app.task(name=GENERATE_TASK)(generate)
    signals.worker_init.connect(remember_nodename, weak=False)
    signals.worker_ready.connect(lambda **_: process.start(), weak=False)
    signals.worker_shutdown.connect(lambda **_: process.stop(), weak=False)
    # Receiving setup_logging makes Celery leave logging to us: its lines are JSON too.
    signals.setup_logging.connect(
        lambda loglevel=None, **_: configure_logging(settings, "worker", loglevel), weak=False
    )
    init_worker_metrics(settings)
    return app


def job_slots(settings: Settings, registry_path: Any = None) -> int:
    """Jobs one worker holds at once: three calls' worth of the largest ``max_batch`` its
    GPU class runs (one on the GPU, one being fetched, one uploading)."""
    registry = load_registry(registry_path or settings.model_registry)
    batches = [
        spec.max_batch
        for spec in registry.specs.values()
        if settings.worker_gpu in spec.inference_types
    ]
    return 3 * max(batches, default=1)


def worker_main(app: Celery, settings: Settings, concurrency: int | None, loglevel: str) -> None:
    """Run this process as a worker of ``settings.worker_gpu``'s queue (``easel worker``)."""
    gpu = settings.worker_gpu
    nodename = f"{gpu.value}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    app.worker_main(
        [
            "worker",
            "--queues",
            settings.queue_for(gpu),
            "--hostname",
            nodename,
            "--concurrency",
            str(concurrency or job_slots(settings)),
            "--pool",
            "threads",
            "--prefetch-multiplier",
            "1",  # a message per free thread: a worker holds only the jobs it can start
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
        ]
    )
