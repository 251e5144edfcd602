"""homespun's PEFT-to-GGUF LoRA converter against llama.cpp's own converter.

tests/fixtures/lora_parity/ holds a tiny PEFT LoRA over a llama-architecture base (all seven
projection modules, GQA with 4 heads over 2 kv heads) and ``official.gguf``: what llama.cpp's
``convert_lora_to_gguf.py`` from the llama-cpp-python 0.3.36 sdist made of it (see
tests/fixtures/make_lora_parity.py and lora_parity/SOURCE.json). homespun's converter must
write the same tensors, shapes, dtypes and values, and the adapter metadata llama.cpp checks
when it loads a LoRA.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "lora_parity"
ADAPTER = FIXTURE / "adapter"
BASE_CONFIG = FIXTURE / "base" / "config.json"
OFFICIAL = FIXTURE / "official.gguf"
SEVEN = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
# llama.cpp refuses a LoRA whose general.type, general.architecture or adapter.type is off
# (src/llama-adapter.cpp); adapter.lora.alpha sets the scale it applies.
METADATA = ["general.type", "general.architecture", "adapter.type", "adapter.lora.alpha"]


def _tensors(path: Path) -> dict[str, object]:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def _metadata(path: Path) -> dict[str, object]:
    fields = gguf.GGUFReader(path).fields
    return {key: fields[key].contents() if key in fields else None for key in METADATA}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K RoPE row permutation (LlamaModel.permute)."""
    rest = w.shape[1:]
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *rest).swapaxes(1, 2).reshape(w.shape)


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    rest = w.shape[1:]
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def _how_it_differs(ours: np.ndarray, official: np.ndarray) -> str:
    """For the failure message: which simple transform of llama.cpp's tensor ours is."""
    config = json.loads(BASE_CONFIG.read_text())
    heads = sorted({config["num_attention_heads"], config["num_key_value_heads"]})
    candidates: dict[str, np.ndarray] = {"transposed": official.T}
    for h in heads:
        if official.shape[0] % (2 * h):
            continue
        source = _unpermute(official, h)  # the PEFT rows, if llama.cpp permuted with h heads
        candidates[f"rows not RoPE-permuted (llama.cpp permutes with {h} heads)"] = source
        candidates[f"rows un-permuted instead of permuted ({h} heads)"] = _unpermute(source, h)
        for other in heads:
            if other != h and official.shape[0] % (2 * other) == 0:
                candidates[f"rows permuted with {other} heads, llama.cpp uses {h}"] = _permute(
                    source, other
                )
    if ours.shape == official.shape and float(np.vdot(official, official)):
        factor = float(np.vdot(official, ours)) / float(np.vdot(official, official))
        candidates[f"scaled: ours = {factor:.6g} x llama.cpp's"] = official * factor
    for what, expected in candidates.items():
        if expected.shape == ours.shape and np.allclose(ours, expected, rtol=0, atol=1e-6):
            return what
    if ours.shape != official.shape:
        return f"shape {ours.shape} vs llama.cpp's {official.shape}"
    return f"max abs diff {float(np.max(np.abs(ours - official))):.3g}, no simple transform"


def test_fixture_is_small_and_covers_all_seven_projections() -> None:
    files = [
        ADAPTER / "adapter_config.json",
        ADAPTER / "adapter_model.safetensors",
        BASE_CONFIG,
        OFFICIAL,
    ]
    for f in files:
        assert f.is_file(), f
    total = sum(p.stat().st_size for p in FIXTURE.rglob("*") if p.is_file())
    assert total < 2 * 1024 * 1024, total

    layers = json.loads(BASE_CONFIG.read_text())["num_hidden_layers"]
    expected = {
        f"blk.{i}.{module}.weight.{ab}"
        for i in range(layers)
        for module in SEVEN
        for ab in ("lora_a", "lora_b")
    }
    assert set(_tensors(OFFICIAL)) == expected
    assert json.loads((ADAPTER / "adapter_config.json").read_text())["lora_alpha"] == 8


def test_converter_matches_llama_cpp_tensor_by_tensor(tmp_path: Path) -> None:
    from homespun.learning.training.gguf_lora import convert_peft_to_gguf

    base_config = json.loads(BASE_CONFIG.read_text())
    out = convert_peft_to_gguf(ADAPTER, tmp_path / "adapter.gguf", base_config=base_config)
    assert Path(out).is_file()

    official = _tensors(OFFICIAL)
    ours = _tensors(Path(out))
    assert sorted(ours) == sorted(official)

    differing: list[str] = []
    for name, ref in official.items():
        mine = ours[name]
        assert ref.tensor_type == gguf.GGMLQuantizationType.F32, (name, ref.tensor_type)
        a, b = np.asarray(mine.data), np.asarray(ref.data)
        if mine.tensor_type != gguf.GGMLQuantizationType.F32:
            differing.append(f"{name}: type {mine.tensor_type.name}, llama.cpp's is F32")
        elif [int(d) for d in mine.shape] != [int(d) for d in ref.shape] or a.shape != b.shape:
            shapes = f"GGUF shape {[int(d) for d in mine.shape]} vs {[int(d) for d in ref.shape]}"
            differing.append(f"{name}: {shapes}, {_how_it_differs(a, b)}")
        elif not np.allclose(a, b, rtol=0, atol=1e-6):
            differing.append(f"{name}: {_how_it_differs(a, b)}")
    assert not differing, "tensors differ from llama.cpp's:\n" + "\n".join(differing)
    for name, ref in official.items():
        np.testing.assert_allclose(
            np.asarray(ours[name].data), np.asarray(ref.data), rtol=0, atol=1e-6, err_msg=name
        )

    assert _metadata(Path(out)) == _metadata(OFFICIAL)
    assert _metadata(OFFICIAL) == {
        "general.type": "adapter",
        "general.architecture": "llama",
        "adapter.type": "lora",
        "adapter.lora.alpha": 8.0,
    }
