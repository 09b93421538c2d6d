"""``GET /``: a page to try the API from a browser; plain HTML and JavaScript, no build step."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template

from shared.models import ImageToImageRequest

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
def playground() -> str:
    """The playground page; its inputs take their limits and choices from the request model."""
    return render_template("playground.html", fields=field_rules())


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
