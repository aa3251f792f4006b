"""The tiny random Llama (hidden 64, 2 layers) with SmolLM2's real tokenizer, built once per session."""

from __future__ import annotations

import pytest

from emoserve.emotion_llama import llm

# SmolLM2 spells every one of the 9 labels as one token: these words of 2-4 tokens exercise the cached continuation
LONG_LABELS = ("happy", "flabbergasted", "apprehensive", "contemptuous", "sad")


@pytest.fixture(scope="session")
def smol_tokenizer():
    return llm.load_smollm2_tokenizer()


@pytest.fixture(scope="session")
def tiny_llm_folder(tmp_path_factory, smol_tokenizer):
    return llm.build_tiny_llama(tmp_path_factory.mktemp("tiny_llm") / "tiny", seed=0, tokenizer=smol_tokenizer)


@pytest.fixture(scope="session")
def tiny(tiny_llm_folder):
    model, tokenizer, family = llm.load_llm(tiny_llm_folder)
    return model, tokenizer, family
