"""On-device LoRA training: the Intelligence edit that changes the model's weights.

The pipeline, each step its own module:

1. `data`: examples in exactly the prompt format the assistant uses at inference
   (from (question, answer) pairs or from high-feedback traces, scrubbed);
2. `sft`: a LoRA trained with a plain torch loop on the runtime's own GGUF, opened by
   transformers (`model`), usually in a subprocess (`run_training_subprocess`) with its own
   thread budget, while the engine is idle;
3. `gguf_lora`: the PEFT adapter converted to a GGUF LoRA that llama.cpp loads;
4. `adapters`: the file stored under HOMESPUN_HOME/adapters/<sha256>.gguf, which the spec
   names in ``intelligence.adapters`` (path + sha256 + scale).

torch, transformers, peft and gguf come with the ``train`` extra; nothing here imports them
until it is called.
"""

from .adapters import store_adapter
from .data import SFTExample, sft_examples_from_pairs, sft_examples_from_traces
from .gguf_lora import LoraConversionError, convert_peft_to_gguf
from .sft import (
    TrainConfig,
    TrainingError,
    TrainProgress,
    run_training_subprocess,
    train_lora,
)

__all__ = [
    "LoraConversionError",
    "SFTExample",
    "TrainConfig",
    "TrainProgress",
    "TrainingError",
    "convert_peft_to_gguf",
    "run_training_subprocess",
    "sft_examples_from_pairs",
    "sft_examples_from_traces",
    "store_adapter",
    "train_lora",
]
