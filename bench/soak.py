"""``make soak``: hold the load. A mixed, multi-tenant workload above the workers' capacity
for a set time, on loopback, then a drain and an audit of every job the API accepted.

1. Stack: a fresh Valkey and SeaweedFS (bench.stack), W ``python -m bench.worker --gpu
   a10g`` processes (``easel worker`` with simulated pipelines, bench/loader.py), one
   ``easel api`` (``EASEL_SYNC_WAIT_S=20``), three API keys (the bootstrap key and two
   from ``easel keys create``), each capped at 8 x W jobs in flight, so the backlog, and
   so the drain, stays bounded while submits past the cap get a 429.
2. Baseline, unloaded: 100 async submits one at a time (each canceled at once).
3. Soak: ``loadtest`` jobs (bench/configs/simulated.toml: 0.5 s each, no batching;
   512x512 inputs) at 1.5 x the workers' capacity, from 64 client threads: async submits
   then long polls (``?wait=20``), sync submits, submits then cancels, idempotent retries
   (one ``Idempotency-Key`` sent 2-3 times, the first two at once), and invalid requests
   that must get a 400 JSON envelope.
4. Drain (at most 120 s): every accepted job must end. Audit, as tests/faults does: a
   job ended once (``done:<id>`` counts one end) with exactly its outputs in S3, or it
   is "duplicated"; ``attempts > 1`` is "re-executed". ``done:<id>`` expires 300 s after
   the job ends, so each job is audited a few seconds after a client saw it end.
5. All along, every 2 s: RSS and open fds of every process, Valkey used_memory and DBSIZE.

Goals: 0 lost, 0 duplicated, 0 5xx (the exit status is 1 if one of these is missed),
submit p99 of every 10 s window within 2 x the unloaded p99, and no process's RSS growing
in the second half (max of the last quarter vs max of the second quarter: more than 5 MB
and 5 %). Those two are measured and reported, as ``make bench`` reports its targets.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import queue
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.procs import children, vm_rss_mb
from bench.report import hardware
from bench.soak_report import CLIENT, log_problems, markdown, summarize
from bench.stack import ROOT, BenchStack, data_uri, sample_png
from easel.dev import stop
from shared.errors import UnknownTask
from shared.jobs import JobStore, key
from shared.storage import Storage

JOB_S = 0.5  # loadtest: t1 of its simulated source
OVERLOAD = 1.5
MIX = {"async": 50, "sync": 15, "cancel": 10, "idempotent": 10, "invalid": 15}
THREADS = 64
WAIT_S = 20  # long polls and sync submits
DRAIN_S = 120.0
SAMPLE_S = 2.0
BASELINE_SUBMITS, WARMUP_SUBMITS = 100, 20
INFLIGHT_PER_WORKER = 8  # per key: 3 keys x 8W jobs is 12 s of work for W workers
KEY_RATE = "1000000/minute"
AUDIT_AFTER_S = 5.0
TIMEOUT_S = 30.0
# Drop idle connections before gunicorn does (its keepalive is 2 s), or a request sent as
# the server closes one reads "connection reset": the client's race, not the server's.
LIMITS = httpx.Limits(keepalive_expiry=1.0)
TERMINAL = {"SUCCESS", "FAILED", "CANCELED"}


class Tally:
    """What the clients saw, shared by every client thread."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.lock = threading.Lock()
        self.http: Counter[tuple[str, int]] = Counter()  # (request kind, status; 0: no answer)
        self.submit_s: list[
            tuple[float, float]
        ] = []  # (when in the soak, seconds) of accepted submits
        self.e2e_s: list[tuple[str, float]] = []  # (op, seconds) submit to success seen
        self.accepted: dict[str, str] = {}  # task id -> op
        self.groups: list[list[str]] = []  # task ids each idempotency key was answered with
        self.invalid: Counter[tuple[str, int, bool]] = Counter()  # (case, status, enveloped)
        self.ops: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()  # 429s by request kind and the error's prefix
        self.errors: list[str] = []

    def add(self, name: str, item: Any) -> None:
        with self.lock:
            getattr(self, name).append(item)


