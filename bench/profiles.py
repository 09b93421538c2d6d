"""pyinstrument profiles behind the "Why the misses" section of docs/benchmarks.md.

    python -m bench.profiles submit [-n 400]  # POST /getImageToImage via Flask's test client
    python -m bench.profiles upload [-n 20]   # the worker's upload step, one 512x512 image
    python -m bench.profiles ingest [-n 5]    # worker/images.py's prepare_image, 6000x4000 JPEG
    python -m bench.profiles rss [--public-endpoint]  # an API worker's RSS, step by step

``submit``, ``upload`` and ``rss`` start their own Valkey and SeaweedFS on free ports
(``BenchStack``, as ``make bench`` does). ``submit`` runs in one thread with no HTTP server,
the limiter and the in-flight cap on (limits set high, as in section 1) and a fake worker
heartbeat so the API accepts; ``GET /health`` through the same client is the baseline.
``upload`` times the real step (its encodes and PUTs run concurrently), then profiles it
with the thread pool made serial, because pyinstrument samples only the thread that
started it. Each prints the mean per operation, then pyinstrument's text output.

``rss`` is no profile: a fresh ``python -c`` child builds an API worker one step at a time
(imports, ``Settings()``, the Redis client, the Celery producer, ``Storage``, ``create_app``,
then 20 submits and health checks through Flask's test client, then gunicorn and its
config) and reads its VmRSS from /proc/self/status after each; the table gives each step's
delta. ``Storage`` builds one boto3 client, as in section 1, or two (a presigning client
for ``EASEL_S3_PUBLIC_ENDPOINT_URL``, as docker-compose.yml sets it) with
``--public-endpoint``. ``create_app`` builds its own Redis client, producer and Storage:
its delta is what they cost once the first ones are built.

Not ``bench/profile.py``: ``python bench/gpu.py`` puts bench/ first on sys.path, and
torch.compile imports cProfile, which imports the standard library's ``profile``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any
from unittest import mock

from pyinstrument import Profiler

from bench.stack import ROOT, BenchStack, FakeHeartbeat, bench_queues, data_uri, sample_png

DEFAULT_RUNS = {"submit": 400, "upload": 20, "ingest": 5}
RSS_SUBMITS = 20

# Run by ``python -c``: it imports nothing before the first reading, so that one is Python's.
RSS_CHILD = """
import sys

def rss_kb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

names = {}
for label, code in zip(sys.argv[1::2], sys.argv[2::2]):
    exec(code, names)
    print(label, rss_kb(), sep="\\t", flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profiles", description=__doc__)
    parser.add_argument("target", choices=[*DEFAULT_RUNS, "rss"])
    parser.add_argument("-n", type=int, default=None, help="operations profiled")
    parser.add_argument("--all", action="store_true", help="show library frames too")
    two_clients = "rss: set EASEL_S3_PUBLIC_ENDPOINT_URL (two boto3 clients)"
    parser.add_argument("--public-endpoint", action="store_true", help=two_clients)
    args = parser.parse_args()
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, "
          f"{os.cpu_count()} CPUs, load average {load}")  # fmt: skip
    if args.target == "rss":
        print(rss_table(profile_rss(args.public_endpoint)))
        return
    runs = args.n or DEFAULT_RUNS[args.target]
    profile = {"submit": profile_submit, "upload": profile_upload, "ingest": profile_ingest}
    print(profile[args.target](runs).output_text(unicode=False, color=False, show_all=args.all))


def report(label: str, runs: int, profiler: Profiler) -> Profiler:
    """Print the mean wall time per operation of a profiled run; the profiler, for its tree."""
    session = profiler.last_session
    assert session is not None
    print(f"{label}: {session.duration / runs * 1e3:.2f} ms each over {runs} (wall), "
          f"{session.cpu_time / runs * 1e3:.2f} ms CPU")  # fmt: skip
    return profiler


