"""``python -m worker.main --gpu T``: one Celery worker process, which ``easel worker`` runs
and restarts (easel/cli.py)."""

from __future__ import annotations

import argparse

from shared.models import InferenceType
from shared.settings import Settings
from worker.celery_app import create_celery, worker_main
from worker.pipelines import Loader


def main(argv: list[str] | None = None, load: Loader | None = None, prog: str = "") -> None:
    """Run one worker for one GPU class's queue (``load``: how its pipelines load)."""
    parser = argparse.ArgumentParser(prog=prog or "python -m worker.main", description=__doc__)
    parser.add_argument("--gpu", required=True, choices=[t.value for t in InferenceType])
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--loglevel", default="info")
    args = parser.parse_args(argv)
    settings = Settings(worker_gpu=InferenceType(args.gpu))
    worker_main(create_celery(settings, load=load), settings, args.concurrency, args.loglevel)


if __name__ == "__main__":
    main()
