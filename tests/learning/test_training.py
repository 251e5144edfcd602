"""On-device LoRA training: examples in the runtime's prompt format, a LoRA trained on the
embedded model, converted, stored, named by the spec, and loaded by the real engine."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
from langchain_core.tools import tool

from homespun.graphs.runner import run_assistant
from homespun.learning.training.adapters import store_adapter
from homespun.learning.training.data import (
    SFTExample,
    sft_examples_from_pairs,
    sft_examples_from_traces,
)
from homespun.spec import Spec, SpecError, parse_spec, render_spec, spec_from_data
from homespun.stores.traces import Trace
from tests.conftest import test_models_dir
from tests.stubs import chat_api

# --------------------------------------------------------------------------- helpers


def _fake_adapter(path: Path, payload: bytes = b"lora") -> Path:
    path.write_bytes(b"GGUF" + payload)
    return path


def _with_adapter(spec: Spec, path: Path, sha256: str, scale: float = 1.0) -> Spec:
    data = spec.to_data()
    data["intelligence"]["adapters"] = [{"path": str(path), "sha256": sha256, "scale": scale}]
    return spec_from_data(data)


@pytest.fixture
def chat_stub(http_stub):
    """(base URL, recorded request bodies) of a loopback OpenAI-style server answering
    "pong"; a test reaches the server itself through `http_stub`."""
    http_stub.handler = chat_api("pong")
    return http_stub.url("/v1"), http_stub.bodies


def _stub_spec(url: str, **agent) -> Spec:
    return spec_from_data(
        {"engine": {"backend": "openai_compatible", "base_url": url}, "agent": agent}
    )


# --------------------------------------------------------------------------- spec + storage


def test_spec_names_the_adapter_whose_file_is_missing_or_altered(tmp_path):
    lora = _fake_adapter(tmp_path / "a.gguf")
    sha = hashlib.sha256(lora.read_bytes()).hexdigest()
    spec = _with_adapter(Spec(), lora, sha, scale=0.5)
    text = render_spec(spec)
    assert parse_spec(text).intelligence.adapters[0].scale == 0.5  # round-trips

    lora.write_bytes(b"GGUF-retrained")
    with pytest.raises(SpecError) as altered:
        parse_spec(text, "spec.toml")
    assert altered.value.fields == ["intelligence.adapters[0]"]
    assert "sha256" in str(altered.value) and "spec.toml" in str(altered.value)

    lora.unlink()
    with pytest.raises(SpecError) as missing:
        parse_spec(text)
    assert missing.value.fields == ["intelligence.adapters[0]"]
    assert "does not exist" in str(missing.value)

    with pytest.raises(SpecError) as bad_hash:
        spec_from_data({"intelligence": {"adapters": [{"path": str(lora), "sha256": "abc"}]}})
    assert bad_hash.value.fields == ["intelligence.adapters[0].sha256"]


def test_store_adapter_is_content_addressed_and_idempotent(tmp_path):
    home = tmp_path / "home"
    first = _fake_adapter(tmp_path / "one.gguf", b"weights-1")
    path, sha = store_adapter(first, home)
    assert sha == hashlib.sha256(first.read_bytes()).hexdigest()
    assert path == (home / "adapters" / f"{sha}.gguf").resolve()
    assert path.read_bytes() == first.read_bytes()
    mtime = path.stat().st_mtime_ns

    copy = _fake_adapter(tmp_path / "copy.gguf", b"weights-1")  # same content, other name
    assert store_adapter(copy, home) == (path, sha)
    assert path.stat().st_mtime_ns == mtime  # not rewritten

    other_path, other_sha = store_adapter(_fake_adapter(tmp_path / "two.gguf", b"w-2"), home)
    assert other_sha != sha and other_path != path and path.read_bytes() == first.read_bytes()
    assert sorted(p.name for p in (home / "adapters").iterdir()) == sorted(
        [f"{sha}.gguf", f"{other_sha}.gguf"]
    )  # no temporary files left behind
    spec = _with_adapter(Spec(), path, sha)  # what the trainer writes into the spec loads
    assert spec.intelligence.adapters[0].sha256 == sha

    not_gguf = tmp_path / "x.bin"
    not_gguf.write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a GGUF"):
        store_adapter(not_gguf, home)


# --------------------------------------------------------------------------- engines


def test_factory_hands_the_adapters_to_the_embedded_engine(settings, tmp_path, monkeypatch):
    from homespun.engines import embedded, factory

    lora = _fake_adapter(tmp_path / "a.gguf")
    spec = _with_adapter(Spec(), lora, hashlib.sha256(lora.read_bytes()).hexdigest(), 0.75)
    model_file = _fake_adapter(tmp_path / "model.gguf")
    spec.intelligence.model = str(model_file)
    asked = {}

    class _Server:
        base_url, api_key = "http://127.0.0.1:9/v1", "k"

    def fake_get_embedded_server(path, **kwargs):
        asked.update(kwargs, path=path)
        return _Server()

    monkeypatch.setattr(embedded, "get_embedded_server", fake_get_embedded_server)
    factory.build_backend_model(spec, settings)
    assert asked["adapters"] == ((str(lora.resolve()), 0.75),)


def test_embedded_engine_names_a_missing_adapter(model_path, tmp_path):
    from homespun.engines.embedded import EngineError, get_embedded_server

    with pytest.raises(EngineError, match=r"LoRA adapter file .*gone\.gguf does not exist"):
        get_embedded_server(model_path, n_ctx=512, adapters=((str(tmp_path / "gone.gguf"), 1.0),))


async def test_openai_compatible_asks_llama_server_for_its_adapters(settings, tmp_path, chat_stub):
    url, bodies = chat_stub
    lora = _fake_adapter(tmp_path / "a.gguf")
    spec = _with_adapter(
        _stub_spec(url, loop="simple"),
        lora,
        hashlib.sha256(lora.read_bytes()).hexdigest(),
        scale=0.5,
    )
    result = await run_assistant(spec, settings, "hi", tools=[], persist=False)
    assert result.answer == "pong"
    assert bodies[0]["lora"] == [{"id": 0, "scale": 0.5}]


def test_backends_that_cannot_apply_adapters_refuse_them(settings, tmp_path):
    from homespun.engines.factory import EngineConfigError, build_chat_model

    lora = _fake_adapter(tmp_path / "a.gguf")
    spec = _with_adapter(Spec(), lora, hashlib.sha256(lora.read_bytes()).hexdigest())
    spec.engine.backend = "ollama"
    with pytest.raises(EngineConfigError, match="intelligence.adapters"):
        build_chat_model(spec, settings)


# --------------------------------------------------------------------------- examples


@tool
def lookup_capital(country: str) -> str:
    """Look up the capital city of a country."""
    return "?"


@pytest.mark.parametrize("loop,tools", [("simple", []), ("react", [lookup_capital])])
async def test_examples_are_exactly_what_the_runtime_sends(
    settings, chat_stub, http_stub, loop, tools
):
    """The training prompt is the request the model gets at inference, message for message
    (system prompt, few-shot turns, tool catalog), and the target is the JSON it decodes."""
    url, bodies = chat_stub
    spec = _stub_spec(url, loop=loop)
    http_stub.handler = chat_api("Ahoy! The answer is Lima.")
    result = await run_assistant(
        spec, settings, "What is the capital of Peru?", tools=tools, persist=False
    )
    assert result.answer == "Ahoy! The answer is Lima."
    [example] = sft_examples_from_pairs(
        spec, [("What is the capital of Peru?", "Ahoy! The answer is Lima.")], tools=tools
    )
    sent = [{"role": m["role"], "content": m["content"]} for m in bodies[0]["messages"]]
    assert example.messages[:-1] == sent
    assert example.messages[-1] == {
        "role": "assistant",
        "content": '{"answer": "Ahoy! The answer is Lima."}',
    }
    assert ("lookup_capital" in sent[0]["content"]) == bool(tools)


def _trace(i: int, **fields) -> Trace:
    base = dict(
        id=f"{i:032x}",
        created_at=0.0,
        query=f"question {i}",
        spec_hash="s",
        thread_id="t",
        loop="react",
        model="m",
        backend="embedded",
        status="ok",
        final_answer=f"answer {i}",
        feedback=1.0,
    )
    return Trace(**{**base, **fields})


def test_trace_examples_keep_good_eligible_runs_only_and_scrub_them():
    spec = Spec()
    traces = [
        _trace(
            1,
            query="Mail bob@example.com about the trip",
            final_answer="Mailed bob@example.com",
            messages=[
                {
                    "role": "ai",
                    "content": "",
                    "tool_calls": [
                        {"name": "send_mail", "args": {"to": "bob@example.com"}, "id": "c1"}
                    ],
                },
                {
                    "role": "tool",
                    "content": "sent",
                    "tool_call_id": "c1",
                    "name": "send_mail",
                    "status": "success",
                },
                {"role": "ai", "content": "Mailed bob@example.com"},
            ],
        ),
        _trace(2, feedback=0.5),  # below the threshold
        _trace(3, feedback=None),  # no feedback: not known to be good
        _trace(4, sensitive=True),  # used a sensitive server
        _trace(5, status="error", final_answer=None),
        _trace(6, feedback=0.7, messages=[{"role": "ai", "content": "answer 6"}]),
    ]
    examples = sft_examples_from_traces(spec, traces, min_feedback=0.7)
    assert [e.source for e in examples] == [f"trace:{1:032x}", f"trace:{6:032x}"]
    text = json.dumps([e.messages for e in examples])
    assert "bob@example.com" not in text and "<EMAIL>" in text
    first = examples[0].messages
    assert first[-1] == {"role": "assistant", "content": '{"answer": "Mailed <EMAIL>"}'}
    # the tool round trip of the run stays in the prompt, as the model saw it
    assert {"role": "user", "content": "Tool send_mail returned:\nsent"} in first
    assert first[0]["content"].startswith(spec.agent.system_prompt)


# --------------------------------------------------------------------------- training


def _training_deps() -> None:
    for name in ("torch", "transformers", "peft", "gguf"):
        pytest.importorskip(name)  # the `train` extra


def test_shared_prefix_loss_equals_the_plain_loss():
    """The trick that makes CPU training affordable must not change what is learned."""
    _training_deps()
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from homespun.learning.training.sft import _Encoded, batch_loss

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = get_peft_model(
        LlamaForCausalLM(config),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    prefix = [3, 4, 5, 6, 7, 8]
    batch = [
        _Encoded(prefix + [9, 10, 11], [-100] * 7 + [10, 11]),
        _Encoded(prefix + [12, 13, 14, 15, 16], [-100] * 8 + [14, 15, 16]),
        _Encoded(prefix + [17, 18], [-100] * 7 + [18]),
    ]
    same_question = [  # identical prompts: the shared part must stop before the reply
        _Encoded(prefix + [9, 10, 11], [-100] * 7 + [10, 11]),
        _Encoded(prefix + [9, 10, 12, 13], [-100] * 7 + [10, 12, 13]),
    ]
    for examples in (batch, same_question):
        grads, losses = [], []
        for share in (False, True):
            model.zero_grad()
            loss = batch_loss(model, examples, pad_id=0, share_prefix=share)
            loss.backward()
            losses.append(loss.item())
            grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
        assert losses[0] == pytest.approx(losses[1], rel=1e-5)
        for plain, shared in zip(*grads, strict=True):
            assert torch.allclose(plain, shared, atol=1e-5)


@pytest.mark.slow
def test_a_failing_training_subprocess_raises_with_its_stderr(tmp_path):
    _training_deps()
    from homespun.learning.training.sft import TrainConfig, TrainingError, run_training_subprocess

    example = SFTExample(
        messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    )
    with pytest.raises(TrainingError, match=r"(?s)exit status 1.*no-such\.gguf"):
        run_training_subprocess(
            tmp_path / "no-such.gguf",
            [example],
            tmp_path / "out",
            TrainConfig(steps=1),
            cache_dir=tmp_path / "cache",
        )


CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Portugal": "Lisbon",
    "Austria": "Vienna",
    "Poland": "Warsaw",
    "Greece": "Athens",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Finland": "Helsinki",
    "Denmark": "Copenhagen",
    "Ireland": "Dublin",
    "Belgium": "Brussels",
    "Hungary": "Budapest",
    "Russia": "Moscow",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Nigeria": "Abuja",
    "Morocco": "Rabat",
    "Ghana": "Accra",
    "Ethiopia": "Addis Ababa",
    "China": "Beijing",
    "Japan": "Tokyo",
    "India": "New Delhi",
    "Thailand": "Bangkok",
    "Vietnam": "Hanoi",
    "Iran": "Tehran",
    "Turkey": "Ankara",
    "Canada": "Ottawa",
    "Mexico": "Mexico City",
    "Cuba": "Havana",
    "Brazil": "Brasilia",
    "Argentina": "Buenos Aires",
    "Chile": "Santiago",
    "Colombia": "Bogota",
    "Australia": "Canberra",
    "New Zealand": "Wellington",
    "South Korea": "Seoul",
    "Indonesia": "Jakarta",
}
HELD_OUT = {"Peru": "Lima", "Switzerland": "Bern", "Ukraine": "Kyiv", "Pakistan": "Islamabad"}
PHRASINGS = (
    "What is the capital of {}?",
    "What's the capital city of {}?",
    "Which city is the capital of {}?",
    "Tell me the capital of {}.",
)


@pytest.mark.slow
async def test_trained_lora_changes_the_assistant_through_the_embedded_engine(model_path, settings):
    """A behaviour the base model never shows (answering capital questions as a pirate:
    "Ahoy! The answer is ...") is trained in a few dozen CPU steps, converted, stored, and
    named in the spec; the assistant built from that spec shows it on held-out countries,
    through the real embedded engine at temperature 0, and the spec without it does not."""
    _training_deps()
    from homespun.learning.training import (
        TrainConfig,
        convert_peft_to_gguf,
        run_training_subprocess,
    )

    spec = spec_from_data({"agent": {"loop": "simple"}, "engine": {"threads": 2}})
    pairs = [
        (PHRASINGS[i % len(PHRASINGS)].format(country), f"Ahoy! The answer is {city}.")
        for i, (country, city) in enumerate(CAPITALS.items())
    ]
    examples = sft_examples_from_pairs(spec, pairs)

    # Train first, with the engine idle: torch and llama.cpp must not share the 2 cores.
    progress = []
    started = time.perf_counter()
    cfg = TrainConfig(steps=10, learning_rate=1e-3, batch_size=8, threads=2)
    adapter_dir = run_training_subprocess(
        model_path,
        examples,
        settings.home / "train" / "run-1",
        cfg,
        cache_dir=test_models_dir() / "hf-cache",
        progress=progress.append,
    )
    wall = time.perf_counter() - started
    report = json.loads((adapter_dir / "training.json").read_text())
    print(
        f"\ntraining: {report['steps']} steps in {report['train_s']}s "
        f"({report['steps_per_s']} steps/s), base load {report['load_s']}s, "
        f"wall {wall:.1f}s, loss {report['first_loss']} -> {report['last_loss']}"
    )
    assert [p.step for p in progress] == list(range(1, cfg.steps + 1))  # streamed
    assert report["last_loss"] < report["first_loss"] / 3

    gguf_lora = convert_peft_to_gguf(adapter_dir, settings.home / "train" / "run-1.gguf")
    stored, sha = store_adapter(gguf_lora, settings.home)
    tuned = _with_adapter(spec, stored, sha)

    async def answers(s: Spec) -> list[str]:
        out = []
        for country in HELD_OUT:
            result = await run_assistant(
                s, settings, f"What is the capital of {country}?", tools=[], persist=False
            )
            assert result.ok, result.trace.error
            out.append(result.answer)
        return out

    base_answers = await answers(spec)
    tuned_answers = await answers(tuned)
    print("base: ", base_answers, "\ntuned:", tuned_answers)
    assert not any("ahoy" in a.lower() for a in base_answers)
    assert all(a.startswith("Ahoy! The answer is") for a in tuned_answers)