def timed(label: str, runs: int, call: Callable[[], Any]) -> None:
    """Print the mean wall time of ``runs`` calls."""
    started = time.perf_counter()
    for _ in range(runs):
        call()
    print(f"{label}: {(time.perf_counter() - started) / runs * 1e3:.2f} ms each over {runs}")


@contextmanager
def stack() -> Iterator[BenchStack]:
    """A fresh Valkey and SeaweedFS, stopped and removed afterwards."""
    bench_stack = BenchStack()
    try:
        yield bench_stack
    finally:
        bench_stack.close()
        shutil.rmtree(bench_stack.state, ignore_errors=True)


def profile_submit(runs: int) -> Profiler:
    """``celery: true`` tiny-sd submits with a 64x64 data-URI PNG, as section 1 sends them."""
    from api import create_app

    prefix = "easel.bench.profile"
    with stack() as bench_stack:
        settings = bench_stack.settings_with(EASEL_QUEUES=bench_queues(prefix))
        queues = list(settings.queues.values())
        client = create_app(settings).test_client()
        headers = bench_stack.headers
        body = {"app_id": "tiny-sd", "image": data_uri(sample_png(64, 64)), "celery": True}

        def submit() -> None:
            response = client.post("/getImageToImage", json=body, headers=headers)
            assert response.status_code == 200, response.get_data(as_text=True)

        def health() -> None:
            assert client.get("/health").status_code == 200

        with FakeHeartbeat(bench_stack.redis, queues, settings.worker_stale_after_s):
            for _ in range(20):  # imports, connection pools, Celery's producer
                submit()
                health()
            timed("GET /health (baseline, not profiled)", runs, health)
            profiler = Profiler()
            with profiler:
                for _ in range(runs):
                    submit()
        return report("POST /getImageToImage", runs, profiler)


