"""``protocol/methods.json`` and ``protocol/events.json`` against the code and a live server.

The catalogue is written by hand; these tests make any drift fail: the method table, every
declared parameter (order, type, required/default, range, length, choices), every event and
its fields, PHD2's method table, the documented result shapes and error messages (checked
against real replies), and the documented examples (run against a real server).
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from pathlib import Path
from typing import Any

import pytest

from phdserver import __version__
from phdserver.api import REQUIRED, MethodSpec, Param, method_specs
from phdserver.app import App
from phdserver.operations import Kind
from phdserver.operations.lifecycle import statuses
from phdserver.rpc.events import all_event_types
from tests.support import LineClient, make_config, running_server, wait_operation

PROTOCOL = Path(__file__).resolve().parents[2] / "protocol"
METHODS_DOC: dict[str, Any] = json.loads((PROTOCOL / "methods.json").read_text("utf-8"))
EVENTS_DOC: dict[str, Any] = json.loads((PROTOCOL / "events.json").read_text("utf-8"))
DOCUMENTED = {m["name"]: m for m in METHODS_DOC["methods"]}
COMMON_EVENT_FIELDS = ["Event", "Timestamp", "Host", "Inst"]

# PHD2's method table, reference/phd2.md §1 (event_server.cpp:2413-2467).
PHD2_METHODS = frozenset({
    "clear_calibration", "deselect_star", "get_exposure", "set_exposure",
    "get_exposure_durations", "get_profiles", "get_profile", "set_profile", "get_connected",
    "set_connected", "get_calibrated", "get_paused", "set_paused", "get_lock_position",
    "set_lock_position", "loop", "stop_capture", "guide", "dither", "find_star",
    "get_pixel_scale", "get_app_state", "flip_calibration", "get_lock_shift_enabled",
    "set_lock_shift_enabled", "get_lock_shift_params", "set_lock_shift_params", "save_image",
    "get_star_image", "get_use_subframes", "get_search_region", "shutdown",
    "get_camera_binning", "get_camera_frame_size", "get_current_equipment",
    "get_guide_output_enabled", "set_guide_output_enabled", "get_algo_param_names",
    "get_algo_param", "set_algo_param", "get_dec_guide_mode", "set_dec_guide_mode",
    "get_settling", "guide_pulse", "get_calibration_data", "capture_single_frame",
    "get_cooler_status", "set_cooler_state", "get_ccd_temperature", "export_config_settings",
    "get_variable_delay_settings", "set_variable_delay_settings", "get_limit_frame",
    "set_limit_frame",
})

JSON_TYPES = {"integer": int, "number": (int, float), "boolean": bool, "string": str,
              "array": list, "object": dict, "null": type(None)}


# -- a JSON Schema subset: what the catalogue uses ------------------------------------------
def _resolve(root: dict[str, Any], ref: str) -> dict[str, Any]:
    node: Any = root
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _is_type(value: Any, name: str) -> bool:
    if isinstance(value, bool) and name not in ("boolean",):
        return False
    return isinstance(value, JSON_TYPES[name])


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) or (
        type(a) in (int, float) and type(b) in (int, float) and a == b)


def schema_errors(value: Any, schema: dict[str, Any], root: dict[str, Any],
                  where: str = "$") -> list[str]:
    """Why ``value`` does not match ``schema`` (empty when it does)."""
    if "$ref" in schema:
        return schema_errors(value, _resolve(root, schema["$ref"]), root, where)
    errors: list[str] = []
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(value, n) for n in names):
            return [f"{where}: {value!r} is not {names}"]
    if "const" in schema and not _same(value, schema["const"]):
        errors.append(f"{where}: {value!r} != {schema['const']!r}")
    if "enum" in schema and not any(_same(value, e) for e in schema["enum"]):
        errors.append(f"{where}: {value!r} not in {schema['enum']}")
    if "oneOf" in schema:
        matches = sum(not schema_errors(value, s, root, where) for s in schema["oneOf"])
        if matches != 1:
            errors.append(f"{where}: matches {matches} of oneOf")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} > {schema['maximum']}")
    if isinstance(value, str) and len(value) > schema.get("maxLength", len(value)):
        errors.append(f"{where}: longer than {schema['maxLength']}")
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            errors.append(f"{where}: {len(value)} items")
        for index, item in enumerate(value):
            errors += schema_errors(item, schema.get("items", {}), root, f"{where}[{index}]")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        errors += [f"{where}: missing {k}" for k in schema.get("required", ()) if k not in value]
        for key, item in value.items():
            if key in properties:
                errors += schema_errors(item, properties[key], root, f"{where}.{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{where}: undocumented member {key}")
    return errors


# -- the catalogue against the code ---------------------------------------------------------
@pytest.fixture
def specs(tmp_path: Path) -> dict[str, MethodSpec]:
    return method_specs(App(make_config(tmp_path)))


def expected_schema(param: Param) -> dict[str, Any]:
    """The constraint keywords a declared parameter must have in its schema, exactly."""
    out: dict[str, Any] = {}
    if param.type != "any":
        out["type"] = [param.type, "null"] if param.nullable else param.type
    for key, value in (("minimum", param.minimum), ("maximum", param.maximum),
                       ("maxLength", param.max_length)):
        if value is not None:
            out[key] = value
    if param.choices is not None:
        out["enum"] = list(param.choices)
    if param.default is not REQUIRED and (param.default is not None or param.nullable):
        out["default"] = param.default
    return out


CONSTRAINT_KEYS = ("type", "minimum", "maximum", "maxLength", "enum", "default")


def test_methods_json_has_the_openrpc_shape() -> None:
    assert METHODS_DOC["openrpc"].startswith("1.3.")
    info = METHODS_DOC["info"]
    assert info["title"] == "phdserver"
    assert info["version"] == __version__
    assert info["description"]
    names = [m["name"] for m in METHODS_DOC["methods"]]
    assert names == sorted(set(names)), "methods must be unique and in alphabetical order"
    for method in METHODS_DOC["methods"]:
        assert method["summary"], method["name"]
        assert method["description"], method["name"]
        assert method["paramStructure"] == "either"
        assert set(method["result"]) >= {"name", "schema"}
        assert method["x-phd2"] in ("phd2", "extension")
        for error in method["errors"]:
            assert type(error["code"]) is int
            assert isinstance(error["message"], str)
            assert error["code"] in (1, 2, 3, -32602, -32603), (method["name"], error)


def test_same_method_names_as_the_code(specs: dict[str, MethodSpec]) -> None:
    assert set(DOCUMENTED) == set(specs)


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_params_match_the_declarations(name: str, specs: dict[str, MethodSpec]) -> None:
    declared = specs[name].params
    documented = DOCUMENTED[name]["params"]
    assert [p["name"] for p in documented] == [p.name for p in declared]
    for doc, param in zip(documented, declared, strict=True):
        assert doc["required"] is param.required, param.name
        assert doc["description"], param.name
        shown = {k: doc["schema"][k] for k in CONSTRAINT_KEYS if k in doc["schema"]}
        assert shown == expected_schema(param), param.name
    errors = DOCUMENTED[name]["errors"]
    if any(p.type != "any" or p.required for p in declared):
        assert -32602 in {e["code"] for e in errors}
    documents_missing = any(e["message"].startswith("missing <param>") for e in errors)
    assert documents_missing == any(p.required for p in declared)


def test_phd2_methods_are_answered_and_marked(tmp_path: Path) -> None:
    app = App(make_config(tmp_path))
    assert app.dispatcher.method_names >= PHD2_METHODS
    marked = {name for name, m in DOCUMENTED.items() if m["x-phd2"] == "phd2"}
    assert marked == PHD2_METHODS


def test_status_and_kind_enums_follow_the_lifecycle() -> None:
    schemas = METHODS_DOC["components"]["schemas"]
    dark = schemas["DarkBuildStatus"]["properties"]["status"]["enum"]
    defect = schemas["DefectBuildStatus"]["properties"]["status"]["enum"]
    assert dark == list(statuses(Kind.DARK_LIBRARY))
    assert defect == list(statuses(Kind.DEFECT_MAP))
    snapshot = schemas["OperationSnapshot"]["properties"]
    assert snapshot["kind"]["enum"] == [str(k) for k in Kind]
    assert set(snapshot["status"]["enum"]) == {s for k in Kind for s in statuses(k)}


def test_every_ref_resolves() -> None:
    refs = re.findall(r'"\$ref": "([^"]+)"', json.dumps(METHODS_DOC))
    assert refs
    for ref in refs:
        assert isinstance(_resolve(METHODS_DOC, ref), dict), ref


def test_examples_fit_their_method() -> None:
    with_examples = {n for n, m in DOCUMENTED.items() if "examples" in m}
    expected = {n for n in DOCUMENTED if "dark_library" in n or "defect_map" in n}
    assert with_examples >= expected
    for name in with_examples:
        method = DOCUMENTED[name]
        params = {p["name"]: p["schema"] for p in method["params"]}
        for example in method["examples"]:
            for given in example["params"]:
                assert not schema_errors(given["value"], params[given["name"]], METHODS_DOC)
            value = example["result"]["value"]
            assert schema_errors(value, method["result"]["schema"], METHODS_DOC) == [], name


# -- events ---------------------------------------------------------------------------------
def _json_types(hint: Any) -> set[str]:
    names = {str: "string", int: "integer", float: "number", bool: "boolean"}
    args = typing.get_args(hint) or (hint,)
    return {names[a] for a in args if a is not type(None)}


def test_events_json_shape() -> None:
    assert EVENTS_DOC["$schema"].startswith("https://json-schema.org/")
    assert EVENTS_DOC["title"]
    assert EVENTS_DOC["description"]
    assert EVENTS_DOC["required"] == COMMON_EVENT_FIELDS
    assert list(EVENTS_DOC["properties"]) == COMMON_EVENT_FIELDS


def test_every_event_is_documented_with_its_fields() -> None:
    types = all_event_types()
    defs = EVENTS_DOC["$defs"]
    assert set(defs) == set(types)
    assert [r["$ref"].rsplit("/", 1)[1] for r in EVENTS_DOC["oneOf"]] == list(defs)
    for name, cls in types.items():
        doc = defs[name]
        assert doc["title"] == name
        assert doc["description"]
        assert doc["x-phd2"] == ("extension" if name.startswith("Operation") else "phd2")
        properties = doc["properties"]
        assert properties["Event"] == {"const": name}
        fields = dataclasses.fields(cls)
        assert [k for k in properties if k != "Event"] == [f.name for f in fields]
        required = {f.name for f in fields if f.default is not None}
        assert set(doc["required"]) - {"Event"} == required, name
        hints = typing.get_type_hints(cls)
        for field in fields:
            documented = properties[field.name]["type"]
            documented = set(documented) if isinstance(documented, list) else {documented}
            assert documented == _json_types(hints[field.name]), (name, field.name)
            assert properties[field.name]["description"]
        for example in doc["examples"]:
            assert schema_errors(example, EVENTS_DOC, EVENTS_DOC) == [], name


# -- against a running server ---------------------------------------------------------------
def _pattern(message: str) -> re.Pattern[str]:
    parts = re.split(r"<[^>]*>", message)
    return re.compile(".+".join(re.escape(p) for p in parts), re.DOTALL)


def assert_documented_error(method: str, error: dict[str, Any]) -> None:
    documented = DOCUMENTED[method]["errors"]
    assert any(e["code"] == error["code"] and _pattern(e["message"]).fullmatch(error["message"])
               for e in documented), (method, error)


async def call_checked(client: LineClient, method: str, params: Any = None) -> Any:
    """Call, then check the reply against the catalogue: result schema or documented error."""
    reply = await client.call_raw(method, params)
    if "error" in reply:
        assert_documented_error(method, reply["error"])
        return reply["error"]
    schema = DOCUMENTED[method]["result"]["schema"]
    assert schema_errors(reply["result"], schema, METHODS_DOC) == [], (method, reply)
    return reply["result"]


def example_of(method: str, name: str) -> tuple[dict[str, Any], Any]:
    example = next(e for e in DOCUMENTED[method]["examples"] if e["name"] == name)
    return {p["name"]: p["value"] for p in example["params"]}, example["result"]["value"]


def normalised(result: Any) -> Any:
    if isinstance(result, dict):
        return {k: (Path(v).name if k == "path" else v) for k, v in result.items()
                if k != "operation_id"}
    return result


SAFE_GETTERS = sorted(n for n in DOCUMENTED if n.startswith("get_") and not any(
    p["required"] for p in DOCUMENTED[n]["params"]))
REFUSED_CALLS = [
    ("guide", [{"pixels": 1.5, "time": 8, "timeout": 60}, False]),
    ("guide", [{"pixels": 1.5, "time": 8}, False]),
    ("dither", [3, False, {"pixels": 1.5, "time": 8, "timeout": 60}]),
    ("set_paused", [True, "full"]),
    ("find_star", None),
    ("set_lock_position", [10.5, 20.5]),
    ("flip_calibration", None),
    ("get_star_image", [32]),
    ("guide_pulse", [500, "north"]),
    ("guide_pulse", [500, "sideways"]),
    ("get_algo_param_names", ["dec"]),
    ("get_algo_param", ["ra", "MinMove"]),
    ("set_algo_param", ["ra", "MinMove", 0.2]),
    ("set_exposure", [1234]),
    ("set_exposure", ["abc"]),
    ("set_profile", [99]),
    ("set_limit_frame", [[0, 0, 100000, 10]]),
    ("clear_calibration", ["neither"]),
    ("start_dark_library_build", {"notes": "x" * 66}),
    ("start_dark_library_build", {"min_exposure": 16000, "max_exposure": 20000}),
    ("get_operation", {"operation_id": 4242}),
]


async def test_replies_and_events_match_the_catalogue(tmp_path: Path) -> None:
    async with running_server(make_config(tmp_path)) as (_, port):
        client = await LineClient.connect(port, read_greeting=False)
        await client.wait_event("AppState")
        for name in SAFE_GETTERS:  # disconnected: results or documented refusals
            await call_checked(client, name)
        assert await call_checked(client, "set_connected", [True]) == 0
        for name in SAFE_GETTERS:
            await call_checked(client, name)
        for method, params in REFUSED_CALLS:
            reply = await client.call_raw(method, params)
            assert "error" in reply, (method, reply)
            assert_documented_error(method, reply["error"])
        assert await call_checked(client, "set_cooler_state", {"enabled": True}) == 0
        assert (await call_checked(client, "get_cooler_status"))["coolerOn"] is True

        # The documented examples, run for real.
        dark, expected = example_of("start_dark_library_build", "build 1.0-2.0 s")
        started = await call_checked(client, "start_dark_library_build", dark)
        assert normalised(started) == normalised(expected)
        await wait_operation(client, started["operation_id"])
        _, expected = example_of("get_dark_library_status", "a completed build")
        status = await call_checked(client, "get_dark_library_status",
                                    {"operation_id": started["operation_id"]})
        assert normalised(status) == normalised(expected)
        library = await call_checked(client, "get_dark_library_status")
        assert library["notes"] == dark["notes"]
        assert library["exposures"] == started["exposures"]
        assert (await call_checked(client, "cancel_dark_library_build",
                                   {"operation_id": started["operation_id"]})) == {
            "operation_id": started["operation_id"], "cancelled": False, "status": "completed"}
        assert await call_checked(client, "clear_dark_library") == 0
        assert (await call_checked(client, "load_dark_library"))["loaded"] is True

        params, expected = example_of("start_defect_map_build", "15 s darks, PHD2's defaults")
        started = await call_checked(client, "start_defect_map_build", params)
        assert normalised(started) == normalised(expected)
        finished = await wait_operation(client, started["operation_id"])
        assert finished["Status"] == "completed"
        status = await call_checked(client, "get_defect_map_build_status",
                                    {"operation_id": started["operation_id"]})
        assert status["defect_count"] == status["hot_count"] + status["cold_count"]
        assert (await call_checked(client, "get_defect_map_status"))["loaded"] is True
        params, _ = example_of("refine_defect_map", "fewer hot, more cold pixels")
        refined = await call_checked(client, "refine_defect_map", params)
        assert refined["hot_aggressiveness"] == params["hot_aggressiveness"]
        assert (await call_checked(client, "load_defect_map"))["pixel_count"] == refined[
            "defect_count"]
        assert await call_checked(client, "clear_defect_map") == 0
        operations = await call_checked(client, "list_operations")
        assert [o["kind"] for o in operations] == ["dark_library", "defect_map"]
        await call_checked(client, "get_operation", {"operation_id": started["operation_id"]})
        wrong_kind = await client.error("get_defect_map_build_status",
                                        {"operation_id": operations[0]["operation_id"]})
        assert_documented_error("get_defect_map_build_status", wrong_kind)

        await client.call("capture_single_frame", {"exposure": 100, "save": True})
        await client.wait_event("LoopingExposuresStopped")
        assert (await call_checked(client, "save_image"))["filename"].endswith(".fit")
        await client.call("loop")
        await client.wait_event("LoopingExposures")
        await client.call("stop_capture")
        await client.wait_event("LoopingExposuresStopped")
        await client.aclose()

    lines = [json.loads(line) for line in client.raw_lines]
    events = [line for line in lines if isinstance(line, dict) and "Event" in line]
    seen = {e["Event"] for e in events}
    assert seen >= {"Version", "AppState", "ConfigurationChange", "OperationProgress",
                    "OperationFinished", "SingleFrameComplete", "LoopingExposures",
                    "LoopingExposuresStopped"}
    for event in events:
        assert list(event)[:4] == COMMON_EVENT_FIELDS
        assert schema_errors(event, EVENTS_DOC, EVENTS_DOC) == [], event
        fields = EVENTS_DOC["$defs"][event["Event"]]["properties"]
        assert set(event) <= set(COMMON_EVENT_FIELDS) | set(fields), event
