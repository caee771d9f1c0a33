"""The wire contract on its own: the body's bounds, the Triton tensors it maps to, the error codes, and that it
imports without torch or numpy (both clients and both servers stand on it)."""

import subprocess
import sys

import pytest
from pydantic import ValidationError

from groupdiff.protocol.errors import ERROR_CODES, ErrorBody, code_for_status, error_body
from groupdiff.protocol.generate import (
    CONDITION_FIELDS,
    OPTIONAL_FIELDS,
    GenerateResponse,
    RequestLimits,
    describe_validation_error,
    request_model,
)
from groupdiff.protocol.limits import MAX_PROMPT_CHARS, MAX_SEED, TEACHER_MAX_STEPS
from groupdiff.protocol.triton import INPUT_BY_FIELD, INPUTS, OUTPUTS, triton_error_code

STUDENT = RequestLimits(num_classes=10, max_images=8, group_sizes=(1, 2, 4), default_group_size=4, steps=(1, 2, 4),
                        default_steps=1, guidance_scale=1.5, guidance_adjustable=False, default_timeout_s=30.0)
TEACHER = RequestLimits(num_classes=3, max_images=64, group_sizes=(1, 2, 3, 4), default_group_size=4, steps=(),
                        default_steps=25, guidance_scale=1.0, guidance_adjustable=True, default_timeout_s=60.0)


