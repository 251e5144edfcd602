"""Supervised LoRA fine-tuning on CPU: a plain torch loop (no trl, no Trainer).

Only the assistant's final message is trained on (its tokens, through the chat template's
end-of-turn token); the prompt (system prompt, few-shot turns, tool results) is context.
The loop samples ``batch_size`` examples per step from a seeded shuffle, so a run is
reproducible, and reports each step through ``progress``.

Training competes for the same cores as the embedded engine: llama.cpp and torch both
spin-wait, and two 2-thread jobs on 2 cores slow each other down 5-40x. Train while the
engine is idle, or give each a share (``TrainConfig.threads``). `run_training_subprocess`
trains in a child process, so the ~1 GB a float32 base model takes goes back to the OS
when it ends.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .data import SFTExample

__all__ = [
    "TrainConfig",
    "TrainProgress",
    "TrainingError",
    "run_training_subprocess",
    "train_lora",
]

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_STDERR_TAIL_CHARS = 4000


class TrainingError(RuntimeError):
    """Training failed; the message carries the reason (for a subprocess, its stderr tail)."""


@dataclass
class TrainConfig:
    """How a LoRA is trained. The defaults teach a narrow behaviour from a few dozen
    examples in ~30 steps on 2 CPU cores."""

    steps: int = 30
    rank: int = 8
    alpha: int = 16
    learning_rate: float = 2e-4
    batch_size: int = 8
    threads: int = 2
    """torch threads (and OMP/MKL threads of the training subprocess)."""
    seed: int = 0
    target_modules: tuple[str, ...] = ALL_LINEAR
    """Every linear layer of a llama block. On a small model this costs little more per
    step than q/v only (the backward pass through all layers dominates either way) and
    learns a behaviour in fewer steps; `gguf_lora` converts all seven."""
    max_length: int = 2048
    """Examples whose prompt plus answer is longer (in tokens) are left out."""

    def __post_init__(self) -> None:
        self.target_modules = tuple(self.target_modules)
        if self.steps < 1 or self.rank < 1 or self.batch_size < 1 or self.max_length < 8:
            raise ValueError(f"steps, rank, batch_size and max_length must be positive: {self}")
        if not self.learning_rate > 0:
            raise ValueError("learning_rate must be positive")
        unknown = set(self.target_modules) - set(ALL_LINEAR)
        if unknown or not self.target_modules:
            raise ValueError(
                f"target_modules must be a non-empty subset of {ALL_LINEAR}, got "
                f"{self.target_modules}"
            )


@dataclass
class TrainProgress:
    step: int
    steps: int
    loss: float
    elapsed_s: float


ProgressCallback = Callable[[TrainProgress], None]


@dataclass
class _Encoded:
    input_ids: list[int]
    labels: list[int]


@dataclass
class TrainReport:
    """What ``training.json`` in the adapter directory records."""

    examples: int
    skipped_too_long: int
    steps: int
    load_s: float
    train_s: float
    steps_per_s: float
    first_loss: float
    last_loss: float
    losses: list[float] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    base_gguf: str = ""


def encode_example(tokenizer: Any, example: SFTExample) -> _Encoded:
    """Token ids of the whole conversation, with labels only on the final reply.

    The prompt is the chat template up to the assistant's generation prompt, exactly what
    the server renders before the model answers; the reply is what the template writes after
    it, through its end-of-turn token (so the model learns to stop).
    """
    messages = example.messages
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("a training example must end with the assistant's reply")
    prompt_text = tokenizer.apply_chat_template(
        messages[:-1], tokenize=False, add_generation_prompt=True
    )
    full_text = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ValueError("the chat template renders the reply in a way that changes the prompt")
    reply_text = full_text[len(prompt_text) :]
    eos = tokenizer.eos_token
    if eos and eos in reply_text:  # nothing after the end of turn is ever generated
        reply_text = reply_text[: reply_text.rindex(eos) + len(eos)]
    bos = tokenizer.bos_token
    add_bos = not (bos and prompt_text.startswith(bos))
    prompt_ids = tokenizer(prompt_text, add_special_tokens=add_bos)["input_ids"]
    reply_ids = tokenizer(reply_text, add_special_tokens=False)["input_ids"]
    return _Encoded(
        input_ids=list(prompt_ids) + list(reply_ids),
        labels=[-100] * len(prompt_ids) + list(reply_ids),
    )


def _common_prefix(encoded: Sequence[_Encoded]) -> int:
    """Tokens every example of the batch starts with, stopping two before the first trained
    token of any of them: the token that predicts it must be in the batched part, where the
    logits are."""
    first = encoded[0].input_ids
    limit = min(next(i for i, label in enumerate(e.labels) if label != -100) for e in encoded) - 1
    n = 0
    while n < limit and all(len(e.input_ids) > n and e.input_ids[n] == first[n] for e in encoded):
        n += 1
    return n


def batch_loss(
    model: Any, encoded: Sequence[_Encoded], pad_id: int, *, share_prefix: bool = True
) -> Any:
    """Mean cross-entropy over the trained (reply) tokens of a batch.

    Examples of one spec start with the same system prompt and few-shot turns, often most of
    their tokens. With ``share_prefix`` that common prefix runs once (batch 1, with
    gradients: the LoRA changes its keys and values too), and its KV cache is repeated for
    the rest of each example, which gives the same loss for a fraction of the compute
    (~5x fewer tokens with the default spec's few-shot turns).
    """
    import torch
    import torch.nn.functional as F

    n_prefix = _common_prefix(encoded) if share_prefix and len(encoded) > 1 else 0
    rest = [e.input_ids[n_prefix:] for e in encoded]
    labels = [e.labels[n_prefix:] for e in encoded]
    width = max(len(r) for r in rest)
    ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rest])
    target = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rest])
    if n_prefix:
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config)
        model(
            input_ids=torch.tensor([encoded[0].input_ids[:n_prefix]]),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        cache.batch_repeat_interleave(len(encoded))
        full_mask = torch.cat([torch.ones(len(encoded), n_prefix, dtype=mask.dtype), mask], 1)
        positions = torch.arange(n_prefix, n_prefix + width).expand(len(encoded), -1)
        logits = model(
            input_ids=ids,
            attention_mask=full_mask,
            past_key_values=cache,
            position_ids=positions,
            use_cache=True,
        ).logits
    else:
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    # Position t predicts token t+1; every trained token lies after the shared prefix.
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        target[:, 1:].reshape(-1),
        ignore_index=-100,
    )


def _batches(n: int, size: int, seed: int):
    """Endless batches of indices: each epoch a fresh seeded shuffle."""
    rng = random.Random(seed)
    pool: list[int] = []
    while True:
        batch = []
        while len(batch) < min(size, n):
            if not pool:
                pool = list(range(n))
                rng.shuffle(pool)
            i = pool.pop()
            if i not in batch:
                batch.append(i)
        yield batch


def train_lora(
    gguf_path: Path,
    examples: Sequence[SFTExample],
    out_dir: Path,
    cfg: TrainConfig,
    *,
    cache_dir: Path,
    progress: ProgressCallback | None = None,
) -> Path:
    """Train a LoRA on `examples` over the GGUF model at `gguf_path`, in this process.

    Returns `out_dir`, a PEFT adapter directory (``adapter_config.json``,
    ``adapter_model.safetensors``) plus ``base_config.json`` (the base model's config, which
    the GGUF converter needs) and ``training.json`` (a `TrainReport`).
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from .model import load_base_model

    if not examples:
        raise TrainingError("no training examples")
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    model, tokenizer = load_base_model(Path(gguf_path), Path(cache_dir), threads=cfg.threads)
    load_s = time.perf_counter() - started

    encoded = [encode_example(tokenizer, ex) for ex in examples]
    kept = [e for e in encoded if len(e.input_ids) <= cfg.max_length]
    if not kept:
        raise TrainingError(f"every example is longer than max_length={cfg.max_length} tokens")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id

    model.config.use_cache = False
    lora = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        target_modules=list(cfg.target_modules),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)

    losses: list[float] = []
    batches = _batches(len(kept), cfg.batch_size, cfg.seed)
    train_started = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        loss = batch_loss(model, [kept[i] for i in next(batches)], pad_id)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(float(loss.detach()), 5))
        if progress is not None:
            progress(
                TrainProgress(step, cfg.steps, losses[-1], round(time.perf_counter() - started, 2))
            )
    train_s = time.perf_counter() - train_started

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    base_config = model.get_base_model().config.to_dict()
    (out_dir / "base_config.json").write_text(json.dumps(base_config, indent=1, default=str))
    report = TrainReport(
        examples=len(kept),
        skipped_too_long=len(encoded) - len(kept),
        steps=cfg.steps,
        load_s=round(load_s, 2),
        train_s=round(train_s, 2),
        steps_per_s=round(cfg.steps / train_s, 4) if train_s > 0 else 0.0,
        first_loss=losses[0],
        last_loss=losses[-1],
        losses=losses,
        config=asdict(cfg),
        base_gguf=str(gguf_path),
    )
    (out_dir / "training.json").write_text(json.dumps(asdict(report), indent=1))
    return out_dir


