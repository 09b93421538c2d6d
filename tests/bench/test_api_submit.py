"""Section 1's RSS baseline runs what ``easel api`` runs, with a bare Flask app in its place."""

from __future__ import annotations

from unittest import mock

from bench.api_submit import BARE_APP, gunicorn_argv
from bench.bare_app import create_app
from easel.cli import main


def easel_api_argv(bind: str) -> list[str]:
    """The command ``easel api --bind <bind>`` would replace itself with."""
    with mock.patch("os.execv") as execv, mock.patch("shared.metrics.use_multiprocess_dir"):
        main(["api", "--bind", bind])
    argv: list[str] = execv.call_args.args[1]
    return argv


def test_the_bare_baseline_runs_gunicorn_as_easel_api_does_but_serves_the_bare_app() -> None:
    easel = easel_api_argv("127.0.0.1:9")
    bare = gunicorn_argv("127.0.0.1:9", BARE_APP)
    assert easel[-1] == "api:create_app()"
    assert bare == [*easel[:-1], BARE_APP]


def test_without_config_only_the_config_option_goes() -> None:
    easel = easel_api_argv("127.0.0.1:9")
    bare = gunicorn_argv("127.0.0.1:9", BARE_APP, config=False)
    config_at = easel.index("--config")
    assert bare == easel[:config_at] + easel[config_at + 2 : -1] + [BARE_APP]


def test_the_bare_app_answers_its_one_route() -> None:
    response = create_app().test_client().get("/")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
