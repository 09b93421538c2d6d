"""``GET /``: a page to try the API from a browser; plain HTML and JavaScript, no build step.

Both pages a browser opens, this one and ``/docs``, go out through ``browser_page``: a
Content-Security-Policy that runs only this server's scripts and styles (no inline code, so
an injected ``<script>`` or ``onerror=`` does nothing), lets images come only from here,
``data:``/``blob:`` (a picked file's preview) and S3 (the presigned outputs), and lets no
other site frame the page (the key field is worth clickjacking); no referrer leaves it.
Every answer of the app says ``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, render_template

from api.services import get_services
from shared.models import ImageToImageRequest
from shared.settings import Settings

bp = Blueprint("playground", __name__, template_folder="templates")

# The attributes of an <input> that a field's JSON schema rules become.
RULES = {
    "minimum": "min",
    "exclusiveMinimum": "min",
    "maximum": "max",
    "multipleOf": "step",
    "maxLength": "maxlength",
}


@bp.get("/")
def playground() -> Response:
    """The playground page; its inputs take their limits and choices from the request model."""
    return browser_page(render_template("playground.html", fields=field_rules()))


def browser_page(html: str) -> Response:
    """An HTML page with the headers of every page a browser opens here."""
    response = Response(html, mimetype="text/html")
    response.headers.update(
        {
            "Content-Security-Policy": content_security_policy(get_services().settings),
            "X-Frame-Options": "DENY",  # frame-ancestors, for browsers that predate it
            "Referrer-Policy": "no-referrer",
        }
    )
    return response


def content_security_policy(settings: Settings) -> str:
    """The pages' policy: everything from this origin, and images from S3 too."""
    endpoint = settings.s3_public_endpoint_url or settings.s3_endpoint_url
    if endpoint:
        parts = urlsplit(endpoint)
        s3 = f"{parts.scheme}://{parts.netloc}"
    else:
        s3 = "https:"  # AWS itself: the presigned host depends on the region
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src 'self' data: blob: {s3}",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


@bp.after_app_request
def _no_sniffing(response: Response) -> Response:
    """A browser takes every answer for the type it says it is (scripts and styles above all)."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def field_rules() -> dict[str, dict[str, Any]]:
    """Per request field: its input attributes (min, max, step, ...) and its choices."""
    schema = ImageToImageRequest.model_json_schema()
    defs = schema.get("$defs", {})
    fields: dict[str, dict[str, Any]] = {}
    for name, field in schema["properties"].items():
        options = [field, *field.get("anyOf", [])]
        options = [defs[o["$ref"].rsplit("/", 1)[1]] if "$ref" in o else o for o in options]
        attrs: dict[str, Any] = {}
        for option in options:
            attrs.update({RULES[k]: v for k, v in option.items() if k in RULES})
        if field.get("default") is not None:
            attrs["value"] = field["default"]
        choices: list[Any] = next((o["enum"] for o in options if "enum" in o), [])
        fields[name] = {"attrs": attrs, "choices": choices}
    return fields
