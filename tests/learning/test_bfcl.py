"""BFCL categories as benchmarks: the data from the pinned bfcl-eval wheel (fetched once into
.cache/bfcl), our checker against the official checker's verdicts, task functions served over
in-memory MCP, and grading through scripted runs of the assistant graph."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastmcp
import jsonschema
import pytest
from langchain_core.messages import AIMessage
from typer.testing import CliRunner

from homespun.cli import app
from homespun.engines.testing import ScriptedChatModel, tool_call
from homespun.graphs.runner import run_assistant
from homespun.learning.benchmarks import bfcl_checker
from homespun.learning.benchmarks.bfcl import (
    BFCL_VERSION,
    CATEGORIES,
    RECORDED,
    BfclBenchmark,
    BfclDataError,
    RecordedCall,
    create_task_server,
    data_dir,
    ensure_data,
    input_schema,
    load_entries,
    tool_name,
)
from homespun.learning.benchmarks.registry import UnknownBenchmark, get_benchmark
from homespun.learning.gate import split_tasks
from homespun.learning.tasks import Benchmark, TaskEnvironment
from homespun.spec import Settings, Spec
from homespun.stores.traces import Trace
from tests.conftest import test_bfcl_dir

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "bfcl" / "checker_cases.json"
SIZES = {
    "simple": 400,
    "multiple": 200,
    "parallel": 200,
    "parallel_multiple": 200,
    "irrelevance": 240,
    "live_simple": 258,
    "live_multiple": 1053,
    "live_relevance": 16,
    "live_irrelevance": 884,
}


@pytest.fixture(scope="module")
def bfcl_data() -> Iterator[Path]:
    """The pinned data, downloaded and hash-checked once per machine (.cache/bfcl)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOMESPUN_BFCL_DIR", str(test_bfcl_dir()))
        yield ensure_data(progress=False)


@pytest.fixture(scope="module")
def entries(bfcl_data) -> dict[str, Any]:
    return {e.id: e for c in CATEGORIES for e in load_entries(c, progress=False)}


@pytest.fixture(scope="module")
def bench_all(bfcl_data) -> BfclBenchmark:
    return BfclBenchmark("all", progress=False)


def realise(value: Any) -> Any:
    """The first possible value, recursively (possible dicts map keys to possible values)."""
    if isinstance(value, dict):
        out = {}
        for key, values in value.items():
            chosen = values[0] if isinstance(values, list) and values else values
            if chosen != "":
                out[key] = realise(chosen)
        return out
    if isinstance(value, list):
        return [realise(v) if isinstance(v, dict) else v for v in value]
    return value


def first_answer(entry) -> list[tuple[str, dict[str, Any]]]:
    """(BFCL function name, arguments) of the first possible answer."""
    calls = []
    for expected in entry.possible_answer:
        ((name, params),) = expected.items()
        calls.append((name, {p: realise(v[0]) for p, v in params.items() if v[0] != ""}))
    return calls


def calls_message(calls: list[tuple[str, dict[str, Any]]]) -> AIMessage:
    """One assistant turn making all `calls` at once (BFCL's parallel calls), by tool name."""
    return AIMessage(
        content="",
        tool_calls=[
            {"name": tool_name(name), "args": args, "id": f"call_{i}", "type": "tool_call"}
            for i, (name, args) in enumerate(calls)
        ],
    )


async def run(bench, task, settings, script, spec: Spec | None = None):
    spec = spec or Spec()
    async with bench.environment(task, spec, settings) as env:
        model = ScriptedChatModel(script=script)
        result = await run_assistant(
            spec, settings, task.query, model=model, tools=env.tools, persist=False
        )
    return env, result.trace, model


def task_of(bench, task_id: str):
    return next(t for t in bench.tasks() if t.id == task_id)


# --------------------------------------------------------------------------- checker


def test_our_checker_gives_the_official_verdict_on_every_fixture_case(entries):
    fixture = json.loads(FIXTURE.read_text())
    assert fixture["source"].startswith(f"bfcl-eval=={BFCL_VERSION} ast_checker")
    cases = fixture["cases"]
    assert len(cases) > 3000
    assert FIXTURE.stat().st_size < 1_000_000
    covered = Counter(entries[task_id].category for task_id, *_ in cases)
    assert set(covered) == set(CATEGORIES)
    verdicts = Counter(case[3] for case in cases)
    assert verdicts[True] > 800 and verdicts[False] > 1800  # both sides well exercised
    disagree = []
    for task_id, label, calls, valid, error_type in cases:
        entry = entries[task_id]
        result = bfcl_checker.check(
            list(entry.functions), calls, entry.possible_answer, entry.bfcl_category
        )
        if result.valid != valid or (not valid and error_type and result.error_type != error_type):
            disagree.append((task_id, label, valid, error_type, result))
    assert disagree == []


