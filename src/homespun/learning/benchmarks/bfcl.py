"""BFCL (Berkeley Function Calling Leaderboard v4) categories as homespun benchmarks.

BFCL (https://github.com/ShishirPatil/gorilla, Apache-2.0) asks a model one question with a
few function docs and grades the calls it makes against a list of possible answers. This
adapter serves the single-turn Python categories:

    bfcl:simple  bfcl:multiple  bfcl:parallel  bfcl:parallel_multiple  bfcl:irrelevance
    bfcl:live_simple  bfcl:live_multiple  bfcl:live_relevance  bfcl:live_irrelevance
    bfcl:all  (all of the above; each task keeps its own category)

**Data.** The questions and possible answers ride inside the `bfcl-eval` wheel on PyPI
(`bfcl_eval/data/BFCL_v4_*.json` and `.../possible_answer/`, JSON lines). The wheel is
fetched once with `pip download --no-deps` (never installed: its dependencies conflict with
homespun's), checked against a pinned sha256, and only the data files of these categories are
extracted into `Settings().benchmarks_dir / "bfcl-2026.3.23"`, or under `$HOMESPUN_BFCL_DIR`
when that is set (the test suite points it at the repository's `.cache/`).

**Tools.** Every task run gets a fresh in-memory MCP server whose tools are the task's
functions: BFCL's docs converted to JSON Schema the way BFCL does for function-calling models
(dict→object, float→number, tuple→array, any→string, a missing type→string, the Python hint
appended to each description), names with dots served with underscores (`math.factorial` is
the tool `math_factorial`; mapped back for grading, as BFCL does). A tool only records its
call and answers "ok: call recorded"; nothing in it hints at the answer.

**Grading** happens in the harness on the calls the server recorded, plus any call the
assistant made that never reached it (an unknown tool name, a call cut by the turn limit:
BFCL counts every call a model emits). `bfcl_checker` applies BFCL's AST rules;
irrelevance categories pass iff no call was made, live_relevance iff at least one was. A run
that failed is a failed task. The question's messages become the query: a system message
goes first, earlier turns of the conversation are quoted, the last user message ends it.

Categories: `Task.category` is the name after `bfcl:` (BFCL's `simple_python` is `simple`).
Task ids are BFCL's ids, so the gate's split (sha256 of ids) is stable across releases.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import fastmcp
from fastmcp.tools import Tool, ToolResult
from langchain_core.tools import BaseTool
from pydantic import PrivateAttr

from homespun.learning.benchmarks import bfcl_checker
from homespun.learning.tasks import Grade, Task
from homespun.spec import Settings, Spec
from homespun.stores.traces import Trace

__all__ = [
    "BFCL_VERSION",
    "CATEGORIES",
    "DATA_DIR_ENV",
    "SERVER_NAME",
    "WHEEL_SHA256",
    "BfclBenchmark",
    "BfclDataError",
    "BfclEntry",
    "BfclEnvironment",
    "RecordedCall",
    "bfcl_name",
    "create_task_server",
    "data_dir",
    "ensure_data",
    "input_schema",
    "load_entries",
    "tool_name",
]

BFCL_VERSION = "2026.3.23"
REQUIREMENT = f"bfcl-eval=={BFCL_VERSION}"
WHEEL_SHA256 = "3bb6dfa5f0c68ad403c9ec50b00db2bb3b4cc9b38ab1ff33f48fe30d853d3a0a"
WHEEL_BYTES = 1_925_664
DATA_DIR_ENV = "HOMESPUN_BFCL_DIR"
SERVER_NAME = "bfcl"
RECORDED = "ok: call recorded"

# Bumped when this adapter changes what a run sees or how it is graded (tool schemas, query
# rendering, checker), so cached outcomes of the old adapter are not reused.
_ADAPTER_REVISION = 1

CATEGORIES: dict[str, str] = {
    "simple": "simple_python",
    "multiple": "multiple",
    "parallel": "parallel",
    "parallel_multiple": "parallel_multiple",
    "irrelevance": "irrelevance",
    "live_simple": "live_simple",
    "live_multiple": "live_multiple",
    "live_relevance": "live_relevance",
    "live_irrelevance": "live_irrelevance",
}
"""homespun category (the name after `bfcl:`) -> BFCL's category."""

_SOURCE = "SOURCE.json"  # written last: a folder without it is an unfinished extraction
_PYTHON_HINT = " Note that the provided function is in Python 3 syntax."


class BfclDataError(RuntimeError):
    """The BFCL data could not be fetched or is not what was pinned (message: one line)."""


# --------------------------------------------------------------------------- data


