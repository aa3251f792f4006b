"""SkinnyGemmLinear computes what nn.Linear computes (up to float reassociation) at every row count and input
rank, keeps the very same parameters, and a model using it decodes the same greedy tokens."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from emoserve.emotion_llama import llm
from emoserve.emotion_llama.generation import SamplingParams, generate_batch
from emoserve.emotion_llama.skinny_gemm import MAX_SKINNY_ROWS, SkinnyGemmLinear, use_skinny_gemm


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(0, 96), (1, 96), (2, 96), (3, 96), (MAX_SKINNY_ROWS, 96), (MAX_SKINNY_ROWS + 1, 96),
                                   (4, 1, 96), (1, 1, 96), (2, 7, 96), (1, 300, 96)])
def test_equals_f_linear(shape, bias):
    torch.manual_seed(0)
    linear = nn.Linear(96, 200, bias=bias)
    x = torch.randn(*shape)
    with torch.inference_mode():
        got, expected = SkinnyGemmLinear(linear)(x), F.linear(x, linear.weight, linear.bias)
    assert got.shape == expected.shape and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_replaces_every_linear_and_keeps_the_parameters(tiny):
    model = copy.deepcopy(tiny[0])
    before = {name: parameter for name, parameter in model.named_parameters()}
    linears = sum(type(m) is nn.Linear for m in model.modules())
    assert use_skinny_gemm(model) == linears > 0
    assert not any(type(m) is nn.Linear for m in model.modules())
    after = dict(model.named_parameters())
    assert after.keys() == before.keys() and all(after[name] is before[name] for name in before)


def test_a_skinny_model_decodes_the_same_greedy_tokens(tiny):
    model, tokenizer, _ = tiny
    skinny = copy.deepcopy(model)
    use_skinny_gemm(skinny)
    params = SamplingParams(temperature=0.0, top_p=1.0, repetition_penalty=1.0, top_k=0, max_new_tokens=24,
                            min_new_tokens=24)
    prompts = [llm.embed_tokens(model, tokenizer(text, add_special_tokens=False)["input_ids"])
               for text in ("Tell me about the sea", "Hi", "Why are you looking at me like this?")]
    for batch in (prompts[:1], prompts):  # one row (doubled inside) and several
        expected = generate_batch(model, tokenizer, batch, [params] * len(batch))
        got = generate_batch(skinny, tokenizer, batch, [params] * len(batch))
        for mine, reference in zip(got, expected):
            assert mine.token_ids == reference.token_ids
            torch.testing.assert_close(torch.tensor(mine.token_logprobs), torch.tensor(reference.token_logprobs),
                                       rtol=0, atol=1e-4)
