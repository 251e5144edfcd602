"""PEFT adapter -> GGUF LoRA: names, shapes, metadata and the Q/K row order llama.cpp needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
gguf = pytest.importorskip("gguf")

from homespun.learning.training.gguf_lora import (  # noqa: E402
    LoraConversionError,
    convert_peft_to_gguf,
)

N_HEAD, N_KV_HEAD, HEAD_DIM, HIDDEN, FFN, LAYERS, RANK = 4, 2, 8, 32, 48, 2, 4
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GGUF_NAMES = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}


def reference_rope_rows(rows: int, n_head: int) -> list[int]:
    """Which source row lands at each output row, written out by hand: llama.cpp wants the
    rotary pairs of each head interleaved (row 2j from j, row 2j+1 from j + d/2), where
    the HF layout keeps the two halves apart."""
    d = rows // n_head
    order = []
    for h in range(n_head):
        for j in range(d // 2):
            order += [h * d + j, h * d + d // 2 + j]
    return order


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory) -> tuple[Path, dict, dict]:
    """A randomly initialised (non-zero B) LoRA on every projection of a tiny llama."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=N_HEAD,
        num_key_value_heads=N_KV_HEAD,
        head_dim=HEAD_DIM,
    )
    model = get_peft_model(
        LlamaForCausalLM(config),
        LoraConfig(r=RANK, lora_alpha=11, target_modules=TARGETS, init_lora_weights=False),
    )
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    saved = load_file(out / "adapter_model.safetensors")
    tensors = {k: v.float().numpy() for k, v in saved.items()}
    return out, config.to_dict(), tensors


def _peft(tensors: dict, layer: int, module: str, which: str):
    group = "self_attn" if module[0] in "qkvo" else "mlp"
    return tensors[f"base_model.model.model.layers.{layer}.{group}.{module}.lora_{which}.weight"]


def test_names_shapes_metadata_and_qk_permutation(tiny_adapter, tmp_path):
    adapter_dir, base_config, tensors = tiny_adapter
    out = convert_peft_to_gguf(adapter_dir, tmp_path / "lora.gguf", base_config=base_config)
    reader = gguf.GGUFReader(out)

    def field(name):
        f = reader.fields[name]
        value = f.parts[f.data[0]]
        return bytes(value).decode() if f.types[0] == gguf.GGUFValueType.STRING else value[0]

    assert field("general.architecture") == "llama"  # llama.cpp refuses another arch
    assert field("general.type") == "adapter"
    assert field("adapter.type") == "lora"
    assert field("adapter.lora.alpha") == pytest.approx(11.0)

    found = {t.name: t for t in reader.tensors}
    expected = {
        f"blk.{i}.{GGUF_NAMES[m]}.weight.lora_{ab}"
        for i in range(LAYERS)
        for m in TARGETS
        for ab in "ab"
    }
    assert set(found) == expected
    out_dims = {
        "q_proj": N_HEAD * HEAD_DIM,
        "k_proj": N_KV_HEAD * HEAD_DIM,
        "v_proj": N_KV_HEAD * HEAD_DIM,
        "o_proj": HIDDEN,
        "gate_proj": FFN,
        "up_proj": FFN,
        "down_proj": HIDDEN,
    }
    in_dims = {"o_proj": N_HEAD * HEAD_DIM, "down_proj": FFN}
    for layer in range(LAYERS):
        for module in TARGETS:
            a = found[f"blk.{layer}.{GGUF_NAMES[module]}.weight.lora_a"]
            b = found[f"blk.{layer}.{GGUF_NAMES[module]}.weight.lora_b"]
            assert a.tensor_type == b.tensor_type == gguf.GGMLQuantizationType.F32
            n_in, n_out = in_dims.get(module, HIDDEN), out_dims[module]
            # numpy order as PEFT stores them: A [r, in], B [out, r]; GGUF dims reversed.
            assert a.data.shape == (RANK, n_in) and list(a.shape) == [n_in, RANK]
            assert b.data.shape == (n_out, RANK) and list(b.shape) == [RANK, n_out]
            peft_a, peft_b = _peft(tensors, layer, module, "A"), _peft(tensors, layer, module, "B")
            assert (a.data == peft_a).all()  # A is never permuted
            if module in ("q_proj", "k_proj"):
                heads = N_HEAD if module == "q_proj" else N_KV_HEAD
                rows = reference_rope_rows(n_out, heads)
                assert (b.data == peft_b[rows]).all()
                assert not (b.data == peft_b).all()  # the permutation did something
            else:
                assert (b.data == peft_b).all()


def test_base_config_is_read_from_the_adapter_dir(tiny_adapter, tmp_path):
    adapter_dir, base_config, _ = tiny_adapter
    copy = tmp_path / "adapter"
    copy.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (copy / name).write_bytes((adapter_dir / name).read_bytes())
    with pytest.raises(LoraConversionError, match="base_config"):
        convert_peft_to_gguf(copy, tmp_path / "x.gguf")
    (copy / "base_config.json").write_text(json.dumps(base_config))
    explicit = convert_peft_to_gguf(adapter_dir, tmp_path / "a.gguf", base_config=base_config)
    implicit = convert_peft_to_gguf(copy, tmp_path / "b.gguf")
    assert explicit.read_bytes() == implicit.read_bytes()


def test_non_llama_bases_and_rslora_are_refused(tiny_adapter, tmp_path):
    adapter_dir, base_config, _ = tiny_adapter
    with pytest.raises(LoraConversionError, match="llama"):
        convert_peft_to_gguf(
            adapter_dir,
            tmp_path / "x.gguf",
            base_config={**base_config, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]},
        )
    rs = tmp_path / "rs"
    rs.mkdir()
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    (rs / "adapter_config.json").write_text(json.dumps({**config, "use_rslora": True}))
    (rs / "adapter_model.safetensors").write_bytes(
        (adapter_dir / "adapter_model.safetensors").read_bytes()
    )
    with pytest.raises(LoraConversionError, match="rslora"):
        convert_peft_to_gguf(rs, tmp_path / "y.gguf", base_config=base_config)
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "y.gguf").exists()
