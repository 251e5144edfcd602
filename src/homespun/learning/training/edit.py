"""Carrying out a train_lora edit inside a search session.

The op arrives untrained (no adapter). `train_for_proposal` builds SFT pairs for the target
cluster from the search set (the benchmark's reference answers, or the teacher's gold
answers when a task has none), trains a LoRA in a subprocess, converts it to a GGUF LoRA,
stores it content-addressed under HOMESPUN_HOME/adapters/ and returns the proposal with the
adapter filled in, so `apply_proposal` (pure) appends it to `[intelligence] adapters`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from homespun.learning.tasks import Task
from homespun.spec import Settings, Spec
from homespun.spec.edits import Proposal, TrainLora
from homespun.spec.models import AdapterSpec


class TrainEditError(RuntimeError):
    pass


def needs_training(proposal: Proposal) -> bool:
    return any(isinstance(o, TrainLora) and o.adapter is None for o in proposal.ops)


def training_pairs(tasks: list[Task], categories: set[str]) -> list[tuple[str, str]]:
    return [(t.query, t.gold) for t in tasks if t.category in categories and t.gold]


def train_for_proposal(
    proposal: Proposal,
    *,
    spec: Spec,
    settings: Settings,
    pairs: list[tuple[str, str]],
    progress: Any = None,
) -> Proposal:
    from homespun.engines.catalog import resolve_model_path

    from .adapters import store_adapter
    from .data import sft_examples_from_pairs
    from .gguf_lora import convert_peft_to_gguf
    from .sft import TrainConfig, run_training_subprocess

    if spec.engine.backend != "embedded":
        raise TrainEditError(
            "train_lora trains the embedded model's GGUF; this spec's engine "
            f"is {spec.engine.backend!r}"
        )
    if not pairs:
        raise TrainEditError(
            f"no training pairs for cluster {proposal.target_cluster!r}: its "
            "search tasks have no reference answers"
        )
    gguf = resolve_model_path(spec.intelligence.model, settings.models_path)
    examples = sft_examples_from_pairs(spec, pairs)
    ops = []
    for op in proposal.ops:
        if isinstance(op, TrainLora) and op.adapter is None:
            cfg = TrainConfig(
                steps=op.steps,
                rank=op.rank,
                alpha=2 * op.rank,
                learning_rate=op.learning_rate,
                threads=spec.engine.threads or 2,
            )
            with tempfile.TemporaryDirectory(prefix="homespun-train-") as tmp:
                adapter_dir = run_training_subprocess(
                    gguf,
                    examples,
                    Path(tmp) / "peft",
                    cfg,
                    cache_dir=settings.home / "cache" / "training",
                    progress=progress,
                )
                config = json.loads((adapter_dir / "adapter_config.json").read_text())
                base_dir = config.get("base_model_name_or_path")
                base_config = None
                if base_dir and (Path(base_dir) / "config.json").exists():
                    base_config = json.loads((Path(base_dir) / "config.json").read_text())
                out = convert_peft_to_gguf(
                    adapter_dir, Path(tmp) / "adapter.gguf", base_config=base_config
                )
                path, digest = store_adapter(out, settings.home)
            op = op.model_copy(update={"adapter": AdapterSpec(path=str(path), sha256=digest)})
        ops.append(op)
    return proposal.model_copy(update={"ops": ops})


def adapters_of(proposal: Proposal) -> list[AdapterSpec]:
    return [o.adapter for o in proposal.ops if isinstance(o, TrainLora) and o.adapter]


def discard_unused_adapters(proposal: Proposal, current: Spec) -> list[str]:
    """A rejected training edit leaves no adapter behind (unless the current spec uses the
    same content-addressed file)."""
    used = {a.sha256 for a in current.intelligence.adapters}
    removed = []
    for adapter in adapters_of(proposal):
        if adapter.sha256 not in used:
            Path(adapter.path).expanduser().unlink(missing_ok=True)
            removed.append(adapter.path)
    return removed


def training_available(spec: Spec) -> bool:
    """The train extra is installed and the spec runs the embedded engine."""
    import importlib.util

    if spec.engine.backend != "embedded":
        return False
    return all(
        importlib.util.find_spec(m) is not None for m in ("torch", "transformers", "peft", "gguf")
    )
