"""GRPO: group-relative advantages, the policy-gradient loss, and the loop on real weights."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from homespun.learning.training import grpo  # noqa: E402
from homespun.learning.training.grpo import (  # noqa: E402
    GRPOConfig,
    completion_logprobs,
    group_advantages,
    grpo_loss,
    train_grpo,
)
from homespun.learning.training.sft import ALL_LINEAR  # noqa: E402
from homespun.spec.models import RewardSpec  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# A tiny random Llama and a character tokenizer, so the logic runs in a second.

PAD, EOS = 0, 1
ALPHABET = "abcdefghijklmnopqrstuvwxyz :|"


class CharTokenizer:
    """Just what GRPO asks of a tokenizer: a chat template, encode, decode, special ids."""

    pad_token_id = PAD
    eos_token_id = EOS

    def apply_chat_template(self, messages, add_generation_prompt, tokenize, **_: Any) -> str:
        text = "".join(f"{m['role'][0]}:{m['content']}|" for m in messages)
        return text + ("a:" if add_generation_prompt else "")

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [2 + ALPHABET.index(ch) for ch in text.lower() if ch in ALPHABET]}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(ALPHABET[i - 2] for i in ids if 2 <= i < 2 + len(ALPHABET))

    def get_vocab(self) -> dict[str, int]:
        return {ch: 2 + i for i, ch in enumerate(ALPHABET)}

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.get_vocab()[token]


def _tiny_llama(seed: int = 0) -> Any:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=2 + len(ALPHABET),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=EOS,
    )
    return transformers.LlamaForCausalLM(config)


def _tiny_lora(seed: int = 0) -> Any:
    model = grpo._make_peft_model(_tiny_llama(seed), GRPOConfig(rank=4, alpha=8))
    # peft starts lora_B at zero (the adapter is a no-op); nudge it so the adapter matters
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


# ---------------------------------------------------------------------------------------------
# Advantages and loss.


def test_advantages_are_relative_to_the_group() -> None:
    # mean 0.5, population std 0.5
    assert group_advantages([1.0, 0.0, 0.0, 1.0]) == pytest.approx([1, -1, -1, 1], abs=1e-3)
    # the same ordering whatever the scale or offset of the rewards
    assert group_advantages([10.0, 11.0, 12.0]) == pytest.approx(
        group_advantages([-0.2, -0.1, 0.0]), abs=1e-2
    )
    # no spread: nothing to learn
    assert group_advantages([0.3, 0.3, 0.3]) == [0.0, 0.0, 0.0]
    assert sum(group_advantages([0.9, 0.1, 0.4, 0.7])) == pytest.approx(0.0, abs=1e-9)


def test_a_group_of_one_has_no_relative_advantage() -> None:
    with pytest.raises(ValueError, match="group_size"):
        GRPOConfig(group_size=1)


@torch.no_grad()
def test_logprobs_of_padded_completions_match_each_completion_alone() -> None:
    model = _tiny_llama()
    model.eval()
    prompt = [5, 6, 7, 8]
    completions = [[9, 10, 11, EOS], [12, EOS]]
    logp, mask = completion_logprobs(model, prompt, completions, PAD)
    assert logp.shape == mask.shape == (2, 4)
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    for row, comp in enumerate(completions):
        ids = torch.tensor([prompt + comp])
        alone = torch.log_softmax(model(input_ids=ids).logits[0], dim=-1)
        expected = [alone[len(prompt) - 1 + t, tok] for t, tok in enumerate(comp)]
        assert logp[row, : len(comp)].tolist() == pytest.approx(
            [float(e) for e in expected], abs=1e-5
        )


def test_loss_is_the_advantage_weighted_token_mean_and_kl_vanishes_against_itself() -> None:
    logp = torch.tensor([[-1.0, -3.0], [-2.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, kl = grpo_loss(logp, mask, [1.0, -1.0])
    # -(1 * mean(-1, -3) + (-1) * mean(-2)) / 2 = -(-2 + 2) / 2 = 0
    assert float(loss) == pytest.approx(0.0) and kl is None
    loss, _ = grpo_loss(logp, mask, [0.5, 0.5])
    assert float(loss) == pytest.approx(-(0.5 * -2.0 + 0.5 * -2.0) / 2)
    loss, kl = grpo_loss(logp, mask, [0.0, 0.0], ref_logp=logp.clone(), kl_coef=0.1)
    assert kl == pytest.approx(0.0) and float(loss) == pytest.approx(0.0)
    _, kl = grpo_loss(logp, mask, [0.0, 0.0], ref_logp=logp - 0.5, kl_coef=0.1)
    assert kl > 0


def test_gradient_steps_raise_the_advantaged_completion_and_lower_the_other() -> None:
    model = _tiny_lora()
    model.train()
    prompt = [5, 6, 7]
    good, bad = [9, 9, EOS], [20, 21, EOS]
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW(params, lr=3e-2, weight_decay=0.0)

    def seq_logp() -> list[float]:
        with torch.no_grad():
            logp, mask = completion_logprobs(model, prompt, [good, bad], PAD)
        return ((logp * mask).sum(1)).tolist()

    before = seq_logp()
    for _ in range(20):
        opt.zero_grad()
        logp, mask = completion_logprobs(model, prompt, [good, bad], PAD)
        loss, _ = grpo_loss(logp, mask, group_advantages([1.0, 0.0]))
        assert math.isfinite(float(loss.detach()))
        loss.backward()
        opt.step()
    after = seq_logp()
    assert after[0] > before[0] + 0.5
    assert after[1] < before[1] - 0.5
    # only the adapter learnt: the base weights are untouched
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_the_loop_samples_scores_and_writes_a_peft_adapter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole loop on the tiny model: groups, scorer calls, log lines, adapter files."""
    import homespun.learning.training.model as model_mod

    monkeypatch.setattr(
        model_mod, "load_base_model", lambda *a, **k: (_tiny_llama(), CharTokenizer())
    )
    calls: list[tuple[int, str]] = []

    def scorer(index: int, text: str) -> float:
        calls.append((index, text))
        return 1.0 if "z" in text else 0.0

    prompts = [
        [{"role": "user", "content": "say z"}],
        [{"role": "user", "content": "say zz"}, {"role": "assistant", "content": "zz"}],
        [{"role": "user", "content": "again"}],
    ]
    seen: list[grpo.StepStats] = []
    cfg = GRPOConfig(steps=3, group_size=3, prompts_per_step=2, max_new_tokens=8, rank=4, alpha=8)
    adapter = train_grpo(
        tmp_path / "model.gguf",
        prompts,
        scorer,
        cfg,
        tmp_path / "out",
        cache_dir=tmp_path / "cache",
        weights=RewardSpec(),
        on_step=seen.append,
    )
    # the same directory layout SFT writes, so the GGUF converter takes it as it is
    assert adapter == tmp_path / "out"
    for name in ("adapter_config.json", "adapter_model.safetensors", "base_config.json"):
        assert (adapter / name).is_file(), name
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8
    assert set(config["target_modules"]) == set(ALL_LINEAR)
    report = json.loads((adapter / "training.json").read_text())
    assert report["method"] == "grpo" and len(report["losses"]) == 3
    assert "cost" in report["not_measured"]
    assert len(calls) == 3 * 2 * 3 and {i for i, _ in calls} <= {0, 1, 2}
    # every prompt is visited before any repeats
    assert sorted(seen[0].prompt_indices + seen[1].prompt_indices[:1]) == [0, 1, 2]
    lines = [json.loads(x) for x in (tmp_path / "out" / grpo.LOG_NAME).read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 1, 2]
    for s in seen:
        assert math.isfinite(s.loss)
        assert all(math.isfinite(a) for group in s.advantages for a in group)
        assert all(len(g) == 3 for g in s.advantages)
        assert all(1 <= n <= 8 for g in s.completion_tokens for n in g)
        # local sampling: latency measured, cost never; energy only with a counter
        assert "latency" in s.reward["measured"] and "cost" in s.reward["not_measured"]


