"""Cost of ERA's training step against TRL's plain GRPOTrainer on the same model and generated batch.

The step is the loss's forward and backward (`trainer.compute_loss(...)` then `.backward()`) on a fixed batch of
completions, the part of a GRPO iteration that ERA changes (generation and rewards are untouched). All modes share
one model and batch, and their steps are interleaved (one step of each mode per round), so that a load change on
the machine hits every mode alike:

- ``grpo``: `trl.GRPOTrainer` (the baseline);
- ``era-idle``: `ERAGRPOTrainer` whose bounds no entropy can cross (``era_lb=0``, ``era_ub >= log V``): nothing
  can be rescaled, so only ERA's bookkeeping runs;
- ``era-inside``: bounds that both can be crossed (``0 < era_lb``, ``era_ub < log V``) but contain every
  response's entropy (near ``log V`` for a random-init model): the positive-advantage responses are scored at
  both factors in the forward, none is rescaled;
- ``era-quarter``: a quarter of the responses rescaled (those with the largest advantages);
- ``era-half``: every positive-advantage response (half the batch) rescaled, ERA's most expensive case for a
  GRPO batch without top-k;
- ``era-topk20``: as ``era-half`` with the authors' stage-one top-20 filter on every response (TRL's
  full-vocabulary pass then only gives the entropies and needs no backward).

Memory is the peak of allocated tensor memory during a step, and that peak above what was allocated before the
step: `torch.cuda.max_memory_allocated` on a GPU, the PyTorch profiler's memory timeline of one extra step on a
CPU. Offline and self-contained (random-init model, locally
trained tokenizer)::

    PYTHONPATH=. python benchmarks/trl_step.py                                   # CPU, small model
    PYTHONPATH=. python benchmarks/trl_step.py --device cuda --preset qwen2-0.5b # GPU, Qwen2-0.5B shape, bf16
    PYTHONPATH=. python benchmarks/trl_step.py --profile --modes grpo era-idle era-half   # per-op table
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

PRESETS = {
    # A small model for CPUs.
    "small": dict(
        config=dict(
            vocab_size=16384,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        ),
        dtype="float32",
        batch=8,
        prompt_length=16,
        completion_length=64,
    ),
    # The shape of Qwen2-0.5B (and Qwen2.5-0.5B), with random weights.
    "qwen2-0.5b": dict(
        config=dict(
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            rope_theta=1000000.0,
        ),
        dtype="bfloat16",
        batch=8,
        prompt_length=128,
        completion_length=1024,
    ),
}
MODES = {
    "grpo": None,
    "era-idle": dict(era_lb=0.0, era_ub=1e9),
    # `era_ub` just below log V, above the random-init model's response entropies (the "rescaled" column checks).
    "era-inside": dict(era_lb=1e-4, era_ub=lambda vocab_size: math.log(vocab_size) - 0.004),
    "era-quarter": dict(era_lb=1e-4, era_ub=1e-3, era_adv_threshold=1.5),
    "era-half": dict(era_lb=1e-4, era_ub=1e-3),
    "era-topk20": dict(era_lb=0.0, era_ub=1e-3, era_topk_logits=20),
}


def build_model(preset: dict, device: str):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**preset["config"], max_position_embeddings=32768, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    with torch.device(device):
        return Qwen2ForCausalLM._from_config(config, dtype=getattr(torch, preset["dtype"]))


def build_trainer(mode: str, model, preset: dict, device: str, output_dir: str):
    """A trainer of `mode` around `model` (every mode shares the model: TRL patches its forward the same way)."""
    from datasets import Dataset
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast
    from trl import GRPOConfig, GRPOTrainer

    from trl_era import ERAGRPOConfig, ERAGRPOTrainer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["a b c d e f g"], vocab_size=300, special_tokens=["<pad>", "<eos>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, pad_token="<pad>", eos_token="<eos>", padding_side="left"
    )
    common = dict(
        output_dir=output_dir,
        per_device_train_batch_size=preset["batch"],
        num_generations=preset["batch"] // 2,  # the batch holds 2 groups
        max_completion_length=preset["completion_length"],
        report_to="none",
        use_cpu=device == "cpu",
        bf16=preset["dtype"] == "bfloat16",
        loss_type="dapo",
    )
    vocab_size = model.config.vocab_size
    era = MODES[mode] and {
        key: value(vocab_size) if callable(value) else value for key, value in MODES[mode].items()
    }
    config_class, trainer_class = (
        (GRPOConfig, GRPOTrainer) if era is None else (ERAGRPOConfig, ERAGRPOTrainer)
    )
    trainer = trainer_class(
        model=model,
        reward_funcs=lambda completions, **kwargs: [0.0] * len(completions),
        args=config_class(**common, **(era or {})),
        train_dataset=Dataset.from_dict({"prompt": ["a b c"] * preset["batch"]}),
        processing_class=tokenizer,
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by `train()`; the loss reads it
    return trainer


def fixed_batch(preset: dict, vocab_size: int, device: str) -> dict:
    """A generated batch as GRPOTrainer stores it: advantages 2, 1, -1, -2 in turn, ragged completion lengths."""
    import torch

    generator = torch.Generator().manual_seed(0)
    batch, prompt_length, completion_length = (
        preset["batch"],
        preset["prompt_length"],
        preset["completion_length"],
    )
    prompt_ids = torch.randint(2, vocab_size, (batch, prompt_length), generator=generator)
    completion_ids = torch.randint(2, vocab_size, (batch, completion_length), generator=generator)
    lengths = torch.randint(completion_length // 2, completion_length + 1, (batch,), generator=generator)
    completion_mask = (torch.arange(completion_length) < lengths.unsqueeze(-1)).long()
    advantages = torch.tensor([2.0, 1.0, -1.0, -2.0] * (batch // 4))
    result = dict(
        prompt_ids=prompt_ids,
        prompt_mask=torch.ones_like(prompt_ids),
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        advantages=advantages,
        num_items_in_batch=completion_mask.sum(),
    )
    return {key: value.to(device) for key, value in result.items()}


def cpu_memory_before_and_peak(step, output_dir: str) -> tuple[float, float]:
    """Allocated CPU tensor bytes at the start of one step and at its peak, from the profiler's memory timeline."""
    from torch.profiler import ProfilerActivity, profile

    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        step()
    path = os.path.join(output_dir, "memory_timeline.json")
    prof.export_memory_timeline(path, device="cpu")
    with open(path) as file:
        _, sizes = json.load(file)
    totals = [sum(categories) for categories in sizes]
    return totals[0], max(totals)


