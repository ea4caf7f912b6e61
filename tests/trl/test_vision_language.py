"""ERAGRPOTrainer refuses vision-language models with a clear error (text-only causal LMs are supported)."""

from __future__ import annotations

import re

import pytest
from datasets import Dataset
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    Qwen2Config,
)
from trl import GRPOTrainer

from tests.trl.conftest import build_tokenizer, count_reward
from trl_era import ERAGRPOConfig, ERAGRPOTrainer

REFUSAL = (
    "^"
    + re.escape(
        "ERAGRPOTrainer supports text-only causal language models; vision-language models (a processor as "
        "processing_class) are not supported yet. Use GRPOTrainer for them."
    )
    + "$"
)


def _tiny_llava() -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A randomly initialised two-layer Llava (CLIP vision tower, Qwen2 text model) and its processor."""
    tokenizer = build_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 28}, crop_size=28),
        tokenizer=tokenizer,
        patch_size=14,
    )
    small = dict(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=28, patch_size=14, **small),
        text_config=Qwen2Config(
            vocab_size=len(tokenizer), num_key_value_heads=1, pad_token_id=0, eos_token_id=1, **small
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    return LlavaForConditionalGeneration(config), processor


def test_vision_language_model_with_a_processor_is_refused(config_kwargs):
    model, processor = _tiny_llava()
    with pytest.raises(NotImplementedError, match=REFUSAL):
        ERAGRPOTrainer(
            model=model,
            reward_funcs=count_reward,
            args=ERAGRPOConfig(**config_kwargs),
            train_dataset=Dataset.from_dict({"prompt": ["a b c"] * 8}),
            processing_class=processor,
        )


def test_a_given_processor_is_refused_before_grpo_trainer_builds_anything(config_kwargs, monkeypatch):
    """The refusal comes first: GRPOTrainer's __init__ (model loading, reference model, generation) never runs."""
    calls = []
    monkeypatch.setattr(GRPOTrainer, "__init__", lambda self, *args, **kwargs: calls.append(args))
    _, processor = _tiny_llava()
    with pytest.raises(NotImplementedError, match=REFUSAL):
        ERAGRPOTrainer(
            model="any/model-id",
            reward_funcs=count_reward,
            args=ERAGRPOConfig(**config_kwargs),
            processing_class=processor,
        )
    assert calls == []


def test_a_processor_that_grpo_trainer_loads_itself_is_refused(config_kwargs, tmp_path):
    """A vision-language model given without a processing class: GRPOTrainer loads its processor from the model's
    directory, and the refusal follows."""
    model, processor = _tiny_llava()
    model.save_pretrained(tmp_path / "tiny-llava")
    processor.save_pretrained(tmp_path / "tiny-llava")
    with pytest.raises(NotImplementedError, match=REFUSAL):
        ERAGRPOTrainer(
            model=str(tmp_path / "tiny-llava"),
            reward_funcs=count_reward,
            args=ERAGRPOConfig(**config_kwargs),
            train_dataset=Dataset.from_dict({"prompt": ["a b c"] * 8}),
        )