class _FakeMeter:
    """A counter that reads 1 J more for every generation than the one before."""

    source = "rapl"

    def __init__(self) -> None:
        self.n = 0

    def start(self) -> None:
        self.n += 1

    def stop(self) -> float:
        return float(self.n)


def test_energy_from_a_counter_enters_the_reward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import homespun.learning.training.model as model_mod

    monkeypatch.setattr(
        model_mod, "load_base_model", lambda *a, **k: (_tiny_llama(), CharTokenizer())
    )
    monkeypatch.setattr(grpo, "_energy_meter", _FakeMeter)
    seen: list[grpo.StepStats] = []
    cfg = GRPOConfig(steps=1, group_size=3, prompts_per_step=1, max_new_tokens=4, rank=4, alpha=8)
    # equal accuracy everywhere: only the efficiency terms separate the completions
    out = train_grpo(
        tmp_path / "m.gguf",
        [[{"role": "user", "content": "hi"}]],
        lambda i, t: 1.0,
        cfg,
        tmp_path / "out",
        cache_dir=tmp_path,
        weights=RewardSpec(gamma=0.0),
        on_step=seen.append,
    )
    report = seen[0].reward
    assert report["measured"] == ["accuracy", "energy", "latency"]  # latency weighs 0 here
    assert report["energy"]["mean"] == pytest.approx(2.0)  # 1, 2, 3 J
    # energy z = -1.22, 0, +1.22 -> the cheapest completion has the highest advantage
    rewards = seen[0].rewards[0]
    assert rewards == pytest.approx([0.5 + 0.1 * 1.2247449, 0.5, 0.5 - 0.1 * 1.2247449])
    assert seen[0].advantages[0][0] > 0 > seen[0].advantages[0][2]
    assert json.loads((out / "training.json").read_text())["energy_source"] == "rapl"