def measure(args: argparse.Namespace) -> list[dict]:
    """Interleaved timings (one step of every mode per round, rotating the order) and each mode's peak memory."""
    import tempfile

    import torch

    torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    cuda = args.device == "cuda"
    with tempfile.TemporaryDirectory() as output_dir:
        model = build_model(preset, args.device)
        trainers = {mode: build_trainer(mode, model, preset, args.device, output_dir) for mode in args.modes}
        batch = fixed_batch(preset, preset["config"]["vocab_size"], args.device)

        clock = time.process_time if args.clock == "cpu" else time.perf_counter

        def step(trainer) -> float:
            if cuda:
                torch.cuda.synchronize()
            start = clock()
            trainer.compute_loss(model, batch).backward()
            if cuda:
                torch.cuda.synchronize()
            elapsed = clock() - start
            model.zero_grad(set_to_none=True)
            return elapsed

        for _ in range(args.warmup):
            for trainer in trainers.values():
                step(trainer)
        times = {mode: [] for mode in args.modes}
        for round_index in range(args.repeats):
            order = args.modes[round_index % len(args.modes) :] + args.modes[: round_index % len(args.modes)]
            for mode in order:
                times[mode].append(step(trainers[mode]))
        results = []
        for mode, trainer in trainers.items():
            if cuda:
                torch.cuda.synchronize()
                before = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                step(trainer)
                peak = torch.cuda.max_memory_allocated()
            else:
                before, peak = cpu_memory_before_and_peak(lambda trainer=trainer: step(trainer), output_dir)
            metrics = {
                key: values[-1] for key, values in trainer._metrics["train"].items() if key.startswith("era/")
            }
            results.append(
                {
                    "mode": mode,
                    "time_median_s": statistics.median(times[mode]),
                    "time_min_s": min(times[mode]),
                    "peak_mib": peak / 2**20,
                    "peak_above_start_mib": (peak - before) / 2**20,
                    "era_metrics": metrics,
                }
            )
    return results


def profile_ops(args: argparse.Namespace) -> dict:
    """Per-op calls, self time and self allocated memory (net) of one step of each mode (torch.profiler).

    On a GPU the time is the op's own kernels' (``self_cuda_ms``, besides ``self_cpu_ms``) and the memory the
    device's.
    """
    import tempfile

    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with tempfile.TemporaryDirectory() as output_dir:
        model = build_model(preset, args.device)
        batch = fixed_batch(preset, preset["config"]["vocab_size"], args.device)
        table = {}
        for mode in args.modes:
            trainer = build_trainer(mode, model, preset, args.device, output_dir)
            for _ in range(max(args.warmup, 1)):
                trainer.compute_loss(model, batch).backward()
                model.zero_grad(set_to_none=True)
            with profile(activities=activities, profile_memory=True) as prof:
                trainer.compute_loss(model, batch).backward()
            model.zero_grad(set_to_none=True)
            for event in prof.key_averages():
                row = table.setdefault(event.key, {})
                row[mode] = {
                    "calls": event.count,
                    "self_cpu_ms": event.self_cpu_time_total / 1e3,
                    "self_alloc_mib": event.self_cpu_memory_usage / 2**20,
                }
                if args.device == "cuda":
                    row[mode]["self_cuda_ms"] = event.self_device_time_total / 1e3
                    row[mode]["self_alloc_mib"] = event.self_device_memory_usage / 2**20
    return table


