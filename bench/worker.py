"""``python -m bench.worker --gpu a10g``: ``easel worker`` with simulated pipelines.

The production worker, built with ``load=load_simulated`` (bench/loader.py), so every
model it serves is a pipe that sleeps by a batch cost model. Point EASEL_MODEL_REGISTRY
at a registry of ``sim:`` sources (bench/configs/simulated.toml) for it and for the API.
"""

from __future__ import annotations

from bench.loader import load_simulated
from worker.main import main as worker_process


def main(argv: list[str] | None = None) -> None:
    """``easel worker``'s options, and the worker with the simulated loader."""
    worker_process(argv, load=load_simulated, prog="python -m bench.worker")


if __name__ == "__main__":
    main()
