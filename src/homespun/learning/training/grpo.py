"""GRPO with LoRA on CPU: small groups, the composite reward of paper Eq. 1.

Each step takes ``prompts_per_step`` prompts and samples ``group_size`` completions for each
from the current LoRA policy (the tokenizer's chat template, sampling at ``temperature``).
Every completion is generated on its own so that its latency (and energy, where this machine
has an energy counter) is a measurement of that completion, not a share of a batch. The
scorer gives its accuracy; cost is not measured for a local model. The group's composite
rewards (efficiency z-scored within the group) become group-relative advantages
``(r - mean) / (std + eps)``, and the loss is the policy gradient

    -mean_i A_i * mean_t log pi(y_i,t | q, y_i,<t)   (+ kl_coef * KL(pi || base))

on the completion tokens. Sampling and the update use the same weights (one update per
batch), so GRPO's probability ratio is 1 and its clipping never acts; the KL term, when
``kl_coef > 0``, is the usual k3 estimator against the base model (the adapter disabled).
AdamW updates the LoRA parameters only. The result is a PEFT adapter directory in the same
format `sft.train_lora` writes (``adapter_config.json``, ``adapter_model.safetensors``,
``base_config.json``), so it goes through ``convert_peft_to_gguf`` and ``store_adapter``
unchanged; ``training.json`` records the run and ``grpo_log.jsonl`` a line per step.

Like SFT, this competes with the embedded engine for the cores (both spin-wait): train while
the engine is idle. Generation dominates a step (each completion is decoded token by token).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from homespun.learning.reward import Sample, composite_rewards, reward_report
from homespun.spec.models import RewardSpec

from .sft import ALL_LINEAR

__all__ = [
    "GRPOConfig",
    "StepStats",
    "completion_logprobs",
    "group_advantages",
    "grpo_loss",
    "train_grpo",
]

Scorer = Callable[[int, str], float]
LOG_NAME = "grpo_log.jsonl"
REPORT_NAME = "training.json"


@dataclass
class GRPOConfig:
    steps: int = 4
    group_size: int = 4
    prompts_per_step: int = 2
    max_new_tokens: int = 48
    learning_rate: float = 1e-4
    rank: int = 8
    alpha: int = 16
    kl_coef: float = 0.0
    threads: int = 2
    seed: int = 0
    temperature: float = 0.9
    top_p: float = 1.0
    target_modules: tuple[str, ...] = ALL_LINEAR
    """As SFT: every linear layer of a llama block (all seven convert to GGUF)."""
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        self.target_modules = tuple(self.target_modules)
        if self.steps < 1 or self.prompts_per_step < 1 or self.max_new_tokens < 1:
            raise ValueError(f"steps, prompts_per_step and max_new_tokens must be positive: {self}")
        if self.group_size < 2:
            raise ValueError("group_size must be at least 2 for group-relative advantages")
        if not self.learning_rate > 0 or not self.temperature > 0 or self.kl_coef < 0:
            raise ValueError("learning_rate and temperature must be positive, kl_coef >= 0")
        unknown = set(self.target_modules) - set(ALL_LINEAR)
        if unknown or not self.target_modules:
            raise ValueError(f"target_modules must be a non-empty subset of {ALL_LINEAR}")


@dataclass
class StepStats:
    step: int
    prompt_indices: list[int]
    loss: float
    kl: float | None
    mean_reward: float
    mean_accuracy: float
    advantages: list[list[float]]  # per group, per completion
    rewards: list[list[float]]
    completion_tokens: list[list[int]]
    seconds: float
    generation_seconds: float
    reward: dict[str, Any] = field(default_factory=dict)  # reward_report of the first group


# ---------------------------------------------------------------------------------------------
# The pure parts: advantages and the loss.


def group_advantages(rewards: Sequence[float], eps: float = 1e-4) -> list[float]:
    """``(r - mean) / (std + eps)`` within one group (population std).

    A group whose rewards are all equal gets advantages 0: nothing to learn from it.
    """
    n = len(rewards)
    if n == 0:
        return []
    mean = sum(rewards) / n
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / n)
    return [(r - mean) / (std + eps) for r in rewards]


def completion_logprobs(
    model: Any, prompt_ids: Sequence[int], completions: Sequence[Sequence[int]], pad_id: int
) -> tuple[Any, Any]:
    """Log-probs of each completion's tokens after the prompt: (logp [B, T], mask [B, T]).

    All completions share the prompt, so they are right-padded after it and only the last
    ``T + 1`` positions' logits are computed.
    """
    import torch

    width = max(len(c) for c in completions)
    p = len(prompt_ids)
    rows, attn, mask = [], [], []
    for c in completions:
        pad = width - len(c)
        rows.append(list(prompt_ids) + list(c) + [pad_id] * pad)
        attn.append([1] * (p + len(c)) + [0] * pad)
        mask.append([1.0] * len(c) + [0.0] * pad)
    input_ids = torch.tensor(rows, dtype=torch.long)
    attention = torch.tensor(attn, dtype=torch.long)
    out = model(input_ids=input_ids, attention_mask=attention, logits_to_keep=width + 1)
    logits = out.logits[:, :-1, :].float()  # position p-1+t predicts completion token t
    targets = input_ids[:, p:]
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logp, torch.tensor(mask, dtype=logp.dtype)


def grpo_loss(
    logp: Any,
    mask: Any,
    advantages: Any,
    ref_logp: Any | None = None,
    kl_coef: float = 0.0,
) -> tuple[Any, float | None]:
    """The policy-gradient loss of one group (token mean per completion), and the KL if used.

    ``loss = -mean_i A_i * mean_t logp_i,t + kl_coef * mean_i mean_t k3_i,t`` where
    ``k3 = exp(ref - logp) - (ref - logp) - 1`` estimates KL(policy || reference).
    """
    import torch

    adv = torch.as_tensor(advantages, dtype=logp.dtype)
    lengths = mask.sum(dim=1).clamp(min=1.0)
    per_seq = (logp * mask).sum(dim=1) / lengths
    loss = -(adv * per_seq).mean()
    kl_value = None
    if ref_logp is not None and kl_coef > 0:
        d = ref_logp.detach() - logp
        k3 = torch.exp(d) - d - 1.0
        kl = ((k3 * mask).sum(dim=1) / lengths).mean()
        loss = loss + kl_coef * kl
        kl_value = float(kl.detach())
    return loss, kl_value


# ---------------------------------------------------------------------------------------------
# Sampling and measurement.


def _prompt_messages(example: Any) -> list[dict[str, Any]]:
    """The conversation up to the answer: an SFT example's messages less its final answer."""
    messages = getattr(example, "messages", example)
    messages = [dict(m) for m in messages]
    while messages and messages[-1].get("role") == "assistant":
        messages.pop()
    if not messages:
        raise ValueError("a GRPO prompt needs at least one message before the answer")
    return messages