def print_profile(table: dict, modes: list[str], top: int) -> None:
    """The ops whose calls or allocations differ between modes, then the rest, by their largest self CPU time."""

    def cell(op: str, mode: str, key: str) -> float:
        return table[op].get(mode, {}).get(key, 0)

    def differs(op: str) -> bool:
        return any(len({cell(op, m, key) for m in modes}) > 1 for key in ("calls", "self_alloc_mib"))

    # A GPU profile ranks and shows the ops by their kernels' time, a CPU one by the ops' own CPU time.
    on_gpu = any("self_cuda_ms" in row for op_rows in table.values() for row in op_rows.values())
    time_key, time_name = ("self_cuda_ms", "CUDA") if on_gpu else ("self_cpu_ms", "CPU")
    ops = sorted(table, key=lambda op: (not differs(op), -max(cell(op, m, time_key) for m in modes)))
    print(f"{f'op (calls / self {time_name} ms / self alloc MiB)':<44}" + "".join(f"{m:>26}" for m in modes))
    for op in ops[:top]:
        cells = "".join(
            f"{cell(op, m, 'calls'):>6} {cell(op, m, time_key):>9.1f} {cell(op, m, 'self_alloc_mib'):>9.1f}"
            for m in modes
        )
        print(f"{op[:43]:<44}{cells}{'' if differs(op) else '  (same calls and allocations)'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    parser.add_argument(
        "--clock",
        choices=["auto", "wall", "cpu"],
        default="auto",
        help="auto: the process's CPU time on a CPU (other programs on shared cores do not count), wall on a GPU",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of timing: per-op calls, self CPU time and allocations of one step of each mode",
    )
    parser.add_argument("--top", type=int, default=40, help="ops printed by --profile")
    args = parser.parse_args()
    if args.clock == "auto":
        args.clock = "cpu" if args.device == "cpu" else "wall"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.profile:
        table = profile_ops(args)
        print_profile(table, args.modes, args.top)
        out = (
            args.out
            or Path(__file__).parent / "results" / f"trl_step-profile-{args.preset}-{args.device}.json"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "ops": table}, indent=2))
        print(f"wrote {out}")
        return
    results = measure(args)

    baseline = next((r for r in results if r["mode"] == "grpo"), results[0])
    for result in results:
        result["time_ratio"] = result["time_median_s"] / baseline["time_median_s"]
        result["peak_above_start_ratio"] = result["peak_above_start_mib"] / max(
            baseline["peak_above_start_mib"], 1e-9
        )
    device_name = args.device
    if args.device == "cuda":
        import torch

        device_name = torch.cuda.get_device_name()
    preset = PRESETS[args.preset]
    print(
        f"ERA vs GRPO training step (compute_loss + backward), preset {args.preset} on {device_name}: "
        f"batch {preset['batch']} x (prompt {preset['prompt_length']} + completion {preset['completion_length']}), "
        f"vocab {preset['config']['vocab_size']}, {preset['dtype']}, median of {args.repeats}, {args.clock} clock"
    )
    print(
        f"{'mode':<12} {'time [s]':>9} {'x grpo':>7} {'peak [MiB]':>11} {'x grpo':>7} {'peak+ [MiB]':>12} {'x grpo':>7}  rescaled"
    )
    for r in results:
        r["peak_ratio"] = r["peak_mib"] / baseline["peak_mib"]
        rescaled = r["era_metrics"].get("era/frac_sharpened", 0.0) + r["era_metrics"].get(
            "era/frac_flattened", 0.0
        )
        print(
            f"{r['mode']:<12} {r['time_median_s']:>9.4f} {r['time_ratio']:>7.3f} {r['peak_mib']:>11.1f} "
            f"{r['peak_ratio']:>7.3f} {r['peak_above_start_mib']:>12.1f} {r['peak_above_start_ratio']:>7.3f}  {rescaled:.2f}"
        )
    out = args.out or Path(__file__).parent / "results" / f"trl_step-{args.preset}-{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "trl_step",
        "device": device_name,
        "preset": args.preset,
        "shape": preset,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "threads": args.threads,
        "clock": args.clock,
        "command": "python " + " ".join(sys.argv),
        "results": results,
    }
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