# --------------------------------------------------------------------------- subprocess

_THREAD_ENV = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    n = str(max(1, threads))
    for name in _THREAD_ENV:
        env[name] = n
    env.update(
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",  # everything comes from the local GGUF; never reach the hub
        TRANSFORMERS_VERBOSITY="error",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        TQDM_DISABLE="1",
        PYTHONUNBUFFERED="1",
    )
    # The child must import this very package, also when it runs from a source tree.
    src = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    return env


def run_training_subprocess(
    gguf_path: Path,
    examples: Sequence[SFTExample],
    out_dir: Path,
    cfg: TrainConfig,
    *,
    cache_dir: Path,
    timeout_s: float = 1800,
    progress: ProgressCallback | None = None,
) -> Path:
    """`train_lora` in a child process (``python -m homespun.learning.training JOB``).

    The child's OMP/MKL/torch threads are ``cfg.threads``; its memory goes back to the OS
    when it exits. Progress lines stream back as they come. A child that fails or runs past
    ``timeout_s`` raises TrainingError with the tail of its stderr.
    """
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="homespun-train-") as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(
            json.dumps(
                {
                    "gguf_path": str(Path(gguf_path).expanduser().resolve()),
                    "examples": [ex.to_json() for ex in examples],
                    "out_dir": str(out_dir.expanduser().resolve()),
                    "cache_dir": str(Path(cache_dir).expanduser().resolve()),
                    "config": asdict(cfg),
                }
            ),
            encoding="utf-8",
        )
        stderr_path = Path(tmp) / "stderr.txt"
        with stderr_path.open("wb") as stderr:
            child = subprocess.Popen(
                [sys.executable, "-m", "homespun.learning.training", str(job)],
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                env=_child_env(cfg.threads),
                start_new_session=True,  # so a timeout can stop the child and its helpers
            )
            result = _follow(child, timeout_s, progress)
        tail = stderr_path.read_bytes()[-_STDERR_TAIL_CHARS:].decode("utf-8", "replace")
    if result == "timeout":
        raise TrainingError(f"training ran past {timeout_s:g}s and was stopped; stderr:\n{tail}")
    if child.returncode != 0 or result is None:
        raise TrainingError(f"training failed (exit status {child.returncode}); stderr:\n{tail}")
    return Path(result)


def _follow(
    child: subprocess.Popen, timeout_s: float, progress: ProgressCallback | None
) -> str | None:
    """Read the child's JSON lines until it exits; the adapter dir, None, or 'timeout'."""
    lines: queue.Queue[bytes | None] = queue.Queue()

    def reader() -> None:
        assert child.stdout is not None
        for raw in child.stdout:
            lines.put(raw)
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    adapter_dir: str | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _kill(child)
            return "timeout"
        try:
            raw = lines.get(timeout=min(remaining, 1.0))
        except queue.Empty:
            continue
        if raw is None:
            break
        try:
            event = json.loads(raw)
        except ValueError:
            continue  # a library printed to stdout; not ours
        if not isinstance(event, dict):
            continue
        if event.get("event") == "progress" and progress is not None:
            progress(
                TrainProgress(
                    int(event["step"]),
                    int(event["steps"]),
                    float(event["loss"]),
                    float(event["elapsed_s"]),
                )
            )
        elif event.get("event") == "done":
            adapter_dir = str(event["adapter_dir"])
    try:
        child.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _kill(child)
        return "timeout"
    return adapter_dir


def _kill(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)  # the child leads its own session
    except (ProcessLookupError, PermissionError):
        child.kill()
    child.wait()
