"""The user's own failing conversations, as evidence for a session's diagnosis.

A conversation the user rated down, or one that ended in error, says where the assistant lets
its user down in real use, which no benchmark knows. Each session's diagnosis reads those of
them that came in since the previous session, next to the benchmark's failing runs.

Which traces qualify (`user_failures`):
- made by one of the user's own surfaces (`USER_SOURCES`: `homespun ask` and `chat`, the
  Telegram and Slack channels, the assistant served over MCP). Evaluation runs (`eval:...`),
  naive-loop baselines (`baseline:...`) and the quickstart's demo questions are not the user's;
- rated below `[learning.privacy] min_feedback` (the same threshold that makes a trace good
  enough for the personal benchmark: a rated trace is one or the other), or ended in error;
- not sensitive: neither marked so when it ran (`privacy.eligible_traces`, the rule the
  personal benchmark and the teacher digest use) nor calling a tool of a server that the
  spec marks `sensitive` now (a server marked sensitive later also covers its older traces);
- created after the previous session started (the first session looks at all of them), the
  newest `limit` of them, so a diagnosis stays bounded.

Every trace comes back scrubbed (`privacy.scrub_obj`), whatever `scrub_pii` says: these are
the user's real conversations, and what a diagnoser sees may end up in diagnosis.md, in a
cloud teacher's context and in a proposal's rationale. Only the ids are kept as they were.

A user failure has no Task (no gold answer, no grader): it informs the diagnosis and, through
the clusters' skill gaps, the proposals, but it counts in no failure rate and neither the gate
nor the teacher re-runs it; those measure on benchmark tasks only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from homespun.learning.privacy import eligible_traces, scrub_obj
from homespun.spec import Spec
from homespun.stores.learning import LearningStore
from homespun.stores.traces import Trace, TraceStore

# The sources that graphs.runner.run_assistant is called with by the user's surfaces.
USER_SOURCES: tuple[str, ...] = ("cli", "chat", "telegram", "slack", "mcp")

MAX_USER_FAILURES = 20


@dataclass(frozen=True)
class UserFailure:
    """One of the user's own conversations that failed, scrubbed."""

    trace: Trace
    """A scrubbed copy of the trace; its id is the real one."""
    reason: str
    """Why it counts as a failure, e.g. 'rated 0 by the user (below 0.7)'."""


def last_session_start(store: LearningStore, current: str | None = None) -> float | None:
    """When the session before `current` started; None when there was none.

    A session that ended with nothing to fix diagnosed nothing, so the conversations of its
    window are still unread: it does not count.
    """
    for row in store.sessions(limit=50):
        if row.id != current and row.status != "nothing_to_fix":
            return row.started_at
    return None


def _sensitive_servers(spec: Spec) -> set[str]:
    return {s.name for s in spec.tools.servers if s.sensitive}


def _reason(trace: Trace, min_feedback: float) -> str | None:
    if trace.status == "error":
        why = trace.stop_reason or "error"
        return f"ended in error ({why})"
    if trace.feedback is not None and trace.feedback < min_feedback:
        return f"rated {trace.feedback:g} by the user (below {min_feedback:g})"
    return None


def _scrubbed(trace: Trace) -> Trace:
    # Ids are random hex, which the scrubber may take for keys: keep them as they are.
    return dataclasses.replace(
        scrub_obj(trace), id=trace.id, thread_id=trace.thread_id, spec_hash=trace.spec_hash
    )


def user_failures(
    traces_db: Path,
    spec: Spec,
    *,
    since: float | None = None,
    limit: int = MAX_USER_FAILURES,
) -> list[UserFailure]:
    """The user's failing conversations created after `since` (None: any time), newest first,
    at most `limit`, scrubbed. A missing trace database is no traces; one that cannot be read
    raises."""
    if limit <= 0 or not Path(traces_db).exists():
        return []
    min_feedback = spec.learning.privacy.min_feedback
    sensitive = _sensitive_servers(spec)
    store = TraceStore(traces_db)
    marks = ", ".join("?" * len(USER_SOURCES))
    ids = [
        row["id"]
        for row in store.db.query(
            f"select id from traces where source in ({marks}) and created_at > ? "
            "and coalesce(sensitive, 0) = 0 and (status = 'error' or feedback < ?) "
            "order by created_at desc",
            [*USER_SOURCES, since if since is not None else float("-inf"), min_feedback],
        )
    ]
    out: list[UserFailure] = []
    for trace_id in ids:
        trace = store.get(trace_id)
        if not eligible_traces([trace]) or not trace.query.strip():
            continue
        if any(c.server in sensitive for c in trace.tool_calls):
            continue
        reason = _reason(trace, min_feedback)
        if reason is None:
            continue
        out.append(UserFailure(_scrubbed(trace), reason))
        if len(out) >= limit:
            break
    return out