def test_checker_rules_on_hand_made_calls(entries):
    simple = entries["simple_python_1"]  # math.factorial(number=5)
    functions, answer = list(simple.functions), simple.possible_answer

    def ok(*calls):
        return bfcl_checker.check(functions, list(calls), answer, "simple_python").valid

    assert ok({"math.factorial": {"number": 5}})
    assert not ok({"math_factorial": {"number": 5}})  # graded on BFCL's own name
    assert not ok({"math.factorial": {"number": 5.0}})  # a float is no integer
    assert not ok({"math.factorial": {"number": True}})  # nor is a bool
    assert not ok({"math.factorial": {"number": 5, "extra": 1}})
    assert not ok({"math.factorial": {}})
    assert not ok()

    area = entries["simple_python_0"]  # base 10, height 5, unit "units" or left out
    assert bfcl_checker.check(
        list(area.functions),
        [{"calculate_triangle_area": {"base": 10, "height": 5, "unit": " UNITS."}}],
        area.possible_answer,
        "simple_python",
    ).valid
    assert bfcl_checker.standardize_string("April 1, 2024") == "april12024"
    floats = {
        "name": "f",
        "parameters": {"properties": {"x": {"type": "float"}}, "required": ["x"]},
    }
    assert bfcl_checker.check(
        [floats], [{"f": {"x": 2}}], [{"f": {"x": [2.0]}}], "simple_python"
    ).valid  # int -> float, as Python widens
    assert bfcl_checker.check_relevance([], "irrelevance").valid
    assert not bfcl_checker.check_relevance([{"f": {}}], "live_irrelevance").valid
    assert bfcl_checker.check_relevance([{"f": {}}], "live_relevance").valid
    assert not bfcl_checker.check_relevance([], "live_relevance").valid


# --------------------------------------------------------------------------- tasks


def test_categories_tasks_and_ids(bench_all):
    assert isinstance(bench_all, Benchmark)
    assert bench_all.name == "bfcl:all" and bench_all.version == f"bfcl-eval-{BFCL_VERSION}/r1"
    tasks = bench_all.tasks()
    assert Counter(t.category for t in tasks) == SIZES
    assert len({t.id for t in tasks}) == len(tasks) == sum(SIZES.values())
    simple = get_benchmark("bfcl:simple")
    assert [t.id for t in simple.tasks()] == [f"simple_python_{i}" for i in range(400)]
    first = simple.tasks()[0]
    assert first.query == (
        "Find the area of a triangle with a base of 10 units and height of 5 units."
    )
    assert (first.category, first.suite, first.gold) == ("simple", "bfcl", None)
    assert first.metadata == {
        "bfcl_category": "simple_python",
        "functions": ["calculate_triangle_area"],
        "expected_calls": 1,
    }
    assert "expected_calls" not in task_of(bench_all, "irrelevance_0").metadata