def test_the_protocol_imports_neither_torch_nor_numpy():
    script = ("import sys, groupdiff.protocol.generate, groupdiff.protocol.errors, groupdiff.protocol.triton, "
              "groupdiff.protocol.auth; print(sorted({'torch', 'numpy'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_the_body_takes_the_served_bounds_and_fills_defaults():
    body = request_model(STUDENT).model_validate({"class_id": 9, "num_images": 8.0})
    assert (body.class_id, body.num_images, body.group_size, body.steps) == (9, 8, None, None)
    assert (body.group_policy, body.timeout_s) == ("isolated", 30.0)
    assert request_model(TEACHER).model_validate({"class_id": 0, "num_images": 1, "steps": TEACHER_MAX_STEPS}).steps
    assert request_model(STUDENT).model_validate({"class_id": 0, "num_images": 1, "seed": MAX_SEED}).seed == MAX_SEED


@pytest.mark.parametrize("body, message", [
    ({"class_ids": [0, 1, 4, 7]}, None), ({"class_ids": [2], "num_images": 1, "group_size": 1}, None),
    ({}, "give class_id"), ({"class_id": 1, "class_ids": [1]}, "not both"), ({"class_id": 1}, "num_images"),
    ({"class_ids": []}, "class_ids"), ({"class_ids": [1, 2, 3, 4, 5]}, "class_ids"), ({"class_ids": [10]}, "class_ids"),
    ({"class_ids": [1, 2], "num_images": 3}, "num_images"), ({"class_ids": [1, 2], "group_size": 1}, "group_size"),
    ({"class_ids": [1, 2], "group_policy": "shared"}, "isolated")])
def test_an_image_set_is_one_group_of_its_own(body, message):
    if message is None:
        assert request_model(STUDENT).model_validate(body).class_ids == body["class_ids"]
    else:
        with pytest.raises(ValidationError) as refused:
            request_model(STUDENT).model_validate(body)
        assert message in describe_validation_error(refused.value)


@pytest.mark.parametrize("field, value", [
    ("class_id", 10), ("class_id", True), ("class_id", "3"), ("num_images", 9), ("num_images", 1.5),
    ("steps", 3), ("group_size", 3), ("seed", MAX_SEED + 1), ("seed", -1), ("guidance_scale", float("nan")),
    ("group_policy", "mine"), ("timeout_s", 0.0), ("colour", "red")])
def test_the_body_refuses_what_is_out_of_bounds(field, value):
    with pytest.raises(ValidationError, match=field):
        request_model(STUDENT).model_validate({"class_id": 0, "num_images": 1, field: value})


def test_the_schema_shows_the_bounds_a_client_can_read():
    schema = request_model(STUDENT).model_json_schema()
    properties = schema["properties"]
    assert properties["num_images"]["anyOf"][0]["maximum"] == 8 and properties["class_id"]["anyOf"][0]["maximum"] == 9
    assert {"type": "integer", "enum": [1, 2, 4]} in properties["steps"]["anyOf"]  # not consecutive: an enum
    teacher_sizes = request_model(TEACHER).model_json_schema()["properties"]["group_size"]["anyOf"]
    assert {"type": "integer", "minimum": 1, "maximum": 4} in teacher_sizes  # consecutive: a range
    assert schema["oneOf"] == [{"required": ["class_id", "num_images"]}, {"required": ["class_ids"]}]
    assert set(properties) == {*CONDITION_FIELDS, "num_images", *OPTIONAL_FIELDS}
    assert properties["class_ids"]["anyOf"][0]["maxItems"] == 4  # an image set is one group


def test_every_triton_input_carries_a_request_field():
    fields = set(request_model(TEACHER).model_fields)
    assert {tensor.field for tensor in INPUTS} <= fields
    assert {tensor.field for tensor in INPUTS if tensor.shape != (1,)} == {"class_ids"}  # [k]: one class per image
    assert len({tensor.name for tensor in INPUTS}) == len(INPUTS)


def test_error_codes_and_statuses():
    assert [code_for_status(s) for s in (400, 401, 404, 413, 422, 429, 503, 504, 500, 418)] == [
        "invalid_request", "unauthorized", "not_found", "invalid_request", "invalid_request", "queue_full",
        "not_ready", "deadline_exceeded", "internal", "invalid_request"]
    assert set(code_for_status(s) for s in range(400, 600)) <= set(ERROR_CODES)
    assert [triton_error_code(s) for s in (400, 422, 429, 503, 504, 500)] == [
        "INVALID_ARG", "INVALID_ARG", "UNAVAILABLE", "UNAVAILABLE", "UNAVAILABLE", "INTERNAL"]
    assert ErrorBody.model_validate(error_body("queue_full", "busy")).error.code == "queue_full"
    with pytest.raises(ValidationError):
        ErrorBody.model_validate(error_body("no_such_code", "?"))


def test_a_response_is_checked_by_the_client_side_model():
    answer = {"request_id": "r", "model_version": "m", "width": 8, "height": 8, "group_size": 4, "steps": 1,
              "guidance_scale": 1.5, "group_policy": "shared",
              "images": [{"index": 0, "class_id": 2, "seed": 3, "png_base64": ""}],
              "timings_ms": {"queue": 0, "denoise": 1, "decode": 0, "encode": 0, "total": 1}, "newer_field": 1}
    assert GenerateResponse.model_validate(answer).images[0].seed == 3  # unknown (newer) fields are ignored
    with pytest.raises(ValidationError, match="timings_ms"):
        GenerateResponse.model_validate({**answer, "timings_ms": {"total": 1}})
    assert GenerateResponse.model_validate(answer).attention is None  # absent unless asked for


@pytest.mark.parametrize("value", ["true", 1, 0, None, 1.0, [True]])
def test_return_attention_is_a_json_boolean_off_by_default(value):
    model = request_model(STUDENT)
    assert model.model_validate({"class_id": 0, "num_images": 1}).return_attention is False
    assert model.model_validate({"class_id": 0, "num_images": 1, "return_attention": True}).return_attention is True
    assert model.model_validate({"class_ids": [1, 2], "return_attention": False}).return_attention is False
    with pytest.raises(ValidationError) as refused:
        model.model_validate({"class_id": 0, "num_images": 1, "return_attention": value})
    assert describe_validation_error(refused.value).startswith("return_attention: ")


def test_return_attention_in_the_schema_and_on_triton():
    schema = request_model(TEACHER).model_json_schema()["properties"]["return_attention"]
    assert (schema["type"], schema["default"]) == ("boolean", False)
    assert "each row sums to 1" in schema["description"] and "final denoising step" in schema["description"]
    assert (INPUT_BY_FIELD["return_attention"].datatype, INPUT_BY_FIELD["return_attention"].optional) == ("BOOL", True)
    outputs = {tensor.name: tensor for tensor in OUTPUTS}
    assert (outputs["ATTENTION"].datatype, outputs["ATTENTION"].shape) == ("FP32", (-1, -1, -1))
    assert (outputs["ATTENTION_MEMBERS"].datatype, outputs["ATTENTION_MEMBERS"].shape) == ("INT64", (-1, -1))


def test_a_response_carries_each_groups_mass_with_its_members():
    answer = {"request_id": "r", "model_version": "m", "width": 8, "height": 8, "group_size": 2, "steps": 1,
              "guidance_scale": 1.5, "group_policy": "isolated",
              "images": [{"index": 0, "class_id": 2, "seed": 3, "png_base64": ""}],
              "timings_ms": {"queue": 0, "denoise": 1, "decode": 0, "encode": 0, "total": 1},
              "attention": [{"members": [0, None], "mass": [[0.75, 0.25], [0.5, 0.5]]}]}
    (group,) = GenerateResponse.model_validate(answer).attention
    assert group.members == [0, None] and group.mass[0] == [0.75, 0.25]
    with pytest.raises(ValidationError, match="attention"):
        GenerateResponse.model_validate({**answer, "attention": [{"members": [0, None]}]})


TEXT = RequestLimits(num_classes=1000, max_images=8, group_sizes=(1, 2, 4), default_group_size=4, steps=(1, 2, 4),
                     default_steps=1, guidance_scale=1.5, guidance_adjustable=False, default_timeout_s=30.0,
                     condition="text", max_prompt_tokens=77)


def test_a_prompt_is_normalised_by_the_body_model():
    body = request_model(TEXT).model_validate({"prompt": " a  red\u00a0shirt\n", "num_images": 2})
    assert body.prompt == "a red shirt" and body.class_id is None
    assert request_model(TEXT).model_validate({"prompt": "e\u0301t\u00e9", "num_images": 1}).prompt == "\u00e9t\u00e9"


@pytest.mark.parametrize("limits, body, message", [
    (TEXT, {"prompt": "", "num_images": 1}, "prompt: prompt is empty"),
    (TEXT, {"prompt": "  \t ", "num_images": 1}, "prompt: prompt is empty"),
    (TEXT, {"prompt": "x" * (MAX_PROMPT_CHARS + 1), "num_images": 1}, f"at most {MAX_PROMPT_CHARS} are allowed"),
    (TEXT, {"prompt": "a\x00b", "num_images": 1}, "prompt: prompt contains control character U+0000 at position 1"),
    (TEXT, {"prompt": "a\x7fb", "num_images": 1}, "control character U+007F"),
    (TEXT, {"prompt": 3, "num_images": 1}, "prompt: Input should be a valid string"),
    (TEXT, {"prompt": "a shirt"}, "num_images: Field required (with prompt)"),
    (TEXT, {"prompt": "a shirt", "class_id": 1, "num_images": 1}, "not both (class_id and prompt)"),
    (TEXT, {"class_id": 1, "num_images": 1}, "this model is text-conditioned; send prompt"),
    (TEXT, {"class_ids": [1, 2]}, "this model is text-conditioned; send prompt"),
    (TEXT, {"num_images": 1}, "give prompt (with num_images)"),
    (STUDENT, {"prompt": "a shirt", "num_images": 1}, "prompt: this model is class-conditioned"),
    (STUDENT, {"prompt": "a shirt", "class_id": 1, "num_images": 1}, "not both (class_id and prompt)"),
])
def test_prompt_refusals_name_the_field_and_the_rule(limits, body, message):
    with pytest.raises(ValidationError) as refused:
        request_model(limits).model_validate(body)
    assert message in describe_validation_error(refused.value)


def test_the_prompt_in_the_schema_on_triton_and_in_the_answer():
    schema = request_model(TEXT).model_json_schema()
    assert schema["oneOf"] == [{"required": ["prompt", "num_images"]}]
    prompt = next(option for option in schema["properties"]["prompt"]["anyOf"] if option.get("type") == "string")
    assert prompt["maxLength"] == MAX_PROMPT_CHARS and "77 tokens" in schema["properties"]["prompt"]["description"]
    assert INPUT_BY_FIELD["prompt"].datatype == "BYTES" and "PROMPT" in {tensor.name for tensor in OUTPUTS}
    answer = GenerateResponse.model_validate({
        "request_id": "r", "model_version": "m", "width": 8, "height": 8, "group_size": 4, "steps": 1,
        "guidance_scale": 1.5, "group_policy": "isolated", "prompt": "a shirt",
        "images": [{"index": 0, "seed": 1, "png_base64": ""}],
        "timings_ms": {"queue": 0, "denoise": 0, "decode": 0, "encode": 0, "total": 0}})
    assert answer.prompt == "a shirt" and answer.images[0].class_id is None
