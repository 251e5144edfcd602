"""Rich views of traces and specs."""

from __future__ import annotations

import datetime as dt
import json
import math

from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from homespun.stores.traces import Trace


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _clip(text: str | None, n: int) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= n else text[: n - 1] + "…"


NOT_MEASURED = "not measured"


def fmt_energy(joules: float | None, source: str | None = None) -> str:
    if joules is None:
        return NOT_MEASURED
    text = f"{joules:.3g} J" if joules < 1000 else f"{joules / 1000:.3g} kJ"
    return f"{text} ({source})" if source else text


def fmt_cost(usd: float | None) -> str:
    if usd is None:
        return NOT_MEASURED
    if 0 < usd < 0.01:  # two significant digits, never scientific notation
        return f"${usd:.{1 - math.floor(math.log10(usd))}f}"
    return f"${usd:.4f}"


def fmt_rate(tokens_per_s: float | None) -> str:
    return NOT_MEASURED if tokens_per_s is None else f"{tokens_per_s:.1f} tok/s"


def telemetry_line(t: Trace) -> str:
    return (
        f"energy: {fmt_energy(t.energy_j, t.energy_source)} · cost: {fmt_cost(t.cost_usd)}"
        f" · speed: {fmt_rate(t.tokens_per_s)}"
    )


def traces_table(traces: list[Trace]) -> Table:
    table = Table(title="Traces (newest first)")
    table.add_column("id", no_wrap=True)
    table.add_column("when", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("tools", justify="right")
    table.add_column("fb", justify="right")
    table.add_column("query", overflow="fold", ratio=1)
    table.add_column("answer / error", overflow="fold", ratio=1)
    for t in traces:
        style = {"ok": "green", "error": "red"}.get(t.status, "yellow")
        table.add_row(
            t.id,
            _when(t.created_at)[5:16],
            Text(t.status, style=style),
            str(len(t.tool_calls)) if t.tool_calls else "",
            "" if t.feedback is None else f"{t.feedback:g}",
            _clip(t.query, 40),
            _clip(t.final_answer if t.status == "ok" else t.error, 50),
        )
    return table


def trace_view(t: Trace) -> list:
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    status = Text(t.status, style={"ok": "green", "error": "red"}.get(t.status, "yellow"))
    rows = [
        ("trace", t.id),
        ("when", _when(t.created_at)),
        ("status", status),
        ("stop", str(t.stop_reason) if t.stop_reason else "—"),
        ("query", t.query),
        ("spec", f"{t.spec_hash}  ({t.loop} loop, {t.backend}: {t.model})"),
        ("thread", t.thread_id),
        ("latency", f"{t.latency_s:.2f} s" if t.latency_s is not None else "—"),
        (
            "tokens",
            f"{t.prompt_tokens} prompt + {t.completion_tokens} completion "
            f"in {t.model_calls} model call(s)",
        ),
        ("telemetry", telemetry_line(t)),
        ("feedback", "—" if t.feedback is None else f"{t.feedback:g}"),
    ]
    if t.sensitive:
        rows.append(("sensitive", "yes (never sent to a teacher)"))
    for k, v in rows:
        head.add_row(k, v)
    out: list = [head]
    if t.tool_calls:
        calls = Table(title="Tool calls (through MCP)")
        for col in ("#", "server", "tool", "arguments", "result / error", "s"):
            calls.add_column(col, overflow="fold")
        for i, c in enumerate(t.tool_calls, 1):
            outcome = Text(_clip(c.error, 60), style="red") if c.error else _clip(c.result, 60)
            calls.add_row(
                str(i),
                c.server or "",
                c.name,
                json.dumps(c.arguments, ensure_ascii=False),
                outcome,
                f"{c.latency_s:.3f}" if c.latency_s is not None else "",
            )
        out.append(calls)
    else:
        out.append(Text("No tool calls.", style="dim"))
    if t.status == "ok":
        out.append(Panel(t.final_answer or "", title="answer", border_style="green"))
    if t.error:
        out.append(Panel(t.error, title="error", border_style="red"))
    return out
