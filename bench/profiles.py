"""pyinstrument profiles behind the "Why the misses" section of docs/benchmarks.md.

    python -m bench.profiles submit [-n 400]  # POST /getImageToImage via Flask's test client
    python -m bench.profiles upload [-n 20]   # the worker's upload step, one 512x512 image
    python -m bench.profiles ingest [-n 5]    # worker/images.py's prepare_image, 6000x4000 JPEG

``submit`` and ``upload`` start their own Valkey and SeaweedFS on free ports (``BenchStack``,
as ``make bench`` does). ``submit`` runs in one thread with no HTTP server, the limiter and
the in-flight cap on (limits set high, as in section 1) and a fake worker heartbeat so the
API accepts; ``GET /health`` through the same client is the baseline. ``upload`` times the
real step (its encodes and PUTs run concurrently), then profiles it with the thread pool
made serial, because pyinstrument samples only the thread that started it. Each prints
the mean per operation, then pyinstrument's text output.

Not ``bench/profile.py``: ``python bench/gpu.py`` puts bench/ first on sys.path, and
torch.compile imports cProfile, which imports the standard library's ``profile``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any
from unittest import mock

from pyinstrument import Profiler

from bench.stack import BenchStack, FakeHeartbeat, bench_queues, data_uri, sample_png

DEFAULT_RUNS = {"submit": 400, "upload": 20, "ingest": 5}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profiles", description=__doc__)
    parser.add_argument("target", choices=list(DEFAULT_RUNS))
    parser.add_argument("-n", type=int, default=None, help="operations profiled")
    parser.add_argument("--all", action="store_true", help="show library frames too")
    args = parser.parse_args()
    runs = args.n or DEFAULT_RUNS[args.target]
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, "
          f"{os.cpu_count()} CPUs, load average {load}")  # fmt: skip
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
            assert response.status_code == 202, response.get_data(as_text=True)

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


if __name__ == "__main__":
    main()
