"""Tenants on the real stack: keys made with `easel keys create` see only their own tasks,
and `easel keys revoke` locks a key out of every gunicorn worker on its next request."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from tests.conftest import ROOT, data_uri, png_bytes

pytestmark = pytest.mark.integration


def easel_keys(stack_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m easel keys ARGS`` as an operator would, against the stack's Redis."""
    return subprocess.run(
        [sys.executable, "-m", "easel", "keys", *args],
        env={**os.environ, **stack_env}, cwd=ROOT, capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip


def test_keys_create_without_a_secret_refuses_and_says_which(stack_env: dict[str, str]) -> None:
    env = {k: v for k, v in {**os.environ, **stack_env}.items() if k != "EASEL_KEY_HASH_SECRET"}
    refused = subprocess.run(
        [sys.executable, "-m", "easel", "keys", "create", "--name", "nope"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2 and refused.stdout == ""
    assert "EASEL_KEY_HASH_SECRET is unset" in refused.stderr


def new_key(stack_env: dict[str, str], name: str) -> tuple[str, str]:
    """A fresh key and its id."""
    created = easel_keys(stack_env, "create", "--name", name)
    return created.stdout.strip(), created.stderr.split()[2]


def test_keys_see_only_their_own_tasks_and_revoke_locks_one_out(
    api_url: str, stack_env: dict[str, str]
) -> None:
    (alice_key, alice_id), (bob_key, _) = new_key(stack_env, "alice"), new_key(stack_env, "bob")
    alice = httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {alice_key}"})
    bob = httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {bob_key}"})
    with alice, bob:
        body = {"app_id": "tiny-sd", "image": data_uri(png_bytes(64, 64)), "celery": True}
        task_id = alice.post("/getImageToImage", json=body, timeout=30).json()["task_id"]
        for response in (
            bob.get(f"/tasks/{task_id}"),
            bob.post("/tasks", json={"task_id": task_id}),
            bob.post(f"/tasks/{task_id}/cancel"),
        ):
            assert response.status_code == 404, response.text
        assert bob.get("/tasks").json()["tasks"] == []
        done = alice.get(f"/tasks/{task_id}", params={"wait": 60}, timeout=90).json()
        assert done["status"] == "SUCCESS", done
        assert [t["task_id"] for t in alice.get("/tasks").json()["tasks"]] == [task_id]

        listed = easel_keys(stack_env, "list").stdout
        assert alice_id in listed and alice_key not in listed and bob_key not in listed
        easel_keys(stack_env, "revoke", alice_id)
        for _ in range(6):  # enough to meet both gunicorn workers
            response = alice.get(f"/tasks/{task_id}")
            assert response.status_code == 401
            assert response.json()["error"] == "Authorization: this API key was revoked"
        assert bob.get("/tasks").status_code == 200
