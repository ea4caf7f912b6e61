"""A tiny random-init Qwen2 causal LM with a locally trained byte-level BPE tokenizer, prompts and a reward."""

from __future__ import annotations

import os

import pytest
import torch
from datasets import Dataset
from tokenizers import ByteLevelBPETokenizer
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

WORDS = [f"w{i}" for i in range(45)]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer, as Qwen2's, trained on `WORDS`; `<pad>` is id 0 and `<eos>` id 1."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        [" ".join(WORDS)] * 3, vocab_size=300, min_frequency=1, special_tokens=["<pad>", "<eos>"]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, pad_token="<pad>", eos_token="<eos>", padding_side="left"
    )


VOCAB_SIZE = len(build_tokenizer())


def build_model(seed: int = 0) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def count_reward(completions, **kwargs) -> list[float]:
    """Rewards completions that contain `3` (and, a little, longer ones)."""
    return [float(completion.count("3")) + 0.1 * len(completion) for completion in completions]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> str:
    """The tiny model and its tokenizer saved as a local model directory (loads as Qwen2 with `Qwen2Tokenizer`)."""
    path = tmp_path_factory.mktemp("tiny-qwen2")
    build_model().save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def prompts() -> Dataset:
    return Dataset.from_dict(
        {"prompt": [" ".join(WORDS[(7 * i + j) % 45] for j in range(3 + i % 3)) for i in range(16)]}
    )


@pytest.fixture
def config_kwargs(tmp_path) -> dict:
    """ERAGRPOConfig keyword arguments for short CPU runs."""
    return dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=6,
        max_steps=2,
        learning_rate=1e-2,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        bf16=False,  # TRL defaults to bf16 autocast, also on CPU
        save_strategy="no",
        gradient_checkpointing=False,
        seed=0,
    )


#: Set by `test_this_file_passes_with_trls_triton_kernels_run_by_tritons_cpu_interpreter` (test_logprobs.py) for the
#: tests it runs again in a subprocess under Triton's CPU interpreter (`TRITON_INTERPRET=1`): TRL's fused head then
#: folds its tiles with its Triton kernels, as on GPUs.
TRITON_FOLD = os.environ.get("ERA_TEST_TRITON_FOLD") == "1"


@pytest.fixture(autouse=TRITON_FOLD)
def triton_fold(monkeypatch) -> None:
    """TRL's fused head folds with its Triton kernels whatever the device (run by Triton's interpreter on the CPU)."""
    from trl.kernels import chunked_logprob

    monkeypatch.setattr(chunked_logprob, "_use_triton", lambda device: True)
