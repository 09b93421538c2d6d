"""``easel submit``, ``easel status``, ``easel cancel``: the Python SDK at the command line.

stdout carries what a script reads (a task id, image URLs, an envelope as JSON); the
progress bar and notes go to stderr. The exit status is 0 only when the job succeeded
(``submit --wait``), was accepted (``submit``), was found (``status``) or was canceled or
told to stop (``cancel``). The SDK (``easel_client``, its own distribution in client/) is
imported only when one of these runs, so ``easel api`` and the workers never need it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from easel_client import Client, Task

JOB_COMMANDS = ("submit", "status", "cancel")


def add_job_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``submit``, ``status`` and ``cancel`` to the ``easel`` parser."""
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--base-url", help="default: $EASEL_API_URL or 127.0.0.1:8000")
    connection.add_argument("--api-key", help="default: $EASEL_API_KEY")

    submit = commands.add_parser(
        "submit", parents=[connection], help="submit an image-to-image job"
    )
    submit.add_argument("image", help="an http(s) or data: URL, or a local image file")
    submit.add_argument("--prompt")
    submit.add_argument("--negative-prompt")
    submit.add_argument("--app-id", default="tiny-sd")
    submit.add_argument("--inference-type", default="a10g")
    submit.add_argument("--batch", type=int, default=1)
    submit.add_argument("--strength", type=float)
    submit.add_argument("--guidance", type=float)
    submit.add_argument("--width", type=int)
    submit.add_argument("--height", type=int)
    submit.add_argument("--seed", type=int)
    submit.add_argument("--output-format", choices=["png", "jpeg", "webp"])
    submit.add_argument(
        "--wait", action="store_true", help="show a progress bar, then print the image URLs"
    )
    submit.add_argument("--out", help="save the images into this folder (implies --wait)")

    status = commands.add_parser("status", parents=[connection], help="print a task's envelope")
    status.add_argument("task_id")
    cancel = commands.add_parser("cancel", parents=[connection], help="cancel a task")
    cancel.add_argument("task_id")


def run_job_command(args: argparse.Namespace) -> int:
    """Run one of ``JOB_COMMANDS``; answers the exit status."""
    try:
        from easel_client import APIError, Client, EaselError
    except ModuleNotFoundError as exc:
        if exc.name != "easel_client":
            raise
        print("error: this command needs the SDK: pip install ./client", file=sys.stderr)
        return 1

    commands = {"submit": run_submit, "status": run_status, "cancel": run_cancel}
    try:
        with Client(args.base_url, args.api_key) as easel:
            return commands[args.command](easel, args)
    except APIError as exc:
        print(json.dumps(exc.body, indent=2) if isinstance(exc.body, dict) else exc.body)
        print(f"error: {exc}", file=sys.stderr)
    except EaselError as exc:
        print(f"error: {exc}", file=sys.stderr)
    return 1


def run_submit(easel: Client, args: argparse.Namespace) -> int:
    """Submit; with ``--wait`` or ``--out``, follow the job and print or save its images."""
    task = easel.image_to_image(
        args.image,
        args.prompt,
        app_id=args.app_id,
        inference_type=args.inference_type,
        strength=args.strength,
        guidance=args.guidance,
        batch=args.batch,
        width=args.width,
        height=args.height,
        seed=args.seed,
        negative_prompt=args.negative_prompt,
        output_format=args.output_format,
    )
    if not (args.wait or args.out):
        print(task.id)
        return 0
    print(f"task {task.id}", file=sys.stderr)
    try:
        task.wait(progress=sys.stderr, raise_on_error=False)
    except KeyboardInterrupt:
        print(f"\nstopped waiting; the job goes on: easel cancel {task.id}", file=sys.stderr)
        return 130
    if task.status != "SUCCESS":
        return ended_badly(task)
    for url in task.urls:
        print(url)
    if args.out:
        for path in task.images(args.out):
            print(f"saved {path}", file=sys.stderr)
    return 0


def run_status(easel: Client, args: argparse.Namespace) -> int:
    """Print the task's envelope as JSON."""
    print_envelope(easel.get(args.task_id).envelope)
    return 0


def run_cancel(easel: Client, args: argparse.Namespace) -> int:
    """Cancel the task and print its envelope; a job that already ended keeps its state."""
    task = easel.get(args.task_id).cancel()
    print_envelope(task.envelope)
    if task.status == "PENDING":
        print(f"task {task.id} is {task.state}; it stops at its next step", file=sys.stderr)
    elif task.status != "CANCELED":
        print(f"task {task.id} had already ended {task.status}", file=sys.stderr)
        return 1
    return 0


def ended_badly(task: Task) -> int:
    """Report a job that ended FAILED or CANCELED."""
    print_envelope(task.envelope)
    print(f"task {task.id} ended {task.status}: {task.error}", file=sys.stderr)
    return 1


def print_envelope(envelope: dict[str, Any]) -> None:
    """An envelope on stdout, indented."""
    print(json.dumps(envelope, indent=2))