class SerialPool:
    """A ThreadPoolExecutor stand-in that runs each task at once, in the calling thread."""

    def __init__(self, max_workers: int | None = None) -> None:
        del max_workers

    def __enter__(self) -> SerialPool:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def submit(self, task: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(task(*args))
        return future


def profile_upload(runs: int) -> Profiler:
    """``worker.runner.upload`` of one 512x512 noise image as PNG plus its JPEG preview."""
    from PIL import Image

    from shared.models import GenerationParams
    from shared.storage import Storage
    from worker import runner
    from worker.images import encode

    # Uniform noise, as incompressible as the tiny models' random-weight outputs.
    image = Image.frombytes("RGB", (512, 512), os.urandom(512 * 512 * 3))
    params = GenerationParams(app_id="tiny-sd", prompt="p", guidance_scale=7.5, batch=1,
                              strength=0.7, height=512, width=512)  # fmt: skip
    print(f"PNG of the image: {len(encode(image, params.output_format, 90)) / 1e3:.0f} kB "
          f"(raw RGB {512 * 512 * 3 / 1e3:.0f} kB)")  # fmt: skip
    with stack() as bench_stack:
        ctx: Any = mock.Mock(storage=Storage(bench_stack.settings))  # upload() uses .storage

        def upload(index: int) -> None:
            runner.upload(ctx, f"profile-{index}", [image], params)

        for index in range(3):  # boto3's clients, connections, Pillow's encoders
            upload(index)
        count = iter(range(3, 3 + 2 * runs))
        timed("upload step, concurrent as the worker runs it", runs, lambda: upload(next(count)))
        profiler = Profiler()
        with mock.patch.object(runner, "ThreadPoolExecutor", SerialPool), profiler:
            for _ in range(runs):
                upload(next(count))
        return report("upload step, serial (profiled)", runs, profiler)


def profile_ingest(runs: int) -> Profiler:
    """``prepare_image`` (decode with draft(), EXIF, fit to 1536) of section 5's JPEG."""
    from bench.ingest import photo_like_jpeg
    from worker.images import prepare_image

    data = photo_like_jpeg()
    print(f"JPEG: {len(data) / 1e6:.1f} MB")
    fitted = prepare_image(data, "sd", 1024, 1024)  # warm: Pillow's plugins and decoders
    print(f"fitted to {fitted.size[0]}x{fitted.size[1]}")
    profiler = Profiler()
    with profiler:
        for _ in range(runs):
            prepare_image(data, "sd", 1024, 1024)
    return report("prepare_image", runs, profiler)


def rss_steps(
    public_endpoint: bool, body: dict[str, Any], headers: dict[str, str]
) -> list[tuple[str, str]]:
    """What an API worker does, in order: a label and the code run for each step."""
    storage = "two boto3 clients" if public_endpoint else "one boto3 client"
    submits = f"""
client = app.test_client()
for _ in range({RSS_SUBMITS}):
    response = client.post("/getImageToImage", json={body!r}, headers={headers!r})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert client.get("/health").status_code == 200
"""
    return [
        ("Python alone", "pass"),
        ("import flask", "import flask"),
        ("import pydantic, pydantic_settings", "import pydantic, pydantic_settings"),
        ("import redis", "import redis"),
        ("import celery", "import celery"),
        ("import flask_limiter", "import flask_limiter"),
        ("import boto3", "import boto3"),
        ("Settings()", "from shared.settings import Settings\nsettings = Settings()"),
        ("Redis client (connect_redis + PING)",
         "from shared.jobs import connect_redis\nconnect_redis(settings).ping()"),
        ("Celery producer app",
         "from shared.queues import celery_config\n"
         "producer = celery.Celery('easel-api', set_as_current=False)\n"
         "producer.config_from_object(celery_config(settings))"),
        (f"Storage(settings), {storage}",
         "from shared.storage import Storage\nstorage = Storage(settings)"),
        ("api.create_app(settings)", "import api\napp = api.create_app(settings)"),
        (f"{RSS_SUBMITS} submits + GET /health (test client)", submits),
        ("import gunicorn's gevent worker, api.gunicorn_conf",
         "import gunicorn.workers.ggevent\nimport api.gunicorn_conf"),
    ]  # fmt: skip


def measure_rss(steps: list[tuple[str, str]], env: dict[str, str]) -> list[tuple[str, float]]:
    """VmRSS in MB of a fresh Python after each step, run in order in one child process."""
    args = [part for step in steps for part in step]
    done = subprocess.run([sys.executable, "-c", RSS_CHILD, *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"RSS child failed:\n{done.stderr[-2000:]}")
    readings = []
    for line in done.stdout.splitlines():
        label, _, kb = line.rpartition("\t")
        readings.append((label, int(kb) / 1024))
    return readings


def rss_table(readings: list[tuple[str, float]]) -> str:
    """Readings as a Markdown table: step, RSS after it, and what it added."""
    lines = ["| step | RSS | delta |", "|---|---:|---:|"]
    previous = None
    for label, rss in readings:
        delta = "" if previous is None else f"{rss - previous:+.1f} MB"
        lines.append(f"| {label} | {rss:.1f} MB | {delta} |")
        previous = rss
    return "\n".join(lines)


def profile_rss(public_endpoint: bool) -> list[tuple[str, float]]:
    """An API worker built step by step in a child, against a real Valkey and SeaweedFS."""
    prefix = "easel.bench.rss"
    with stack() as bench_stack:
        env = {**os.environ, **bench_stack.env, "EASEL_QUEUES": bench_queues(prefix)}
        if public_endpoint:  # any URL will do: the presigning client only signs
            env["EASEL_S3_PUBLIC_ENDPOINT_URL"] = bench_stack.s3_server.url
        settings = bench_stack.settings_with(EASEL_QUEUES=bench_queues(prefix))
        body = {"app_id": "tiny-sd", "image": data_uri(sample_png(64, 64)), "celery": True}
        steps = rss_steps(public_endpoint, body, bench_stack.headers)
        queues = list(settings.queues.values())
        with FakeHeartbeat(bench_stack.redis, queues, settings.worker_stale_after_s):
            return measure_rss(steps, env)


if __name__ == "__main__":
    main()