def data_dir(settings: Settings | None = None) -> Path:
    """Where the BFCL data of the pinned version lives (may not exist yet)."""
    override = os.environ.get(DATA_DIR_ENV)
    base = Path(override).expanduser() if override else (settings or Settings()).benchmarks_dir
    return base / f"bfcl-{BFCL_VERSION}"


def _members() -> dict[str, str]:
    """Wheel member -> path under the data folder."""
    members = {}
    for bfcl in CATEGORIES.values():
        members[f"bfcl_eval/data/BFCL_v4_{bfcl}.json"] = f"BFCL_v4_{bfcl}.json"
        if bfcl not in bfcl_checker.RELEVANCE_CATEGORIES:
            members[f"bfcl_eval/data/possible_answer/BFCL_v4_{bfcl}.json"] = (
                f"possible_answer/BFCL_v4_{bfcl}.json"
            )
    return members


def _is_complete(folder: Path) -> bool:
    try:
        source = json.loads((folder / _SOURCE).read_text())
    except (OSError, ValueError):
        return False
    return source.get("wheel_sha256") == WHEEL_SHA256 and all(
        (folder / path).is_file() for path in _members().values()
    )


def ensure_data(settings: Settings | None = None, *, progress: bool = True) -> Path:
    """The BFCL data folder, downloading and extracting the pinned wheel the first time.

    Raises BfclDataError (one line) when the wheel cannot be fetched or fails its hash.
    """
    target = data_dir(settings)
    if _is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".bfcl-", dir=target.parent))
    try:
        if progress:
            print(
                f"downloading the BFCL v4 data: {REQUIREMENT} from PyPI "
                f"({WHEEL_BYTES / 1e6:.1f} MB wheel, Apache-2.0; not installed) into {target}",
                file=sys.stderr,
                flush=True,
            )
        wheel = _pip_download(work / "wheel", target)
        digest = _sha256(wheel)
        if digest != WHEEL_SHA256:
            raise BfclDataError(
                f"{wheel.name} fails its hash check (expected sha256 "
                f"{WHEEL_SHA256}, got {digest}); not used"
            )
        staged = work / "data"
        _extract(wheel, staged)
        if target.exists():  # an unfinished or outdated extraction
            shutil.rmtree(target)
        try:
            os.rename(staged, target)
        except OSError:
            if not _is_complete(target):  # another process finished first: keep its copy
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _pip_download(dest: Path, target: Path) -> Path:
    dest.mkdir(parents=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(dest),
        REQUIREMENT,
    ]
    env = {**os.environ, "PIP_NO_INPUT": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wheels = sorted(dest.glob("bfcl_eval-*.whl"))
    if result.returncode != 0 or not wheels:
        raise BfclDataError(
            f"cannot get the BFCL data: `pip download --no-deps {REQUIREMENT}` failed "
            f"({_pip_error(result.stderr or result.stdout)}); it needs PyPI or a mirror once, "
            f"then the data is kept in {target}"
        )
    return wheels[0]


def _pip_error(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    if "No module named pip" in output:
        return f"{sys.executable} has no pip"
    line = (errors or lines or ["no output"])[-1]
    return line.removeprefix("ERROR:").strip()


def _extract(wheel: Path, out: Path) -> None:
    out.mkdir(parents=True)
    files = {}
    with zipfile.ZipFile(wheel) as archive:
        for member, path in _members().items():
            try:
                data = archive.read(member)
            except KeyError:
                raise BfclDataError(f"{wheel.name} has no member {member!r}") from None
            (out / path).parent.mkdir(parents=True, exist_ok=True)
            (out / path).write_bytes(data)
            files[path] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    source = {
        "requirement": REQUIREMENT,
        "wheel": wheel.name,
        "wheel_sha256": WHEEL_SHA256,
        "license": "Apache-2.0",
        "files": files,
    }
    (out / _SOURCE).write_text(json.dumps(source, indent=1) + "\n")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class BfclEntry:
    """One BFCL question with its function docs and (AST categories) possible answer."""

    id: str
    category: str  # homespun's name (e.g. "simple")
    bfcl_category: str  # BFCL's name (e.g. "simple_python")
    messages: tuple[Mapping[str, str], ...]
    functions: tuple[Mapping[str, Any], ...]
    possible_answer: tuple[Mapping[str, Any], ...] | None


def _lines(path: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


@cache
def _entries(folder: str, category: str) -> tuple[BfclEntry, ...]:
    bfcl = CATEGORIES[category]
    root = Path(folder)
    answers: dict[str, Any] = {}
    if bfcl not in bfcl_checker.RELEVANCE_CATEGORIES:
        answers = {
            a["id"]: a["ground_truth"]
            for a in _lines(root / "possible_answer" / f"BFCL_v4_{bfcl}.json")
        }
    entries = []
    for row in _lines(root / f"BFCL_v4_{bfcl}.json"):
        (turn,) = row["question"]  # these categories are single-turn
        answer = answers.get(row["id"])
        if answers and answer is None:
            raise BfclDataError(f"BFCL {bfcl}: no possible answer for {row['id']}")
        entries.append(
            BfclEntry(
                id=row["id"],
                category=category,
                bfcl_category=bfcl,
                messages=tuple(turn),
                functions=tuple(row["function"]),
                possible_answer=tuple(answer) if answer is not None else None,
            )
        )
    return tuple(entries)


def load_entries(
    category: str, settings: Settings | None = None, *, progress: bool = True
) -> tuple[BfclEntry, ...]:
    """The entries of a homespun BFCL category, fetching the data first if needed."""
    if category not in CATEGORIES:
        raise ValueError(
            f"unknown BFCL category {category!r}; available: {', '.join(CATEGORIES)}, all"
        )
    return _entries(str(ensure_data(settings, progress=progress)), category)


# --------------------------------------------------------------------------- tools

_OPENAPI_TYPES = {
    "integer": "integer",
    "number": "number",
    "float": "number",
    "string": "string",
    "boolean": "boolean",
    "bool": "boolean",
    "array": "array",
    "list": "array",
    "dict": "object",
    "object": "object",
    "tuple": "array",
    "any": "string",
}


def tool_name(name: str) -> str:
    """The MCP tool name of a BFCL function: dots are not valid in many clients' names."""
    return name.replace(".", "_")


def bfcl_name(tool: str, names: Mapping[str, str]) -> str:
    """A called tool's BFCL function name (`names`: tool name -> BFCL name); an unknown tool
    keeps its name."""
    return names.get(tool, tool)


def _name_map(functions: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    names: dict[str, str] = {}
    for function in functions:
        served = tool_name(function["name"])
        if served in names:
            raise ValueError(
                f"BFCL functions {names[served]!r} and {function['name']!r} "
                f"would both be served as {served!r}"
            )
        names[served] = function["name"]
    return names


def _properties(properties: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, doc in properties.items():
        schema = dict(doc)
        kind = schema.get("type")
        if kind == "float":
            schema["format"] = "float"
            schema["description"] = schema.get("description", "") + " This is a float type value."
        schema["type"] = _OPENAPI_TYPES.get(kind, "string") if kind else "string"
        if schema["type"] in ("array", "object"):
            if "properties" in schema:
                schema["properties"] = _properties(schema["properties"])
            elif isinstance(schema.get("items"), Mapping):
                schema["items"] = _items(schema["items"])
        out[key] = schema
    return out


def _items(items: Mapping[str, Any]) -> dict[str, Any]:
    schema = dict(items)
    schema["type"] = _OPENAPI_TYPES.get(schema.get("type", ""), "string")
    if schema["type"] == "array" and isinstance(schema.get("items"), Mapping):
        schema["items"] = _items(schema["items"])
    elif schema["type"] == "object" and "properties" in schema:
        schema["properties"] = _properties(schema["properties"])
    return schema


def input_schema(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """JSON Schema for a BFCL function's `parameters`, converted as BFCL converts them for
    function-calling models (its GORILLA_TO_OPENAPI table)."""
    schema = copy.deepcopy(dict(parameters))
    schema["type"] = "object"
    schema["properties"] = _properties(schema.get("properties", {}))
    return schema


@dataclass(frozen=True)
class RecordedCall:
    """A call as the task's server received it."""

    tool: str  # the MCP tool name
    function: str  # BFCL's function name
    arguments: dict[str, Any]


class _RecordingTool(Tool):
    """One BFCL function: records the call, answers neutrally."""

    _function: str = PrivateAttr(default="")
    _record: Any = PrivateAttr(default=None)

    def __init__(self, *, function: str, record: list[RecordedCall], **kwargs: Any):
        super().__init__(**kwargs)
        self._function = function
        self._record = record

    async def run(self, arguments: dict[str, Any]) -> ToolResult:
        self._record.append(
            RecordedCall(self.name, self._function, copy.deepcopy(dict(arguments or {})))
        )
        return ToolResult(content=RECORDED)


def create_task_server(
    functions: Sequence[Mapping[str, Any]], record: list[RecordedCall]
) -> fastmcp.FastMCP:
    """A FastMCP server offering `functions` (BFCL docs) as tools; every call is appended
    to `record`."""
    server = fastmcp.FastMCP(
        SERVER_NAME,
        instructions="Functions you may call to answer the user's request. Call one only "
        "when it fits the request.",
    )
    for served, original in _name_map(functions).items():
        doc = next(f for f in functions if f["name"] == original)
        server.add_tool(
            _RecordingTool(
                function=original,
                record=record,
                name=served,
                description=(doc.get("description") or "") + _PYTHON_HINT,
                parameters=input_schema(doc.get("parameters") or {}),
            )
        )
    return server


# --------------------------------------------------------------------------- benchmark


def _query(messages: Sequence[Mapping[str, str]]) -> str:
    system = [m["content"].strip() for m in messages if m["role"] == "system"]
    talk = [m for m in messages if m["role"] != "system"]
    parts = list(system)
    if len(talk) > 1:
        parts.append(
            "Earlier in this conversation:\n"
            + "\n".join(f"{m['role'].capitalize()}: {m['content'].strip()}" for m in talk[:-1])
        )
    if talk:
        parts.append(talk[-1]["content"].strip())
    return "\n\n".join(p for p in parts if p)


def _task(entry: BfclEntry) -> Task:
    metadata: dict[str, Any] = {
        "bfcl_category": entry.bfcl_category,
        "functions": [f["name"] for f in entry.functions],
    }
    if entry.possible_answer is not None:
        metadata["expected_calls"] = len(entry.possible_answer)
    return Task(
        id=entry.id,
        query=_query(entry.messages),
        category=entry.category,
        suite="bfcl",
        metadata=metadata,
    )


@dataclass
class BfclEnvironment:
    """One task run: the task's functions as recording tools, graded by BFCL's rules."""

    tools: list[BaseTool]
    entry: BfclEntry
    names: dict[str, str]  # tool name -> BFCL function name
    record: list[RecordedCall] = field(default_factory=list)

    def calls(self, trace: Trace) -> list[dict[str, dict[str, Any]]]:
        """The run's calls as BFCL writes them ({function: {argument: value}}): those the
        server recorded, then those that never reached it."""
        calls = [{c.function: dict(c.arguments)} for c in self.record]
        delivered = Counter(c.tool for c in self.record)
        attempted = Counter(c.name for c in trace.tool_calls)
        surplus = {
            name: n - delivered[name] for name, n in attempted.items() if n > delivered[name]
        }
        for call in trace.tool_calls:
            if call.error is not None and surplus.get(call.name, 0) > 0:
                surplus[call.name] -= 1
                calls.append({bfcl_name(call.name, self.names): dict(call.arguments or {})})
        return calls

    def grade(self, trace: Trace) -> Grade:
        if trace.status != "ok":
            return Grade(False, 0.0, f"run failed: {trace.error or trace.status}")
        result = bfcl_checker.check(
            list(self.entry.functions),
            self.calls(trace),
            self.entry.possible_answer,
            self.entry.bfcl_category,
        )
        if result.valid:
            return Grade(True, 1.0, "BFCL check passed")
        return Grade(False, 0.0, f"BFCL check failed: {result.reason}")


class BfclBenchmark:
    """One BFCL category, or `all` of them (a `homespun.learning.tasks.Benchmark`).

    The data is fetched when the benchmark is made, so a missing download fails early with
    BfclDataError.
    """

    def __init__(self, category: str, settings: Settings | None = None, *, progress: bool = True):
        if category != "all" and category not in CATEGORIES:
            raise ValueError(
                f"unknown BFCL category {category!r}; available: {', '.join(CATEGORIES)}, all"
            )
        self.category = category
        self.name = f"bfcl:{category}"
        self.version = f"bfcl-eval-{BFCL_VERSION}/r{_ADAPTER_REVISION}"
        categories = list(CATEGORIES) if category == "all" else [category]
        self._entries = {
            e.id: e for c in categories for e in load_entries(c, settings, progress=progress)
        }

    def __repr__(self) -> str:
        return f"BfclBenchmark({self.category!r})"

    def tasks(self) -> list[Task]:
        return [_task(e) for e in self._entries.values()]

    def entry(self, task: Task) -> BfclEntry:
        try:
            return self._entries[task.id]
        except KeyError:
            raise ValueError(f"{self.name} has no task {task.id!r}") from None

    @asynccontextmanager
    async def environment(
        self, task: Task, spec: Spec, settings: Settings
    ) -> AsyncIterator[BfclEnvironment]:
        from langchain_mcp_adapters.tools import load_mcp_tools

        entry = self.entry(task)
        record: list[RecordedCall] = []
        server = create_task_server(entry.functions, record)
        async with fastmcp.Client(server) as client:
            offered = await load_mcp_tools(client.session, server_name=SERVER_NAME)
            tools = [
                t.model_copy(update={"metadata": {**(t.metadata or {}), "mcp_server": SERVER_NAME}})
                for t in offered
            ]
            yield BfclEnvironment(
                tools=tools, entry=entry, names=_name_map(entry.functions), record=record
            )
