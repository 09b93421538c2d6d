"""The two pages a browser opens, `/` and `/docs`, run only this server's scripts, cannot be
framed and leak no referrer; `/docs/assets/` serves only the Swagger UI files `/docs` uses."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from flask.testing import FlaskClient

from api import create_app
from api.openapi import DOCS_ASSETS
from shared.settings import Settings
from tests.conftest import settings_from

PAGES = ["/", "/docs"]
ASSET = re.compile(r'(?:src|href)="([^"]+)"')


def policy(header: str) -> dict[str, list[str]]:
    """A Content-Security-Policy as {directive: sources}."""
    directives = [part.split() for part in header.split(";") if part.strip()]
    return {name: sources for name, *sources in directives}


class Inline(HTMLParser):
    """Collects what a policy without 'unsafe-inline' would block: inline scripts, inline
    styles, style attributes and on* handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._tag: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if (tag == "script" and "src" not in names) or tag == "style":
            self._tag = tag
        self.found += [f"{tag} {name}=" for name in names if name == "style" or name[:2] == "on"]

    def handle_data(self, data: str) -> None:
        if self._tag is not None and data.strip():
            self.found.append(f"inline <{self._tag}>")

    def handle_endtag(self, tag: str) -> None:
        self._tag = None


@pytest.mark.parametrize("page", PAGES)
def test_pages_send_a_policy_that_runs_only_this_servers_scripts(
    client: FlaskClient, page: str, settings: Settings
) -> None:
    response = client.get(page)
    assert response.status_code == 200
    csp = policy(response.headers["Content-Security-Policy"])
    assert csp["default-src"] == ["'self'"]
    assert csp["script-src"] == ["'self'"]
    assert csp["style-src"] == ["'self'"]
    assert csp["connect-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["object-src"] == ["'none'"] and csp["base-uri"] == ["'none'"]
    # Output images are presigned S3 URLs; a picked file's preview is a blob: URL.
    assert csp["img-src"] == ["'self'", "data:", "blob:", settings.s3_endpoint_url]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_images_may_come_from_the_public_s3_endpoint_or_from_aws(
    stack_env: dict[str, str],
) -> None:
    public = settings_from(stack_env, s3_public_endpoint_url="https://s3.example.com:9000/x")
    aws = settings_from({k: v for k, v in stack_env.items() if k != "EASEL_S3_ENDPOINT_URL"})
    for settings, origin in ((public, "https://s3.example.com:9000"), (aws, "https:")):
        with create_app(settings).test_client() as browser:
            header = browser.get("/").headers["Content-Security-Policy"]
        assert policy(header)["img-src"][-1] == origin


@pytest.mark.parametrize("page", PAGES)
def test_pages_hold_no_inline_script_or_style(client: FlaskClient, page: str) -> None:
    parser = Inline()
    parser.feed(client.get(page).get_data(as_text=True))
    assert parser.found == []


def test_every_answer_says_nosniff(client: FlaskClient) -> None:
    for path in ("/static/playground.js", "/docs/assets/swagger-ui-bundle.js", "/health"):
        with client.get(path) as response:
            assert response.headers["X-Content-Type-Options"] == "nosniff", path
    assert client.get("/no-such-page").headers["X-Content-Type-Options"] == "nosniff"


def test_docs_assets_serve_exactly_what_the_docs_page_loads(client: FlaskClient) -> None:
    html = client.get("/docs").get_data(as_text=True)
    loaded = {url.removeprefix("/docs/assets/") for url in ASSET.findall(html)}
    assert {url for url in loaded if "/" not in url} == DOCS_ASSETS
    for name in sorted(DOCS_ASSETS):
        with client.get(f"/docs/assets/{name}") as response:
            assert response.status_code == 200, name


@pytest.mark.parametrize(
    "name",
    [
        "index.html",
        "oauth2-redirect.html",
        "oauth2-redirect.js",
        "swagger-initializer.js",
        "swagger-ui-standalone-preset.js",
        "swagger-ui-bundle.js.map",
        "swagger-ui.js",
        "favicon-16x16.png",
        "../__init__.py",
        "%2e%2e/__init__.py",
    ],
)
def test_other_swagger_ui_files_are_404(client: FlaskClient, name: str) -> None:
    response = client.get(f"/docs/assets/{name}")
    assert response.status_code == 404
    assert response.json["status"] == "FAILED"
