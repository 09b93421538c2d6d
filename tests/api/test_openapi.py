"""`/openapi.json` is valid OpenAPI 3.1 built from the models; `/docs` and `/` work offline."""

from __future__ import annotations

import copy
import re
from html.parser import HTMLParser
from typing import Any

import jsonschema
import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from schemathesis.specs.openapi.definitions import OPENAPI_31

from api.openapi import Health
from shared.models import AppsEnvelope, ImageToImageRequest

IGNORED_METHODS = {"HEAD", "OPTIONS"}  # Flask answers these itself on every route


class Assets(HTMLParser):
    """Collects every ``src`` and ``href`` of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in {"src", "href"} and value]


def page_assets(html: str) -> list[str]:
    parser = Assets()
    parser.feed(html)
    return parser.urls


@pytest.fixture
def spec(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json
    return copy.deepcopy(document)


def test_document_is_valid_openapi_31(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1.")
    jsonschema.Draft202012Validator(OPENAPI_31).validate(spec)
    for schema in spec["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    loaded = schemathesis.openapi.from_dict(spec)
    labels = [result.ok().label for result in loaded.get_all_operations()]
    assert "POST /getImageToImage" in labels


def test_the_meta_schema_check_catches_a_broken_document(spec: dict[str, Any]) -> None:
    spec["paths"]["/health"]["get"]["responses"] = {"200": {"content": {}}}  # no description
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(OPENAPI_31).validate(spec)


def test_every_flask_route_is_documented_and_nothing_else(app: Flask, spec: dict[str, Any]) -> None:
    routes = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        methods = set(rule.methods or ()) - IGNORED_METHODS
        routes |= {(path, method.lower()) for method in methods}
    documented = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert routes == documented


def test_request_schemas_are_the_models_own(spec: dict[str, Any]) -> None:
    expected = ImageToImageRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    definitions = expected.pop("$defs", {})
    components = spec["components"]["schemas"]
    assert components["ImageToImageRequest"] == expected
    for name, schema in definitions.items():
        assert components[name] == schema
    body = spec["paths"]["/getImageToImage"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ImageToImageRequest"
    }


def test_multipart_variant_has_the_same_fields_and_the_image_as_a_file(
    spec: dict[str, Any],
) -> None:
    schemas = spec["components"]["schemas"]
    form, request = schemas["ImageToImageForm"], schemas["ImageToImageRequest"]
    assert set(form["properties"]) == set(request["properties"])
    assert form["required"] == [name for name in request["required"] if name != "image"]
    files = {"image", "file_url"}  # either may be the file part
    for name in files:
        assert (form["properties"][name]["type"], form["properties"][name]["format"]) == (
            "string",
            "binary",
        )
    assert {k: v for k, v in form["properties"].items() if k not in files} == {
        k: v for k, v in request["properties"].items() if k not in files
    }
    body = spec["paths"]["/getImageToImage"]["post"]["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["$ref"].endswith("/ImageToImageForm")


def test_every_error_answer_is_the_envelope(spec: dict[str, Any]) -> None:
    responses = spec["components"]["responses"]
    for response in responses.values():
        assert response["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Envelope"
        }
    assert "Retry-After" in responses["TooManyRequests"]["headers"]
    assert "Retry-After" in responses["Unavailable"]["headers"]
    assert "Allow" in responses["MethodNotAllowed"]["headers"]
    for path in ("/getImageToImage", "/getImagetoImage"):
        submit = spec["paths"][path]["post"]["responses"]
        assert {"200", "400", "401", "404", "405", "413", "429", "500", "503"} <= set(submit)
        assert "202" not in submit  # a pending job is 200, as Qolaba answers
        assert "Location" in submit["200"]["headers"]


def test_keyed_routes_use_the_bearer_scheme_and_public_ones_none(spec: dict[str, Any]) -> None:
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "The API key (`easel keys create`).",
    }
    assert spec["components"]["securitySchemes"]["apiKey"]["name"] == "X-API-Key"
    assert spec["security"] == [{"bearer": []}, {"apiKey": []}]
    public = {
        path
        for path, item in spec["paths"].items()
        for operation in item.values()
        if operation.get("security") == []
    }
    assert public == {
        "/", "/docs", "/docs/assets/{filename}", "/static/{filename}", "/openapi.json",
        "/health", "/ready", "/list_of_Apps", "/metrics",
    }  # fmt: skip


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/"])
def test_documentation_and_playground_need_no_key(client: FlaskClient, path: str) -> None:
    assert client.get(path).status_code == 200


@pytest.mark.parametrize("page", ["/docs", "/"])
def test_pages_load_only_local_assets_and_those_are_served(client: FlaskClient, page: str) -> None:
    html = client.get(page).get_data(as_text=True)
    urls = page_assets(html)
    assert urls, "the page references no assets"
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        with client.get(url) as response:
            assert response.status_code == 200, url
            if url.startswith("/static/"):  # our own scripts and styles name no other host
                assert "://" not in response.get_data(as_text=True), url


def test_docs_script_and_swagger_ui_files_are_served(client: FlaskClient) -> None:
    with client.get("/static/docs.js") as response:
        script = response.get_data(as_text=True)
    assert "SwaggerUIBundle" in script
    with client.get("/docs/assets/swagger-ui-bundle.js") as bundle:
        assert bundle.status_code == 200
    missing = client.get("/docs/assets/no-such-file.js")
    assert missing.status_code == 404 and missing.json["status"] == "FAILED"


def test_playground_inputs_take_their_limits_from_the_model(client: FlaskClient) -> None:
    html = client.get("/").get_data(as_text=True)
    seed = re.search(r'<input[^>]*id="seed"[^>]*>', html, re.S)
    assert seed is not None
    field = ImageToImageRequest.model_json_schema()["properties"]["seed"]["anyOf"][0]
    assert f'min="{field["minimum"]}"' in seed.group(0)
    assert f'max="{field["maximum"]}"' in seed.group(0)
    for option in ("a10g", "a100", "h100", "png", "jpeg", "webp"):
        assert f'<option value="{option}"' in html


def test_listing_and_health_answers_match_their_documented_models(client: FlaskClient) -> None:
    apps = AppsEnvelope.model_validate(client.get("/list_of_Apps").json)
    assert apps.status == "SUCCESS" and "tiny-sd" in {app.app_id for app in apps.output}
    Health.model_validate(client.get("/health").json)