def _prompt_ids(tokenizer: Any, example: Any) -> list[int]:
    """The prompt's tokens exactly as `sft.encode_example` (and the server) render them."""
    text = tokenizer.apply_chat_template(
        _prompt_messages(example), add_generation_prompt=True, tokenize=False
    )
    bos = getattr(tokenizer, "bos_token", None)
    add_bos = not (bos and text.startswith(bos))
    return list(tokenizer(text, add_special_tokens=add_bos)["input_ids"])


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if "<|im_end|>" in tokenizer.get_vocab():  # ChatML's end of turn, where the server stops
        end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(end, int):
            ids.add(end)
    return ids


def _energy_meter() -> Any:
    """An energy meter on this machine's counter (`homespun.engines.telemetry`: NVIDIA, AMD,
    RAPL), or None when there is none: energy is then reported as not measured."""
    from homespun.engines.telemetry import new_energy_meter

    meter = new_energy_meter()
    return meter if meter.source is not None else None


def _sample_one(
    model: Any, prompt_ids: list[int], cfg: GRPOConfig, pad_id: int, stop: set[int], meter: Any
) -> tuple[list[int], float, float | None]:
    """One sampled completion (cut after its first stop token), its latency and energy.

    The energy is the counter's difference over this generation: the whole device's, idle
    power and other processes included, as telemetry measures every local call."""
    import torch

    input_ids = torch.tensor([prompt_ids], dtype=torch.long)
    if meter is not None:
        meter.start()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=True,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=0,
            max_new_tokens=cfg.max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=sorted(stop) if stop else None,
            use_cache=True,
        )
    latency = time.perf_counter() - t0
    joules = meter.stop() if meter is not None else None
    ids = out[0, len(prompt_ids) :].tolist()
    for i, tok in enumerate(ids):
        if tok in stop:
            ids = ids[: i + 1]  # keep the stop token: stopping is part of the policy
            break
    return ids, latency, joules


# ---------------------------------------------------------------------------------------------
# The loop.