def test_the_split_is_stable(bench_all):
    simple = BfclBenchmark("simple", progress=False)
    search, held = split_tasks(simple.tasks(), seed=0, benchmark="bfcl:simple")
    again, _ = split_tasks(
        BfclBenchmark("simple", progress=False).tasks(), seed=0, benchmark="bfcl:simple"
    )
    assert [t.id for t in search] == [t.id for t in again]
    assert (len(search), len(held)) == (200, 200)
    assert sorted(t.id for t in search)[:3] == [
        "simple_python_0",
        "simple_python_1",
        "simple_python_101",
    ]
    search, held = split_tasks(bench_all.tasks(), seed=0, benchmark="bfcl:all")
    by_category = Counter(t.category for t in search)
    assert by_category == {c: n // 2 for c, n in SIZES.items()}
    digest = hashlib.sha256("\n".join(sorted(t.id for t in search)).encode()).hexdigest()
    assert digest[:16] == "4c8329459ec992f2"


def test_a_system_message_and_earlier_turns_are_part_of_the_query(bench_all):
    task = task_of(bench_all, "live_irrelevance_125-11-0")
    system, rest = task.query.split(
        "\n\nEarlier in this conversation:\nUser: 如何安装mbox?\nAssistant: ", 1
    )
    assert system.startswith("Don't make assumptions about what values to plug into")
    assert rest.endswith("\n\n回答不正确，直接发起oncall")
    task = task_of(bench_all, "live_simple_66-30-0")
    assert task.query.startswith("The Requirement Extractor is designed to interpret")
    assert "\n\n" in task.query and "Earlier in this conversation" not in task.query


def test_unknown_category_is_an_error(bfcl_data):
    with pytest.raises(UnknownBenchmark, match="bfcl:all"):
        get_benchmark("bfcl:simple_java")
    with pytest.raises(UnknownBenchmark, match="'bfcl:CATEGORY'"):
        get_benchmark("bfc:simple")
    with pytest.raises(ValueError, match="available: simple, multiple"):
        BfclBenchmark("exec_simple", progress=False)


# --------------------------------------------------------------------------- tools


def test_function_docs_become_json_schema():
    schema = input_schema(
        {
            "type": "dict",
            "required": ["a"],
            "properties": {
                "a": {"type": "float", "description": "A."},
                "b": {"type": "tuple", "items": {"type": "integer"}, "description": "B."},
                "c": {"type": "dict", "properties": {"d": {"type": "any", "description": "D."}}},
                "e": {
                    "type": "array",
                    "items": {"type": "dict", "properties": {"f": {"type": "boolean"}}},
                },
                "g": {"description": "no type"},
                "h": {"type": "string", "enum": ["x", "y"], "default": "x"},
            },
        }
    )
    assert schema == {
        "type": "object",
        "required": ["a"],
        "properties": {
            "a": {
                "type": "number",
                "format": "float",
                "description": "A. This is a float type value.",
            },
            "b": {"type": "array", "items": {"type": "integer"}, "description": "B."},
            "c": {"type": "object", "properties": {"d": {"type": "string", "description": "D."}}},
            "e": {
                "type": "array",
                "items": {"type": "object", "properties": {"f": {"type": "boolean"}}},
            },
            "g": {"type": "string", "description": "no type"},
            "h": {"type": "string", "enum": ["x", "y"], "default": "x"},
        },
    }


def test_every_function_of_every_category_is_a_valid_tool(entries):
    json_types = {"object", "array", "string", "integer", "number", "boolean"}
    seen_types: set[str] = set()

    def walk(schema):
        if "type" in schema:
            seen_types.add(schema["type"])
        for sub in (schema.get("properties") or {}).values():
            walk(sub)
        if isinstance(schema.get("items"), dict):
            walk(schema["items"])

    meta = jsonschema.Draft7Validator(jsonschema.Draft7Validator.META_SCHEMA)
    checked: set[str] = set()
    for entry in entries.values():
        names = [tool_name(f["name"]) for f in entry.functions]
        assert len(set(names)) == len(names), entry.id
        for function in entry.functions:
            assert all(c.isalnum() or c in "_-" for c in tool_name(function["name"]))
            schema = input_schema(function["parameters"])
            key = json.dumps(schema, sort_keys=True)
            if key not in checked:  # live categories repeat their functions
                checked.add(key)
                meta.validate(schema)
                walk(schema)
    assert seen_types == json_types


async def test_the_server_records_calls_made_through_a_real_mcp_client(entries):
    entry = entries["multiple_0"]  # triangle_properties.get among others
    record: list[RecordedCall] = []
    server = create_task_server(entry.functions, record)
    async with fastmcp.Client(server) as client:
        tools = {t.name: t for t in await client.list_tools()}
        assert set(tools) == {tool_name(f["name"]) for f in entry.functions}
        assert "triangle_properties_get" in tools
        doc = next(f for f in entry.functions if f["name"] == "triangle_properties.get")
        served = tools["triangle_properties_get"]
        assert served.description == doc["description"] + (
            " Note that the provided function is in Python 3 syntax."
        )
        assert served.inputSchema == input_schema(doc["parameters"])
        result = await client.call_tool(
            "triangle_properties_get", {"side1": 5, "side2": 4.0, "side3": 3}
        )
        assert result.content[0].text == RECORDED == "ok: call recorded"
        await client.call_tool("triangle_properties_get", {"side1": "five"})
    assert record == [
        RecordedCall(
            "triangle_properties_get",
            "triangle_properties.get",
            {"side1": 5, "side2": 4.0, "side3": 3},
        ),
        RecordedCall("triangle_properties_get", "triangle_properties.get", {"side1": "five"}),
    ]
    assert type(record[0].arguments["side2"]) is float  # JSON types survive the transport


def test_names_that_would_collide_are_refused():
    functions = [
        {"name": n, "description": "", "parameters": {"properties": {}}} for n in ("a.b", "a_b")
    ]
    with pytest.raises(ValueError, match="both be served as 'a_b'"):
        create_task_server(functions, [])


# --------------------------------------------------------------------------- grading


CORRECT_AND_WRONG = {
    "simple": "simple_python_1",
    "multiple": "multiple_0",
    "parallel": "parallel_0",
    "parallel_multiple": "parallel_multiple_0",
    "live_simple": "live_simple_0-0-0",
    "live_multiple": "live_multiple_0-0-0",
}


@pytest.mark.parametrize("category", list(CORRECT_AND_WRONG))
async def test_a_correct_call_passes_and_a_wrong_one_fails(bench_all, entries, settings, category):
    task = task_of(bench_all, CORRECT_AND_WRONG[category])
    assert task.category == category
    calls = first_answer(entries[task.id])
    env, trace, model = await run(bench_all, task, settings, [calls_message(calls), "Done."])
    assert isinstance(env, TaskEnvironment)
    assert trace.status == "ok", trace.error
    assert [c.result for c in trace.tool_calls] == [RECORDED] * len(calls)
    assert [c.server for c in trace.tool_calls] == ["bfcl"] * len(calls)
    assert [(c.function, c.arguments) for c in env.record] == calls
    assert set(model.calls[0]["tools"]) == {
        tool_name(f["name"]) for f in entries[task.id].functions
    }
    grade = env.grade(trace)
    assert (grade.success, grade.score) == (True, 1.0), grade.reason

    name, args = calls[-1]
    param = sorted(args)[0]
    wrong = [*calls[:-1], (name, {**args, param: "certainly not this"})]
    env, trace, _ = await run(bench_all, task, settings, [calls_message(wrong), "Done."])
    grade = env.grade(trace)
    assert (grade.success, grade.score) == (False, 0.0)
    assert grade.reason.startswith("BFCL check failed:")

    env, trace, _ = await run(bench_all, task, settings, ["I cannot help with that."])
    assert trace.status == "ok" and env.record == []
    assert not env.grade(trace).success


@pytest.mark.parametrize("task_id", ["irrelevance_0", "live_irrelevance_0-0-0"])
async def test_irrelevance_passes_without_a_call_and_fails_with_one(bench_all, settings, task_id):
    task = task_of(bench_all, task_id)
    env, trace, _ = await run(bench_all, task, settings, ["None of my tools can do that."])
    grade = env.grade(trace)
    assert (grade.success, grade.score) == (True, 1.0), grade.reason
    served = env.tools[0].name
    env, trace, _ = await run(bench_all, task, settings, [tool_call(served, {}), "Done."])
    assert len(env.record) == 1
    grade = env.grade(trace)
    assert (grade.success, grade.score) == (False, 0.0)
    assert "irrelevance_error" in grade.reason


async def test_live_relevance_passes_with_any_call_and_fails_without(bench_all, settings):
    task = task_of(bench_all, "live_relevance_0-0-0")
    async with bench_all.environment(task, Spec(), settings) as env:
        served = env.tools[0].name
    env, trace, _ = await run(
        bench_all, task, settings, [tool_call(served, {"prompt": "a masked woman"}), "Here."]
    )
    assert env.grade(trace).success, env.grade(trace).reason
    env, trace, _ = await run(bench_all, task, settings, ["I would rather not."])
    assert not env.grade(trace).success


async def test_dotted_names_round_trip(bench_all, settings):
    task = task_of(bench_all, "simple_python_1")  # BFCL's function is math.factorial
    env, trace, model = await run(
        bench_all, task, settings, [tool_call("math_factorial", {"number": 5}), "120"]
    )
    assert model.calls[0]["tools"] == ["math_factorial"]
    assert env.names == {"math_factorial": "math.factorial"}
    assert env.record == [RecordedCall("math_factorial", "math.factorial", {"number": 5})]
    assert env.calls(trace) == [{"math.factorial": {"number": 5}}]
    assert env.grade(trace).success

    # A model that calls BFCL's dotted name gets an unknown-tool error; the call still counts
    # (BFCL grades every call a model emits), under the name it used.
    env, trace, _ = await run(
        bench_all,
        task,
        settings,
        [
            tool_call("math.factorial", {"number": 5}),
            tool_call("math_factorial", {"number": 5}),
            "120",
        ],
    )
    assert "unknown tool" in trace.tool_calls[0].error
    assert env.calls(trace) == [
        {"math.factorial": {"number": 5}},
        {"math.factorial": {"number": 5}},
    ]
    grade = env.grade(trace)
    assert not grade.success and "wrong_count" in grade.reason


async def test_grading_reads_the_servers_record_not_the_answer(bench_all, settings):
    task = task_of(bench_all, "simple_python_1")
    async with bench_all.environment(task, Spec(), settings) as env:
        await env.tools[0].ainvoke({"number": 5})
    trace = Trace(
        id="t",
        created_at=0.0,
        query=task.query,
        spec_hash="h",
        thread_id="th",
        loop="react",
        model="m",
        backend="b",
        status="ok",
        final_answer="math.factorial(number=6)",
    )
    assert env.grade(trace).success  # the record holds the right call; the text is ignored

    trace.status, trace.error = "error", "ran out of replies"
    grade = env.grade(trace)
    assert (grade.success, grade.reason) == (False, "run failed: ran out of replies")


async def test_a_hallucinated_tool_fails_an_irrelevance_task(bench_all, settings):
    task = task_of(bench_all, "irrelevance_0")
    env, trace, _ = await run(
        bench_all, task, settings, [tool_call("calculate_triangle_area", {"base": 10}), "Done."]
    )
    assert env.record == [] and "unknown tool" in trace.tool_calls[0].error
    assert not env.grade(trace).success


# --------------------------------------------------------------------------- data


def _offline(monkeypatch, tmp_path: Path, links: Path) -> None:
    monkeypatch.setenv("HOMESPUN_BFCL_DIR", str(tmp_path / "bfcl"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no index or mirror from pip.conf
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    links.mkdir(exist_ok=True)


def test_data_that_cannot_be_fetched_is_a_clear_one_line_error(monkeypatch, tmp_path, capsys, home):
    _offline(monkeypatch, tmp_path, tmp_path / "nothing-here")
    with pytest.raises(BfclDataError) as caught:
        BfclBenchmark("simple", Settings())
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        "cannot get the BFCL data: `pip download --no-deps bfcl-eval==2026.3.23` failed ("
    )
    assert "No matching distribution" in message or "Could not find" in message
    assert str(tmp_path / "bfcl" / f"bfcl-{BFCL_VERSION}") in message
    assert "downloading the BFCL v4 data: bfcl-eval==2026.3.23 from PyPI" in (
        capsys.readouterr().err
    )
    assert list((tmp_path / "bfcl").iterdir()) == []  # no leftovers

    shown = CliRunner().invoke(app, ["learning", "benchmark", "show", "bfcl:simple"])
    assert shown.exit_code == 1
    assert "cannot get the BFCL data" in shown.output and "Traceback" not in shown.output


def test_a_wheel_with_another_hash_is_not_used(monkeypatch, tmp_path):
    links = tmp_path / "links"
    _offline(monkeypatch, tmp_path, links)
    wheel = links / f"bfcl_eval-{BFCL_VERSION}-py3-none-any.whl"
    info = f"bfcl_eval-{BFCL_VERSION}.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(
            f"{info}/METADATA", f"Metadata-Version: 2.1\nName: bfcl-eval\nVersion: {BFCL_VERSION}\n"
        )
        archive.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        archive.writestr(f"{info}/RECORD", "")
    with pytest.raises(BfclDataError, match="fails its hash check"):
        ensure_data(Settings(), progress=False)
    assert not data_dir().exists()


def test_the_data_is_the_pinned_wheels(bfcl_data):
    source = json.loads((bfcl_data / "SOURCE.json").read_text())
    assert source["requirement"] == "bfcl-eval==2026.3.23"
    assert source["wheel_sha256"] == (
        "3bb6dfa5f0c68ad403c9ec50b00db2bb3b4cc9b38ab1ff33f48fe30d853d3a0a"
    )
    assert len(source["files"]) == 15  # 9 question files, 6 possible-answer files
    for path, meta in source["files"].items():
        data = (bfcl_data / path).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (meta["bytes"], meta["sha256"])
    assert ensure_data(progress=False) == bfcl_data  # present: nothing fetched again
