"""A PEFT LoRA adapter as a GGUF LoRA file that llama.cpp loads (``--lora``, xllamacpp's
``lora_adapters``).

llama.cpp's own converter (``convert_lora_to_gguf.py``) ships with neither xllamacpp nor PyPI
``gguf``; for llama-architecture bases what it does is small, and this module does the same
on PyPI ``gguf``:

- ``model.layers.N.self_attn.{q,k,v,o}_proj`` / ``mlp.{gate,up,down}_proj`` become
  ``blk.N.{attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down}.weight.lora_a|lora_b``;
- lora_a is written as PEFT stores it, ``[r, in]``, lora_b as ``[out, r]`` (numpy order; the
  GGUF dims are the reverse), in float32;
- the rows of q_proj's and k_proj's lora_b are permuted the way the converter permutes llama
  Q/K weights for llama.cpp's RoPE layout (and transformers un-permutes when it reads a
  GGUF), so that B @ A lines up with the GGUF's weight rows; lora_a is unchanged;
- metadata ``general.architecture = llama``, ``general.type = adapter``,
  ``adapter.type = lora``, ``adapter.lora.alpha``; llama.cpp scales by alpha / r.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

__all__ = ["convert_peft_to_gguf", "permute_qk", "LoraConversionError"]

_MODULES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_NAME = re.compile(
    r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)"
    r"\.lora_([AB])\.weight$"
)
_LLAMA_ARCHS = {"LlamaForCausalLM", "LlamaModel"}


class LoraConversionError(ValueError):
    """The adapter cannot be expressed as a llama.cpp LoRA by this converter."""


def permute_qk(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K row order: within each head, the two rotary halves interleaved.

    Rows of head h are ``[h, 2, d/2]`` in the HF layout and become ``[h, d/2, 2]``
    (``LlamaModel.permute`` of the official converter, with ``n_head`` already the KV head
    count for K)."""
    rows = weights.shape[0]
    if rows % (2 * n_head):
        raise LoraConversionError(f"{rows} rows cannot be split into {n_head} heads of pairs")
    return (
        weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _load_base_config(adapter_dir: Path, base_config: dict[str, Any] | None) -> dict[str, Any]:
    if base_config is not None:
        return base_config
    path = adapter_dir / "base_config.json"
    if not path.is_file():
        raise LoraConversionError(
            f"{adapter_dir} has no base_config.json: pass base_config (the base model's "
            "config.json as a dict)"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def _check_supported(lora_config: dict[str, Any], base: dict[str, Any]) -> None:
    archs = set(base.get("architectures") or [])
    if base.get("model_type") != "llama" and not archs & _LLAMA_ARCHS:
        raise LoraConversionError(
            f"only llama-architecture bases are supported, not model_type="
            f"{base.get('model_type')!r} {sorted(archs)}"
        )
    for key in ("use_rslora", "use_dora"):
        if lora_config.get(key):
            raise LoraConversionError(f"{key} adapters are not supported by llama.cpp's LoRA")
    for key in ("rank_pattern", "alpha_pattern"):
        if lora_config.get(key):
            raise LoraConversionError(
                f"{key} is set: one GGUF adapter has a single alpha and rank per file"
            )
    if lora_config.get("modules_to_save"):
        raise LoraConversionError("modules_to_save (fully trained layers) cannot be converted")


def convert_peft_to_gguf(
    adapter_dir: Path, out_path: Path, *, base_config: dict[str, Any] | None = None
) -> Path:
    """Write the PEFT adapter in `adapter_dir` as a GGUF LoRA at `out_path` and return it.

    ``base_config`` is the base model's config (for the Q/K head counts); by default it is
    read from ``base_config.json``, which `train_lora` writes next to the adapter.
    """
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    adapter_dir = Path(adapter_dir)
    out_path = Path(out_path)
    lora_config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    base = _load_base_config(adapter_dir, base_config)
    _check_supported(lora_config, base)
    n_head = int(base["num_attention_heads"])
    n_kv_head = int(base.get("num_key_value_heads") or n_head)
    alpha = float(lora_config["lora_alpha"])

    weights_path = adapter_dir / "adapter_model.safetensors"
    if not weights_path.is_file():
        raise LoraConversionError(f"{weights_path} does not exist (only safetensors adapters)")
    tensors = load_file(str(weights_path))

    pairs: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for name, value in tensors.items():
        m = _NAME.match(name)
        if m is None:
            raise LoraConversionError(
                f"adapter tensor {name!r} is not a LoRA of a llama attention or MLP projection"
            )
        layer, module, which = int(m.group(1)), m.group(2), m.group(3)
        pairs.setdefault((layer, module), {})[which] = value
    if not pairs:
        raise LoraConversionError(f"{weights_path} holds no LoRA tensors")

    out: list[tuple[str, np.ndarray]] = []
    for (layer, module), ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise LoraConversionError(f"layer {layer} {module} lacks lora_A or lora_B")
        a = np.ascontiguousarray(ab["A"], dtype=np.float32)  # [r, in]
        b = np.ascontiguousarray(ab["B"], dtype=np.float32)  # [out, r]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise LoraConversionError(
                f"layer {layer} {module}: lora_A {a.shape} and lora_B {b.shape} do not pair"
            )
        if module == "self_attn.q_proj":
            b = permute_qk(b, n_head)
        elif module == "self_attn.k_proj":
            b = permute_qk(b, n_kv_head)
        base_name = f"blk.{layer}.{_MODULES[module]}.weight"
        out.append((base_name + ".lora_a", np.ascontiguousarray(a)))
        out.append((base_name + ".lora_b", np.ascontiguousarray(b)))

    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(str(tmp), arch="llama")
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for name, data in out:
            writer.add_tensor(name, data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out_path