class Workload:
    """The five kinds of client operation, each from submit to a terminal state seen."""

    def __init__(self, url: str, keys: list[str], images: list[str], tally: Tally,
                 audit: Callable[[str], None]) -> None:  # fmt: skip
        self.url, self.keys, self.images, self.tally, self.audit = url, keys, images, tally, audit
        self.invalid = sorted(invalid_bodies(images[0]).items())
        self.poll_until = float("inf")
        self.rng = random.Random(7)

    def body(self, celery: bool) -> dict[str, Any]:
        return {"app_id": "loadtest", "image": self.rng.choice(self.images), "celery": celery,
                "width": 512, "height": 512, "seed": self.rng.randrange(2**32),
                "prompt": f"soak {uuid.uuid4().hex[:8]}"}  # fmt: skip

    def call(self, client: httpx.Client, kind: str, method: str, path: str, **kw: Any
             ) -> httpx.Response | None:  # fmt: skip
        """One request, its status counted under ``kind``; None when no answer came."""
        try:
            response = client.request(method, path, **kw)
        except httpx.TransportError as exc:
            with self.tally.lock:
                self.tally.http[(kind, 0)] += 1
                self.tally.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
            return None
        with self.tally.lock:
            self.tally.http[(kind, response.status_code)] += 1
            if response.status_code == 429:  # which cap: "max_inflight:", "rate limit:", ...
                self.tally.refused[f"{kind} {error_of(response).partition(':')[0]}"] += 1
        return response

    def submit(self, client: httpx.Client, auth: dict[str, str], body: dict[str, Any],
               kind: str = "submit") -> tuple[httpx.Response | None, float]:  # fmt: skip
        begun = time.monotonic()
        timeout = WAIT_S + 15 if not body["celery"] else TIMEOUT_S
        answer = self.call(client, kind, "POST", "/getImageToImage", json=body, headers=auth,
                           timeout=timeout)  # fmt: skip
        return answer, begun

    def accepted(self, answer: httpx.Response | None, op: str) -> str | None:
        if answer is None or answer.status_code != 200:
            return None
        task_id: str = answer.json()["task_id"]
        with self.tally.lock:
            self.tally.accepted[task_id] = op
        return task_id

    def follow(self, client: httpx.Client, auth: dict[str, str], task_id: str, begun: float,
               op: str) -> None:  # fmt: skip
        """Long-poll until the job ends (a 429 waits its Retry-After, at most 2 s)."""
        while time.monotonic() < self.poll_until:
            answer = self.call(client, "poll", "GET", f"/tasks/{task_id}", headers=auth,
                               params={"wait": WAIT_S}, timeout=WAIT_S + 15)  # fmt: skip
            if answer is None:
                time.sleep(0.5)
            elif answer.status_code == 429:
                time.sleep(min(2.0, float(answer.headers.get("Retry-After", 1))))
            elif answer.status_code != 200:
                self.tally.add("errors", f"poll {answer.status_code}: {answer.text[:200]}")
                return
            elif answer.json()["status"] in TERMINAL:
                self.ended(task_id, answer.json()["status"], begun, op)
                return

    def ended(self, task_id: str, status: str, begun: float, op: str) -> None:
        if status == "SUCCESS":
            self.tally.add("e2e_s", (op, time.monotonic() - begun))
        self.audit(task_id)

    def run_async(self, client: httpx.Client, auth: dict[str, str]) -> None:
        answer, begun = self.submit(client, auth, self.body(True))
        task_id = self.accepted(answer, "async")
        if task_id is not None:
            self.tally.add("submit_s", (begun - self.tally.started, time.monotonic() - begun))
            self.follow(client, auth, task_id, begun, "async")

    def run_sync(self, client: httpx.Client, auth: dict[str, str]) -> None:
        answer, begun = self.submit(client, auth, self.body(False), "sync")
        task_id = self.accepted(answer, "sync")
        if task_id is None or answer is None:
            return
        status = answer.json()["status"]
        if status != "PENDING":
            self.ended(task_id, status, begun, "sync")
        else:  # the sync wait ran out first
            self.follow(client, auth, task_id, begun, "sync")

    def run_cancel(self, client: httpx.Client, auth: dict[str, str]) -> None:
        answer, begun = self.submit(client, auth, self.body(True))
        task_id = self.accepted(answer, "cancel")
        if task_id is not None:
            time.sleep(self.rng.uniform(0, 1.0))
            self.call(client, "cancel", "POST", f"/tasks/{task_id}/cancel", headers=auth)
            self.follow(client, auth, task_id, begun, "cancel")

    def run_idempotent(self, client: httpx.Client, auth: dict[str, str]) -> None:
        """Send one body under one Idempotency-Key 2 or 3 times, the first two at once."""
        body, sends, begun = self.body(True), self.rng.choice((2, 3)), time.monotonic()
        headers = {**auth, "Idempotency-Key": uuid.uuid4().hex}
        answers: list[httpx.Response | None] = []

        def send_alone() -> None:
            with httpx.Client(base_url=self.url, timeout=TIMEOUT_S, limits=LIMITS) as other:
                answers.append(self.submit(other, headers, body, "idempotent")[0])

        twin = threading.Thread(target=send_alone, daemon=True)
        twin.start()
        answers.append(self.submit(client, headers, body, "idempotent")[0])
        twin.join(TIMEOUT_S + 5)
        for _ in range(sends - 2):
            time.sleep(self.rng.uniform(0, 0.3))
            answers.append(self.submit(client, headers, body, "idempotent")[0])
        ids = [task_id for a in answers if (task_id := self.accepted(a, "idempotent"))]
        if ids:
            self.tally.add("groups", ids)
            self.follow(client, auth, ids[0], begun, "idempotent")

    def run_invalid(self, client: httpx.Client, auth: dict[str, str]) -> None:
        case, content = self.rng.choice(self.invalid)
        answer = self.call(client, "invalid", "POST", "/getImageToImage", content=content,
                           headers={**auth, "Content-Type": "application/json"})  # fmt: skip
        if answer is not None:
            with self.tally.lock:
                self.tally.invalid[(case, answer.status_code, bool(error_of(answer)))] += 1

    def client_loop(self, ops: queue.Queue[str], stop_event: threading.Event) -> None:
        """Take operations until the soak stops; finish the one in hand."""
        runs = {"async": self.run_async, "sync": self.run_sync, "cancel": self.run_cancel,
                "idempotent": self.run_idempotent, "invalid": self.run_invalid}  # fmt: skip
        with httpx.Client(base_url=self.url, timeout=TIMEOUT_S, limits=LIMITS) as client:
            while not stop_event.is_set():
                try:
                    op = ops.get(timeout=0.2)
                except queue.Empty:
                    continue
                auth = {"Authorization": f"Bearer {self.rng.choice(self.keys)}"}
                with self.tally.lock:
                    self.tally.ops[op] += 1
                try:
                    runs[op](client, auth)
                except Exception as exc:  # noqa: BLE001 - one broken op must not end the soak
                    self.tally.add("errors", f"{op}: {type(exc).__name__}: {exc}")


