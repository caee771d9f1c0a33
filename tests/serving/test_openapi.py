"""The OpenAPI document at /docs.json, against real `groupdiff serve` REST servers on 127.0.0.1.

It must validate as the version it declares (openapi-spec-validator), carry the served model's exact limits
and real response schemas, be browsable at /docs without the internet, and hold under a bounded
property-based run (schemathesis, generating positive and negative cases from the document itself): no
5xx, and every status, content type and body as documented.
"""

from __future__ import annotations

import re

import httpx
import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.servers import rest_server, tiny_checkpoint

pytestmark = pytest.mark.integration  # starts real servers (make test-fast skips it)

TOKEN = "openapi-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_IMAGES = 6
FUZZ_EXAMPLES = 300  # per operation and mode: about 4 s per POST operation here
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection]


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A student (steps 1/2/4, group sizes 1..4) behind a bearer token."""
    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("openapi") / "student", kind="student", group_size=2)
    with rest_server(checkpoint, args=["--max-images", str(MAX_IMAGES), "--max-queue", "64"],
                     env={"GROUPDIFF_API_TOKEN": TOKEN}) as server:
        yield server


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("openapi") / "teacher", kind="teacher")
    with rest_server(checkpoint) as server:
        yield server


def document(server) -> dict:
    reply = httpx.get(f"{server.url}/docs.json")
    assert reply.status_code == 200, reply.text
    return reply.json()


def body_property(spec: dict, name: str) -> dict:
    """A request field's schema, without the ``null`` that marks it optional."""
    schema = spec["components"]["schemas"]["GenerateRequest"]["properties"][name]
    return next((s for s in schema["anyOf"] if s.get("type") != "null"), None) if "anyOf" in schema else schema


def check_against(spec: dict, schema_name: str, instance: dict) -> None:
    jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{schema_name}", **spec}).validate(instance)


@pytest.mark.parametrize("kind", ["student", "teacher"])
def test_document_validates_as_the_version_it_declares(request, kind):
    spec = document(request.getfixturevalue(kind))
    assert spec["openapi"] == "3.1.0"
    validate(spec)  # openapi-spec-validator picks the 3.1 validator from the declared version
    assert {"/v1/generate", "/v1/generate/stream", "/v1/model", "/livez", "/healthz", "/readyz",
            "/metrics"} == set(spec["paths"])


def test_limits_are_the_served_models(student, teacher):
    spec = document(student)
    assert body_property(spec, "steps") == {"type": "integer", "enum": [1, 2, 4]}  # the student's real list
    seed = body_property(spec, "seed")
    assert (seed["minimum"], seed["maximum"]) == (0, 2**63 - 1) and type(seed["maximum"]) is int
    assert (body_property(spec, "group_size")["minimum"], body_property(spec, "group_size")["maximum"]) == (1, 4)
    assert (body_property(spec, "class_id")["minimum"], body_property(spec, "class_id")["maximum"]) == (0, 9)
    assert body_property(spec, "num_images")["maximum"] == MAX_IMAGES
    assert spec["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    assert spec["paths"]["/v1/generate"]["post"]["security"] == [{"bearer": []}]
    teacher_spec = document(teacher)
    steps = body_property(teacher_spec, "steps")
    assert (steps["minimum"], steps["maximum"]) == (1, 250) and "enum" not in steps
    assert "securitySchemes" not in teacher_spec["components"]  # no token required


def test_responses_are_documented_and_real_ones_match(student):
    spec = document(student)
    generate = spec["paths"]["/v1/generate"]["post"]["responses"]
    assert generate["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/GenerateResponse"}
    for status in ("400", "401", "413", "422", "429", "503", "504"):
        assert generate[status]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    assert set(spec["paths"]["/v1/generate/stream"]["post"]["responses"]["200"]["content"]) == {"text/event-stream"}
    reply = httpx.post(f"{student.url}/v1/generate", json={"class_id": 3, "num_images": 3, "seed": 2**63 - 1},
                       headers=AUTH)
    assert reply.status_code == 200, reply.text
    check_against(spec, "GenerateResponse", reply.json())
    with pytest.raises(jsonschema.ValidationError):  # the schema is not vacuous
        check_against(spec, "GenerateResponse", {**reply.json(), "images": [{"index": 0}]})
    attention = body_property(spec, "return_attention")
    assert (attention["type"], attention["default"]) == ("boolean", False)
    looked = httpx.post(f"{student.url}/v1/generate", json={"class_id": 3, "num_images": 3, "return_attention": True},
                        headers=AUTH)
    assert looked.status_code == 200 and len(looked.json()["attention"]) == 2, looked.text
    check_against(spec, "GenerateResponse", looked.json())
    with pytest.raises(jsonschema.ValidationError):
        check_against(spec, "GenerateResponse", {**looked.json(), "attention": [{"members": [0, 1]}]})
    check_against(spec, "ModelInfo", httpx.get(f"{student.url}/v1/model", headers=AUTH).json())
    for error in (httpx.post(f"{student.url}/v1/generate", json={"class_id": 3}, headers=AUTH),
                  httpx.post(f"{student.url}/v1/generate", json={"class_id": 3})):
        check_against(spec, "ErrorBody", error.json())


def test_docs_page_loads_the_document_and_its_assets_from_the_server(student):
    page = httpx.get(f"{student.url}/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/docs.json" in page.text
    assets = re.findall(r"""(?:src|href)=["'](/[^"']+)["']""", page.text)
    assert any(asset.endswith(".js") for asset in assets) and not re.search(r"(src|href)=[\"']https?:", page.text)
    for asset in assets:
        assert httpx.get(f"{student.url}{asset}").status_code == 200, asset


# 504 deadline_exceeded is the contract's answer to a timeout_s too short to sample in (the fuzzer picks values
# like 1e-156 s); every other 5xx fails the run.
FUZZ_CONFIG = {"checks": {"not_a_server_error": {"expected-statuses": ["2XX", "3XX", "4XX", 504]}}}


@pytest.fixture(scope="module")
def api_schema(student):
    return schemathesis.openapi.from_url(f"{student.url}/docs.json", config=schemathesis.Config.from_dict(FUZZ_CONFIG))


FUZZED = [(path, method, mode) for path, method in (("/v1/generate", "POST"), ("/v1/generate/stream", "POST"))
          for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)] + \
         [(path, "GET", GenerationMode.POSITIVE) for path in ("/v1/model", "/readyz", "/livez", "/healthz", "/metrics")]


@pytest.mark.parametrize(("path", "method", "mode"), FUZZED, ids=[f"{m} {p} {g.value}" for p, m, g in FUZZED])
def test_fuzz_no_server_errors_and_every_answer_as_documented(api_schema, path, method, mode):
    """Bounded (FUZZ_EXAMPLES per operation and mode, derandomized so a run is repeatable): cases generated from
    the document (negative ones break it on purpose and must get a 4xx), each answer checked against it."""

    @given(case=api_schema[path][method].as_strategy(mode))
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def call(case):
        case.call_and_validate(headers=AUTH, checks=CHECKS)
        calls.append(case)

    calls = []
    call()
    assert calls  # (a GET without parameters has a single case)