def _make_peft_model(model: Any, cfg: GRPOConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=0.0,  # sampling and the update must see the same policy
        target_modules=list(cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def train_grpo(
    gguf_path: Path,
    prompts: Sequence[Any],
    scorer: Scorer,
    cfg: GRPOConfig | None = None,
    out_dir: Path | None = None,
    *,
    cache_dir: Path,
    weights: RewardSpec | None = None,
    on_step: Callable[[StepStats], None] | None = None,
) -> Path:
    """Train a LoRA adapter on ``gguf_path`` by GRPO; returns the PEFT adapter directory.

    ``prompts`` are SFT examples (or bare message lists); a final assistant message, if any,
    is dropped and the model answers the rest. ``scorer(prompt_index, completion_text)``
    gives the accuracy of a completion in [0, 1]. One line of :class:`StepStats` per step
    is appended to ``out_dir/grpo_log.jsonl`` and passed to ``on_step``.
    """
    import torch

    from homespun.learning.training.model import load_base_model

    cfg = cfg or GRPOConfig()
    weights = weights or RewardSpec()
    if out_dir is None:
        raise ValueError("out_dir is required")
    if not prompts:
        raise ValueError("GRPO needs at least one prompt")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    started = time.perf_counter()
    base, tokenizer = load_base_model(Path(gguf_path), Path(cache_dir), threads=cfg.threads)
    load_s = time.perf_counter() - started
    model = _make_peft_model(base, cfg)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    stop = _stop_ids(model, tokenizer)
    meter = _energy_meter()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    prompt_ids = [_prompt_ids(tokenizer, p) for p in prompts]

    order: list[int] = []
    log_path = out_dir / LOG_NAME
    log_path.unlink(missing_ok=True)
    history: list[StepStats] = []
    train_started = time.perf_counter()
    for step in range(cfg.steps):
        t_step = time.perf_counter()
        chosen: list[int] = []
        for _ in range(min(cfg.prompts_per_step, len(prompts))):
            if not order:
                order = list(range(len(prompts)))
                rng.shuffle(order)
            chosen.append(order.pop())

        # 1. sample and score, the policy as it is now
        model.eval()
        groups: list[tuple[int, list[list[int]], list[float], list[Sample]]] = []
        t_gen = time.perf_counter()
        for idx in chosen:
            completions, samples = [], []
            for _ in range(cfg.group_size):
                ids, latency, joules = _sample_one(model, prompt_ids[idx], cfg, pad_id, stop, meter)
                text = tokenizer.decode(ids, skip_special_tokens=True)
                accuracy = float(scorer(idx, text))
                completions.append(ids)
                # cost: not measured. Telemetry prices a local call as its energy times the
                # electricity price, which would only count the energy a second time.
                samples.append(
                    Sample(accuracy=accuracy, energy_j=joules, latency_s=latency, cost_usd=None)
                )
            rewards = composite_rewards(samples, weights)
            groups.append((idx, completions, rewards, samples))
        generation_seconds = time.perf_counter() - t_gen

        # 2. one policy-gradient update over the groups
        model.train()
        optimizer.zero_grad(set_to_none=True)
        total_loss, kls, all_adv, n_groups = 0.0, [], [], 0
        for idx, completions, rewards, _samples in groups:
            adv = group_advantages(rewards)
            all_adv.append(adv)
            kept = [i for i, c in enumerate(completions) if c]
            if not kept or all(a == 0.0 for a in adv):
                continue  # no signal in this group
            comps = [completions[i] for i in kept]
            logp, mask = completion_logprobs(model, prompt_ids[idx], comps, pad_id)
            ref = None
            if cfg.kl_coef > 0:
                with torch.no_grad(), model.disable_adapter():
                    ref, _ = completion_logprobs(model, prompt_ids[idx], comps, pad_id)
            loss, kl = grpo_loss(logp, mask, [adv[i] for i in kept], ref, cfg.kl_coef)
            (loss / len(groups)).backward()
            total_loss += float(loss.detach()) / len(groups)
            n_groups += 1
            if kl is not None:
                kls.append(kl)
        if n_groups:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        all_samples = [s for g in groups for s in g[3]]
        all_rewards = [r for g in groups for r in g[2]]
        stats = StepStats(
            step=step,
            prompt_indices=chosen,
            loss=total_loss,
            kl=sum(kls) / len(kls) if kls else None,
            mean_reward=sum(all_rewards) / len(all_rewards),
            mean_accuracy=sum(s.accuracy for s in all_samples) / len(all_samples),
            advantages=all_adv,
            rewards=[g[2] for g in groups],
            completion_tokens=[[len(c) for c in g[1]] for g in groups],
            seconds=time.perf_counter() - t_step,
            generation_seconds=generation_seconds,
            reward=reward_report(groups[0][3], weights),
        )
        history.append(stats)
        with log_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(stats)) + "\n")
        if on_step is not None:
            on_step(stats)
    train_s = time.perf_counter() - train_started

    model.save_pretrained(out_dir)
    base_config = model.get_base_model().config.to_dict()
    (out_dir / "base_config.json").write_text(json.dumps(base_config, indent=1, default=str))
    report = {
        "method": "grpo",
        "prompts": len(prompts),
        "steps": cfg.steps,
        "load_s": round(load_s, 2),
        "train_s": round(train_s, 2),
        "seconds_per_step": round(train_s / cfg.steps, 2),
        "losses": [round(s.loss, 5) for s in history],
        "mean_rewards": [round(s.mean_reward, 5) for s in history],
        "mean_accuracies": [round(s.mean_accuracy, 4) for s in history],
        "measured": history[-1].reward.get("measured", []),
        "not_measured": history[-1].reward.get("not_measured", []),
        "energy_source": meter.source if meter is not None else None,
        "config": asdict(cfg),
        "weights": weights.model_dump(),
        "base_gguf": str(gguf_path),
    }
    (out_dir / REPORT_NAME).write_text(json.dumps(report, indent=1), encoding="utf-8")
    return out_dir