def error_of(response: httpx.Response) -> str:
    """The envelope's ``error``; empty when the answer is not the JSON envelope."""
    try:
        return str(response.json().get("error") or "")
    except (ValueError, AttributeError):
        return ""


def invalid_bodies(image: str) -> dict[str, bytes]:
    """Requests the API must refuse with a 400, by what is wrong with them."""
    good = {"app_id": "loadtest", "image": image, "celery": True, "width": 512, "height": 512}
    not_image = "data:image/png;base64," + base64.b64encode(b"not an image at all").decode()
    cases: dict[str, Any] = {"strength 0": {**good, "strength": 0},
                             "unknown field": {**good, "colour": "red"},
                             "not an image": {**good, "image": not_image},
                             "width 500": {**good, "width": 500}}  # fmt: skip
    bodies = {case: json.dumps(body).encode() for case, body in cases.items()}
    return {**bodies, "malformed JSON": b'{"app_id": "loadtest", '}


def dispatch(ops: queue.Queue[str], rate: float, seconds: float, dropped: list[int]) -> None:
    """Hand out operations at ``rate`` per second; when every thread is busy, drop them."""
    rng = random.Random(11)
    kinds, weights = list(MIX), list(MIX.values())
    begun = time.monotonic()
    for n in range(int(rate * seconds)):
        time.sleep(max(0.0, begun + n / rate - time.monotonic()))
        if ops.qsize() >= THREADS:
            dropped[0] += 1
        else:
            ops.put(rng.choices(kinds, weights)[0])


