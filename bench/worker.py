"""``python -m bench.worker --gpu a10g``: ``easel worker`` with simulated pipelines.

The production worker, built with ``load=load_simulated`` (bench/loader.py), so every
model it serves is a pipe that sleeps by a batch cost model. Point EASEL_MODEL_REGISTRY
at a registry of ``sim:`` sources (bench/configs/simulated.toml) for it and for the API.
"""

from __future__ import annotations

import argparse

from bench.loader import load_simulated
from shared.models import InferenceType
from shared.settings import Settings
from worker.celery_app import create_celery, worker_main


def main(argv: list[str] | None = None) -> None:
    """Parse ``easel worker``'s options and run the worker with the simulated loader."""
    parser = argparse.ArgumentParser(prog="python -m bench.worker", description=__doc__)
    parser.add_argument("--gpu", required=True, choices=[t.value for t in InferenceType])
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--loglevel", default="info")
    args = parser.parse_args(argv)
    settings = Settings(worker_gpu=InferenceType(args.gpu))
    app = create_celery(settings, load=load_simulated)
    worker_main(app, settings, args.concurrency, args.loglevel)


if __name__ == "__main__":
    main()
