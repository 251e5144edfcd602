"""LangGraph Studio's server runs our graphs from the README's command, offline.

Starts `langgraph dev` on langgraph.json from the repo root, as a user would, and runs the
assistant graph through the LangGraph SDK: the embedded model, MCP tools on per-call sessions,
and the server's own checkpointer. `langgraph dev` also rejects blocking calls on its event
loop, so a factory that blocks fails here the way it would fail in Studio.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from homespun.home import init_home

pytest.importorskip("langgraph_api")
from langgraph_sdk import get_client  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 90
RUN_TIMEOUT_S = 120

# Everything that would make the server reach the internet, unset or switched off: CLI
# analytics, the PyPI version check, LangSmith tracing (and its host lookup for the Studio
# URL), the license/metadata beacon, OTLP and Datadog exporters. --no-browser keeps it from
# opening Studio's web page.
_OFFLINE_ENV = {
    "LANGGRAPH_CLI_NO_ANALYTICS": "1",
    "LANGGRAPH_NO_VERSION_CHECK": "true",
    "LANGSMITH_TRACING": "false",
    "LANGCHAIN_TRACING_V2": "false",
    "LANGSMITH_TRACING_V2": "false",
}
_UNSET_PREFIXES = ("LANGSMITH_", "LANGCHAIN_", "OTEL_", "LSD_DD_", "CUSTOM_LSD_DD_")
_UNSET = ("LANGGRAPH_CLOUD_LICENSE_KEY", "LANGGRAPH_API_URL", "HOMESPUN_SPEC")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_env() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(_UNSET_PREFIXES) and k not in _UNSET
    }
    env.update(_OFFLINE_ENV)
    # The venv this test runs in holds the `langgraph` CLI and an editable homespun.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _stop(proc: subprocess.Popen) -> None:
    """Terminate the server and anything it started (its own process group)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is left
    except ProcessLookupError:
        pass
    proc.wait(timeout=15)


async def _wait_until_up(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    async with httpx.AsyncClient(timeout=2, trust_env=False) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"langgraph dev exited with {proc.returncode}")
            try:
                if (await http.get(f"{url}/ok")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.5)
    pytest.fail(f"langgraph dev did not answer /ok in {STARTUP_TIMEOUT_S} s")


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_langgraph_dev_runs_the_assistant_with_mcp_tools(settings, model_path, tmp_path):
    init_home(settings)
    langgraph = shutil.which("langgraph", path=_server_env()["PATH"])
    assert langgraph, "the `langgraph` CLI is missing: pip install 'homespun[studio]'"

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "langgraph-dev.log"
    # The in-memory runtime keeps its state in ./.langgraph_api; leave a user's own alone.
    state_dir = REPO / ".langgraph_api"
    had_state_dir = state_dir.exists()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                langgraph,
                "dev",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-browser",
                "--no-reload",
            ],
            cwd=REPO,
            env=_server_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    started = time.monotonic()
    try:
        await _wait_until_up(url, proc, log)
        print(f"langgraph dev answered /ok after {time.monotonic() - started:.1f} s")
        client = get_client(url=url)

        assistants = {a["graph_id"]: a for a in await client.assistants.search()}
        assert {"assistant", "search"} <= set(assistants), assistants
        # Drawing a graph builds it through its factory inside the server.
        search_nodes = {
            n["id"]
            for n in (await client.assistants.get_graph(assistants["search"]["assistant_id"]))[
                "nodes"
            ]
        }
        assert {"diagnose", "plan", "execute", "gate"} <= search_nodes
        # Studio's form for a search run's context: the JSON its factory's graph takes.
        search_context = (
            await client.assistants.get_schemas(assistants["search"]["assistant_id"])
        )["context_schema"]
        assert {"benchmark", "proposer"} <= set(search_context["properties"]), search_context

        thread = await client.threads.create()
        final = await asyncio.wait_for(
            client.runs.wait(
                thread["thread_id"],
                "assistant",
                input={
                    "messages": [{"role": "user", "content": "What is 2 + 2? Use the calculator."}],
                    "turns": 0,
                },
                raise_error=True,  # a run that failed in the server raises here
            ),
            RUN_TIMEOUT_S,
        )

        print(
            f"assistant run done after {time.monotonic() - started:.1f} s, "
            f"{final.get('turns')} turns"
        )
        messages = final["messages"]
        assert messages[-1]["type"] == "ai", messages[-1]
        assert not messages[-1].get("tool_calls"), messages[-1]
        calc = [m for m in messages if m["type"] == "tool" and m["name"] == "calculator"]
        assert calc, f"no calculator result in {messages}"
        # Served by the built-in core MCP server (a stdio subprocess), and it answered.
        assert calc[0]["additional_kwargs"].get("mcp_server") == "core", calc[0]
        assert calc[0]["status"] == "success", calc[0]

        # The thread lives in the server's checkpointer; ours was never built.
        state = await client.threads.get_state(thread["thread_id"])
        assert state["checkpoint"]["checkpoint_id"]
        assert [m["id"] for m in state["values"]["messages"]] == [m["id"] for m in messages]
        assert not settings.threads_db.exists()
        server_log = log.read_text()
        assert "Blocking call" not in server_log, server_log
        assert "checkpointer" not in server_log.lower(), server_log
    except BaseException:  # the server's log says why
        print(f"--- langgraph dev log ---\n{log.read_text()}", flush=True)
        raise
    finally:
        _stop(proc)
        if not had_state_dir:
            shutil.rmtree(state_dir, ignore_errors=True)