# ---------------------------------------------------------------------------------------------
# The real model.


@pytest.mark.slow
def test_grpo_on_smollm2_produces_an_adapter_the_runtime_loads(
    model_path: Path, tmp_path: Path
) -> None:
    import time

    from homespun.learning.training.gguf_lora import convert_peft_to_gguf

    target = "paris"
    prompts = [
        [{"role": "user", "content": "What is the capital of France? One word."}],
        [{"role": "user", "content": "Name a famous city in Europe."}],
    ]
    seen: list[grpo.StepStats] = []
    cfg = GRPOConfig(steps=2, group_size=4, prompts_per_step=2, max_new_tokens=24)
    t0 = time.perf_counter()
    adapter = train_grpo(
        model_path,
        prompts,
        lambda i, text: float(target in text.lower()),
        cfg,
        tmp_path / "run",
        cache_dir=REPO / ".cache" / "training",
        weights=RewardSpec(),
        on_step=seen.append,
    )
    elapsed = time.perf_counter() - t0
    print(f"GRPO: {[round(s.seconds, 1) for s in seen]} s/step, {elapsed:.1f} s total")
    assert len(seen) == 2
    for s in seen:
        assert math.isfinite(s.loss)
        assert all(math.isfinite(a) for g in s.advantages for a in g)
        assert all(math.isfinite(r) for g in s.rewards for r in g)
    assert (adapter / "adapter_model.safetensors").is_file()

    out = tmp_path / "grpo.gguf"
    convert_peft_to_gguf(adapter, out)
    import gguf

    reader = gguf.GGUFReader(str(out))
    names = {t.name for t in reader.tensors}
    assert "blk.0.attn_q.weight.lora_a" in names and "blk.0.attn_v.weight.lora_b" in names
    _check_runtime_loads(model_path, out)


def _check_runtime_loads(model_path: Path, adapter: Path) -> None:
    """The runtime loads the GGUF LoRA (a missing or malformed one fails at load) and answers."""
    import inspect

    from homespun.engines import embedded

    if "adapters" not in inspect.signature(embedded.get_embedded_server).parameters:
        return  # the engine takes no adapters yet; the tensor names above are the check
    server = embedded.get_embedded_server(
        model_path, n_ctx=512, threads=2, adapters=((str(adapter), 1.0),)
    )
    try:
        assert server.adapters and server.adapters[0][0] == adapter.resolve()
        reply = server.chat(
            {
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
                "max_tokens": 8,
                "temperature": 0,
            }
        )
        assert reply["choices"][0]["message"]["content"].strip()
    finally:
        server.close()
