"""The training subprocess: ``python -m homespun.learning.training JOB.json``.

The job file holds ``gguf_path``, ``examples`` (SFTExample JSON), ``out_dir``, ``cache_dir``
and ``config`` (TrainConfig fields). Progress goes to stdout as one JSON object a line
(``{"event": "progress", ...}``, then ``{"event": "done", "adapter_dir": ...}``); anything
else a library prints goes to stderr, which the parent keeps for error messages.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m homespun.learning.training JOB.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    # Libraries that print to stdout would corrupt the protocol: keep stdout for our lines.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    from .data import SFTExample
    from .sft import TrainConfig, TrainProgress, train_lora

    def emit(event: dict) -> None:
        protocol.write(json.dumps(event) + "\n")
        protocol.flush()

    def on_progress(p: TrainProgress) -> None:
        emit({"event": "progress", **asdict(p)})

    cfg = TrainConfig(**job["config"])
    examples = [SFTExample.from_json(e) for e in job["examples"]]
    adapter_dir = train_lora(
        Path(job["gguf_path"]),
        examples,
        Path(job["out_dir"]),
        cfg,
        cache_dir=Path(job["cache_dir"]),
        progress=on_progress,
    )
    emit({"event": "done", "adapter_dir": str(adapter_dir)})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
