"""What on-device training costs on this machine.

1. LoRA training steps per second on the embedded SmolLM2 model with 1 and 2 torch threads
   (the difference of an 8-step and a 2-step run, so model loading is not counted).
2. The wall time of one train_lora gate decision (train, convert, store, evaluate the
   adapted spec on the held-out tasks) against one prompt-edit gate decision (apply,
   evaluate), as a ratio. Both evaluate the same held-out tasks with the real engine.

    python benchmarks/train_cost.py [--steps 30]

Needs the train extra and the default model (`homespun models pull smollm2-135m`).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path

from homespun.engines.catalog import pull_model
from homespun.learning.evaluation import evaluate
from homespun.learning.tasks import Grade, SimpleEnvironment, Task
from homespun.learning.training.data import sft_examples_from_pairs
from homespun.learning.training.edit import train_for_proposal
from homespun.learning.training.sft import TrainConfig, run_training_subprocess
from homespun.spec import Settings, Spec
from homespun.spec.edits import PatchSystemPrompt, Proposal, TrainLora, apply_proposal

CODE = "PINEAPPLE-42"
PLACES = ("garden", "garage", "cellar", "attic", "boat", "office", "cabin", "studio")


class Codeword:
    name, version = "codeword", "1"

    def tasks(self):
        return [
            Task(
                id=p,
                query=f"What is the secret code word for the {p}?",
                category="codeword",
                gold=f"The code word is {CODE}.",
            )
            for p in PLACES
        ]

    @asynccontextmanager
    async def environment(self, task, spec, settings):
        yield SimpleEnvironment(
            tools=[],
            grader=lambda tr: Grade(
                CODE in (tr.final_answer or ""), float(CODE in (tr.final_answer or ""))
            ),
        )


def steps_per_second(gguf: Path, spec: Spec, threads: int, cache: Path) -> float:
    pairs = [(t.query, t.gold) for t in Codeword().tasks()]
    examples = sft_examples_from_pairs(spec, pairs)
    times = {}
    for steps in (2, 8):
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            run_training_subprocess(
                gguf,
                examples,
                Path(tmp) / "out",
                TrainConfig(steps=steps, threads=threads),
                cache_dir=cache,
            )
            times[steps] = time.perf_counter() - started
    return 6 / max(times[8] - times[2], 1e-9)


async def gate_decision(spec: Spec, settings: Settings, proposal: Proposal) -> float:
    bench = Codeword()
    tasks = bench.tasks()
    search, held_out = tasks[:4], tasks[4:]
    started = time.perf_counter()
    if any(isinstance(o, TrainLora) for o in proposal.ops):
        proposal = await asyncio.to_thread(
            train_for_proposal,
            proposal,
            spec=spec,
            settings=settings,
            pairs=[(t.query, t.gold) for t in search],
        )
    candidate = apply_proposal(spec, proposal)
    await evaluate(candidate, settings, bench, held_out)
    return time.perf_counter() - started


async def main(steps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(home=Path(tmp))
        gguf = pull_model("smollm2-135m", settings.models_path, progress=False)
        spec = Spec()
        spec.agent.loop, spec.agent.few_shot, spec.intelligence.max_tokens = "simple", [], 24
        cache = settings.home / "cache" / "training"
        # warm the dequantised-model cache once, so neither measurement pays for it
        steps_per_second(gguf, spec, 2, cache)
        rates = {t: steps_per_second(gguf, spec, t, cache) for t in (1, 2)}
        print(
            f"LoRA training steps/s (SmolLM2-135M, batch 8): 1 thread {rates[1]:.3f}, "
            f"2 threads {rates[2]:.3f} ({rates[2] / rates[1]:.2f}x)"
        )
        await evaluate(spec, settings, Codeword(), Codeword().tasks()[4:])  # warm the engine
        prompt = Proposal(
            target_cluster="codeword",
            ops=[PatchSystemPrompt(mode="append", text=f"The secret code word is {CODE}.")],
        )
        train = Proposal(
            target_cluster="codeword", ops=[TrainLora(steps=steps, learning_rate=0.002)]
        )
        t_prompt = await gate_decision(spec, settings, prompt)
        t_train = await gate_decision(spec, settings, train)
        print(f"one prompt-edit gate decision: {t_prompt:.1f} s")
        print(f"one train_lora gate decision ({steps} steps): {t_train:.1f} s")
        print(f"ratio train_lora / prompt edit: {t_train / t_prompt:.1f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    asyncio.run(main(parser.parse_args().steps))