class Auditor:
    """Each ended job's completion signals and S3 outputs, counted as tests/faults counts."""

    def __init__(self, stack: BenchStack) -> None:
        self.jobs = JobStore(stack.redis, stack.settings.job_ttl_s, stack.settings.fair_share)
        self.storage = Storage(stack.settings)
        self.due: deque[tuple[float, str]] = deque()
        self.found: dict[str, dict[str, Any]] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def later(self, task_id: str) -> None:
        self.due.append((time.monotonic() + AUDIT_AFTER_S, task_id))

    def _loop(self) -> None:
        while not self.stopping.is_set():
            if self.due and self.due[0][0] <= time.monotonic():
                self.check(self.due.popleft()[1])
            else:
                time.sleep(0.2)

    def check(self, task_id: str) -> dict[str, Any]:
        """One job's audit; a job that has not ended is not recorded (the drain retries)."""
        try:
            record = self.jobs.get(task_id)
        except UnknownTask:
            return self.found.setdefault(task_id, {"status": "GONE"})
        if not record.status.is_terminal:
            return {"status": "PENDING"}
        ends = completions(self.jobs.redis, task_id)
        listing = self.storage.client.list_objects_v2(
            Bucket=self.storage.bucket, Prefix=self.storage.output_key(task_id, "")
        )
        stored = sorted(item["Key"] for item in listing.get("Contents", []))
        duplicated = ends != 1 or stored != sorted(record.image_keys + record.preview_keys)
        found = {"status": record.status.value, "attempts": record.attempts,
                 "duplicated": duplicated, "ends": ends, "error": record.error}  # fmt: skip
        self.found[task_id] = found
        return found

    def settle(self, task_ids: list[str], deadline: float) -> dict[str, dict[str, Any]]:
        """Audit every job not audited yet, waiting for the unfinished up to ``deadline``."""
        self.stopping.set()
        self.thread.join(10)
        pending = [t for t in task_ids if t not in self.found]
        while pending:
            pending = [t for t in pending if self.check(t)["status"] == "PENDING"]
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        return {t: self.found.get(t, {"status": "PENDING"}) for t in task_ids}


def completions(client: redis.Redis, task_id: str) -> int:
    """How many times a job ended: ``done:<id>`` is a counter (a list of signals before)."""
    done = key("done", task_id)
    kind = client.type(done)
    if kind in (b"list", "list"):
        return int(client.llen(done))
    return int(client.get(done) or 0)


