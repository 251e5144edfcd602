"""synchronous=NORMAL loses nothing on a crash of the process: a writer killed with SIGKILL right
after its commits return leaves every trace row and thread checkpoint readable.

(What NORMAL gives up, the last commits before an operating-system crash or a power cut, cannot
be tested from user space; stores/sqlite.py says why that trade is made.)
"""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from homespun.spec import Settings
from homespun.stores.sqlite import connect_async
from homespun.stores.traces import TraceStore

# Runs three questions through the real runner (trace row before and after, checkpoints after
# every graph step), then kills itself the moment the last commit has returned. A connection
# to threads.db stays open, as in a long-lived process (chat, a channel), so that the runner
# closing its own connection does not copy the WAL into the database file: what survives must
# survive in the WAL.
_WRITER = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from pathlib import Path
    from langchain_core.tools import tool
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
    from homespun.engines.testing import ScriptedChatModel, tool_call
    from homespun.graphs.runner import run_assistant
    from homespun.spec import Settings, Spec
    from homespun.stores.sqlite import connect, connect_async
    from homespun.stores.traces import TraceStore

    @tool
    def multiply(a: int, b: int) -> int:
        "Multiply a by b."
        return a * b

    async def main():
        settings = Settings(home=Path(sys.argv[1]))
        store = TraceStore(settings.traces_db)
        async with connect_async(settings.threads_db) as conn:
            await AsyncSqliteSaver(conn).setup()  # the tables, as the first run would make them
            checkpoint_sync = (await (await conn.execute("pragma synchronous")).fetchone())[0]
        held = connect(settings.threads_db)
        held.execute("select count(*) from checkpoints").fetchone()  # a reader holds the WAL
        trace_sync = store.db.conn.execute("pragma synchronous").fetchone()[0]
        print("SYNCHRONOUS", trace_sync, checkpoint_sync, flush=True)
        for i in range(3):
            b = 7 + i
            model = ScriptedChatModel(
                script=[tool_call("multiply", {"a": 6, "b": b}), f"The answer is {6 * b}."]
            )
            result = await run_assistant(
                Spec(), settings, f"What is 6 * {b}?", model=model, tools=[multiply],
                store=store, thread_id=f"thread-{i}",
            )
            print("RUN", result.trace.id, f"thread-{i}", result.trace.status, 6 * b, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main())
    """
)


def _in_database_file_alone(db: Path, sql: str, tmp: Path) -> list[tuple]:
    """What `sql` reads from the database file without its WAL."""
    alone = tmp / f"alone-{db.name}"
    shutil.copyfile(db, alone)
    conn = sqlite3.connect(alone)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:  # not even the table left the WAL
        return []
    finally:
        conn.close()


async def test_a_sigkill_right_after_the_commits_loses_no_trace_and_no_checkpoint(
    tmp_path: Path,
):
    home = tmp_path / "home"
    child = subprocess.run(
        [sys.executable, "-c", _WRITER, str(home)], capture_output=True, text=True, timeout=120
    )
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
    lines = [line.split() for line in child.stdout.splitlines()]
    assert ["SYNCHRONOUS", "1", "1"] in lines  # 1 = NORMAL, for the traces and the checkpoints
    runs = [line[1:] for line in lines if line[0] == "RUN"]
    assert [status for _, _, status, _ in runs] == ["ok", "ok", "ok"], child.stderr

    settings = Settings(home=home)
    for db in (settings.traces_db, settings.threads_db):
        wal = db.with_name(db.name + "-wal")
        assert wal.exists() and wal.stat().st_size > 0, db
    # The last run's completed row and its checkpoints were only in the WAL when it died.
    last_trace, last_thread = runs[-1][:2]
    statuses = _in_database_file_alone(
        settings.traces_db, "select id, status from traces", tmp_path
    )
    assert (last_trace, "ok") not in statuses
    checkpoints = _in_database_file_alone(
        settings.threads_db, "select distinct thread_id from checkpoints", tmp_path
    )
    assert (last_thread,) not in checkpoints

    store = TraceStore(settings.traces_db)
    for trace_id, _, _, product in runs:
        trace = store.get(trace_id)
        assert trace.status == "ok"
        assert trace.final_answer == f"The answer is {product}."
        assert [c.result for c in trace.tool_calls] == [product]
    async with connect_async(settings.threads_db) as conn:
        saver = AsyncSqliteSaver(conn)
        for _, thread_id, _, product in runs:
            saved = await saver.aget_tuple({"configurable": {"thread_id": thread_id}})
            assert saved is not None, thread_id
            messages = saved.checkpoint["channel_values"]["messages"]
            assert messages[-1].content == f"The answer is {product}."