class Sampler:
    """RSS and fds of every process of the stack, and Valkey's memory, every SAMPLE_S."""

    def __init__(self, stack: BenchStack, roots: Callable[[], dict[str, int]]) -> None:
        self.stack, self.roots = stack, roots
        self.samples: list[dict[str, Any]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stopping.wait(SAMPLE_S):
            self.sample()

    def sample(self) -> None:
        procs = {}
        for label, pid in self.roots().items():
            with suppress(OSError, RuntimeError):  # it exited meanwhile
                procs[label] = {"rss_mb": round(vm_rss_mb(pid), 1),
                                "fds": len(os.listdir(f"/proc/{pid}/fd"))}  # fmt: skip
        store: dict[str, Any] = {}
        with suppress(redis.RedisError):
            info = self.stack.redis.info("memory")
            store = {"used_memory": info["used_memory"], "dbsize": self.stack.redis.dbsize()}
        self.samples.append({"at": time.monotonic(), "procs": procs, **store})


def stack_roots(stack: BenchStack, api_pid: int, workers: list[subprocess.Popen[bytes]]
                ) -> dict[str, int]:  # fmt: skip
    """Every process of the stack, by a label that says what it is."""
    roots = {"api gunicorn master": api_pid}
    roots |= {f"api worker {pid}": pid for pid in sorted(children(api_pid))}
    for index, worker in enumerate(workers):
        roots[f"worker-{index} celery main"] = worker.pid
        roots |= {f"worker-{index} pool {pid}": pid for pid in sorted(children(worker.pid, True))}
    roots["valkey"] = stack.redis_server.process.pid
    roots["seaweedfs"] = stack.s3_server.process.pid
    roots[CLIENT] = os.getpid()
    return roots


@contextmanager
def image_server(png: bytes) -> Iterator[str]:
    """The input image over HTTP on loopback; yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/input.png"
    finally:
        server.shutdown()
        server.server_close()


def create_key(stack: BenchStack, name: str, inflight: int) -> str:
    """A key made as an operator makes one, with ``easel keys create``."""
    made = subprocess.run(
        [sys.executable, "-m", "easel", "keys", "create", "--name", name, "--rate", KEY_RATE,
         "--max-inflight", str(inflight)],
        env={**os.environ, **stack.env}, cwd=ROOT, capture_output=True, text=True, timeout=60,
        check=True,
    )  # fmt: skip
    return made.stdout.strip()


def measure_baseline(url: str, auth: dict[str, str], image: str) -> list[float]:
    """Seconds per async submit, one at a time, each job canceled at once (idle workers)."""
    body = {"app_id": "loadtest", "image": image, "celery": True, "width": 512, "height": 512}
    took = []
    with httpx.Client(base_url=url, headers=auth, timeout=TIMEOUT_S) as client:
        for n in range(WARMUP_SUBMITS + BASELINE_SUBMITS):
            # The warm-up opens a connection per submit, to reach (and warm) every API worker.
            headers = {"Connection": "close"} if n < WARMUP_SUBMITS else {}
            begun = time.monotonic()
            answer = client.post("/getImageToImage", json=body, headers=headers)
            if answer.status_code != 200:
                raise RuntimeError(f"baseline submit: {answer.status_code} {answer.text[:200]}")
            if n >= WARMUP_SUBMITS:
                took.append(time.monotonic() - begun)
            client.post(f"/tasks/{answer.json()['task_id']}/cancel").raise_for_status()
    return took


def run_soak(seconds: float, workers: int = 2, out: Path | None = None) -> dict[str, Any]:
    """Start a stack, soak it for ``seconds``, drain and audit; the result (``table``)."""
    load_start, inflight = os.getloadavg(), INFLIGHT_PER_WORKER * workers
    started_at = time.time()
    stack = BenchStack()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with image_server(sample_png(512, 512)) as image_url:
            stack.env |= {
                "EASEL_KEY_HASH_SECRET": "soak-" + uuid.uuid4().hex,
                "EASEL_IMAGE_URL_ALLOWLIST": "127.0.0.1",
                "EASEL_URL_ALLOWED_PORTS": image_url.split(":")[2].split("/")[0],
                "EASEL_DEFAULT_MAX_INFLIGHT": str(inflight),  # the bootstrap key's cap
                "EASEL_SYNC_WAIT_S": str(WAIT_S),
                **stack.loadtest_env(),  # for the API and the workers alike
            }
            processes += [stack.sim_worker(f"soak-{n}") for n in range(workers)]
            keys = [stack.key] + [create_key(stack, f"soak-{n}", inflight) for n in (1, 2)]
            with stack.api() as (url, api):
                stack.wait_live(stack.settings.queue_for(stack.settings.worker_gpu), workers)
                result = soak(stack, url, api.pid, processes, keys, image_url, seconds)
    finally:
        stop_workers(processes)
        stack.close()
    result |= {"date": time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(started_at)),
               "command": f"python -m bench.soak --seconds {seconds:g} --workers {workers}",
               "machine": hardware(), "load_average": {"start": load_start, "end": os.getloadavg()},
               "logs": str(stack.logs), "log_problems": log_problems(stack.logs)}  # fmt: skip
    result["config"] |= {"workers": workers, "inflight_per_key": inflight}
    result["table"] = markdown(result, OVERLOAD)
    if out is not None:
        out.write_text(json.dumps(result, indent=2, default=str))
    return result


def soak(stack: BenchStack, url: str, api_pid: int, workers: list[subprocess.Popen[bytes]],
         keys: list[str], image_url: str, seconds: float) -> dict[str, Any]:  # fmt: skip
    """The baseline, then the timed mix, the drain and the audit, sampling all along."""
    sampler = Sampler(stack, lambda: stack_roots(stack, api_pid, workers))
    sampler.thread.start()
    try:
        inline = data_uri(sample_png(512, 512))
        baseline = measure_baseline(url, {"Authorization": f"Bearer {keys[0]}"}, inline)
        rate = OVERLOAD * len(workers) / JOB_S * 100 / (100 - MIX["invalid"])
        tally, auditor = Tally(time.monotonic()), Auditor(stack)
        # A third of the jobs name their image by URL: the worker fetches it.
        workload = Workload(url, keys, [inline, inline, image_url], tally, auditor.later)
        dropped = drive(workload, auditor, rate, seconds)
        audits = auditor.settle(list(tally.accepted), workload.poll_until)
        drained_s = time.monotonic() - tally.started - seconds
        sampler.sample()
    finally:
        sampler.stopping.set()
        sampler.thread.join(10)
    config = {"seconds": seconds, "threads": THREADS, "target_ops_per_s": round(rate, 2),
              "mix_pct": MIX, "keys": len(keys), "wait_s": WAIT_S, "job_s": JOB_S}  # fmt: skip
    return summarize(config, baseline, tally, audits, sampler.samples, dropped, drained_s)


def drive(workload: Workload, auditor: Auditor, rate: float, seconds: float) -> int:
    """THREADS clients run operations handed out at ``rate`` for ``seconds``, then finish the
    ones in hand, polling until the drain's deadline at most; how many were dropped."""
    ops: queue.Queue[str] = queue.Queue()
    stop_event, dropped = threading.Event(), [0]
    clients = [threading.Thread(target=workload.client_loop, args=(ops, stop_event),
                                daemon=True) for _ in range(THREADS)]  # fmt: skip
    auditor.thread.start()
    for client in clients:
        client.start()
    try:
        dispatch(ops, rate, seconds, dropped)
    except BaseException:
        workload.poll_until = 0.0  # interrupted: no drain, every client stops now
        raise
    finally:
        stop_event.set()
    workload.poll_until = time.monotonic() + DRAIN_S
    for client in clients:
        client.join(max(0.0, workload.poll_until + WAIT_S + 20 - time.monotonic()))
    return dropped[0]


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    """Stop the Celery workers, then any pool child that outlived its parent."""
    pool = {pid: cmdline(pid) for w in workers if w.poll() is None for pid in children(w.pid, True)}
    stop(*workers, grace_s=60)
    for pid, command in pool.items():
        if command and cmdline(pid) == command:
            with suppress(ProcessLookupError):
                os.kill(pid, 9)


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.soak``: run it, print the tables, write the JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=600, help="how long to offer load")
    parser.add_argument("--workers", type=int, default=2, help="bench.worker processes")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("soak.json"))
    args = parser.parse_args(argv)  # fmt: skip
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"soak: {args.seconds:g} s, {args.workers} workers, load {os.getloadavg()}", flush=True)
    result = run_soak(args.seconds, args.workers, args.out)
    print(result["table"])
    print(f"load average: {result['load_average']}; logs: {result['logs']}; wrote {args.out}")
    for name, problems in result["log_problems"].items():
        print(f"{name}: {problems['count']} error lines, first: {problems['first'][0]}")
    correct = result["goals"][:3]  # lost, duplicated, 5xx; timings and RSS are reported
    sys.exit(0 if all(goal["met"] for goal in correct) else 1)


if __name__ == "__main__":
    main()
