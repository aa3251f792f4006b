"""Emotion-LLaMA LLM side: prompts, prompt embedding, batched decoding, label confidence, LoRA merge.

Uses a random tiny Llama (hidden 64, 2 layers) with SmolLM2's real tokenizer, built once per module.
SmolLM2 itself (the default LLM) runs from its cached conversion (``llm.smollm2_cache_dir()``: ~25 s the first
time on a machine, well under a second to load after).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from emoserve.emotion_llama import llm
from emoserve.emotion_llama.defaults import EMOTION_LLAMA
from emoserve.emotion_llama.generation import (
    DEMO_DEFAULTS,
    GREEDY,
    GenerationResult,
    IncrementalDetokenizer,
    SamplingParams,
    emotion_confidence,
    generate_batch,
    label_token_ids,
)
from emoserve.emotion_llama.prompts import (
    CHATML,
    EMOTION_INSTRUCTION,
    EMOTION_LABELS,
    LLAMA2,
    MER2023_LABELS,
    MULTIMODAL_PREFIX,
    TASK_ANSWERS,
    USER_TEMPLATE,
    VIDEO_PLACEHOLDER,
    answer_limits,
    build_prompt,
    format_question,
    parse_emotion_label,
    parse_task,
    validate_question,
)
from tests.unit.emotion_llama.conftest import LONG_LABELS

QUESTION = "The person in video says: Why are you looking at me like this?  [reason] What is the emotional state?"


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, top_p=1.0, repetition_penalty=1.0, top_k=0, max_new_tokens=n, **kw)


def text_embeds(model, tokenizer, text: str) -> torch.Tensor:
    return llm.embed_tokens(model, tokenizer(text, add_special_tokens=False)["input_ids"])


def with_lm_head_bias(model, bias: dict[int, float]):
    """Replace the (bias-free) lm_head by an equal Linear with a bias favouring some tokens."""
    old = model.lm_head
    new = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        new.weight.copy_(old.weight)
        new.bias.zero_()
        for token, value in bias.items():
            new.bias[token] = value
    model.lm_head = new
    return old


# ---- prompts ------------------------------------------------------------------------------------------


def test_templates_match_upstream():
    assert EMOTION_LABELS == ("neutral", "angry", "happy", "sad", "worried", "surprise", "fear", "contempt", "doubt")
    assert MER2023_LABELS == EMOTION_LABELS[:6]
    assert MULTIMODAL_PREFIX == "<video><VideoHere></video> <feature><FeatureHere></feature>"
    # first_face.py: "<prefix> {character_line} [{task}] {instruction} " with character_line "... says: {s}. "
    assert USER_TEMPLATE.format(sentence="Hi", task="emotion", instruction="Go.") == (
        "<video><VideoHere></video> <feature><FeatureHere></feature> The person in video says: Hi.  [emotion] Go. "
    )
    assert format_question("Hi", "reason", "Why?") == "The person in video says: Hi.  [reason] Why? "


def test_llama2_prompt_layouts():
    # app.py / app_EmotionLlamaClient.py: the prefix is its own user turn (Chat.ask does not merge it)
    assert build_prompt(QUESTION, LLAMA2) == (
        "<s>[INST] <video><VideoHere></video> <feature><FeatureHere></feature><s>[INST] " + QUESTION + " [/INST]"
    )
    # eval_emotion.py prepare_texts: one turn
    assert build_prompt(QUESTION, LLAMA2, layout="eval") == (
        "<s>[INST] <video><VideoHere></video> <feature><FeatureHere></feature> " + QUESTION + " [/INST]"
    )
    with pytest.raises(ValueError):
        build_prompt(QUESTION, LLAMA2, layout="nope")
    with pytest.raises(ValueError):
        build_prompt(QUESTION, "gpt2")


def test_chatml_prompt_matches_smollm2_chat_template(smol_tokenizer):
    built_in = build_prompt(QUESTION, CHATML)
    assert built_in == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\n" + MULTIMODAL_PREFIX + " " + QUESTION + "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert build_prompt(QUESTION, CHATML, tokenizer=smol_tokenizer) == built_in
    for family in (LLAMA2, CHATML):
        assert build_prompt(QUESTION, family).count(VIDEO_PLACEHOLDER) == 1


def test_parse_task_and_validate_question():
    assert parse_task(QUESTION) == "reason"
    assert parse_task("[emotion] Which label?") == "emotion"
    assert parse_task("[Visual] describe") == "visual"
    assert parse_task("[identify] x [audio] y") == "audio"
    assert parse_task("no task here [x]") is None
    assert validate_question("hello", 10) == "hello"
    for bad in ("", "   \n", "x" * 11, "see <VideoHere>", "a <FeatureHere>", "a\x00b", None):
        with pytest.raises(ValueError):
            validate_question(bad, 10)  # type: ignore[arg-type]


def test_an_unset_max_new_tokens_takes_the_tasks_answer_limits():
    assert answer_limits("[emotion] Which label?", None) == (TASK_ANSWERS["emotion"].max_new_tokens, (".",))
    assert answer_limits("[emotion] Which label?", 200) == (200, ())  # what a request asks for, without the stop
    assert answer_limits(QUESTION, None) == (EMOTION_LLAMA.max_new_tokens, ())  # [reason]: the demo's length
    assert answer_limits("no task token", None) == (EMOTION_LLAMA.max_new_tokens, ())


@pytest.mark.parametrize(
    "answer, label",
    [
        ("happy", "happy"),
        ("The emotion is Happy.", "happy"),
        ("  sad!\n", "sad"),
        ("contempt", "contempt"),
        ("The person feels peckish", "neutral"),  # unknown -> neutral
        ("", "neutral"),
        ("happy, not sad", "sad"),  # the LAST word counts
    ],
)
def test_parse_emotion_label(answer, label):
    assert parse_emotion_label(answer) == label


def test_parse_emotion_label_mer2023_set():
    assert parse_emotion_label("doubt", labels=MER2023_LABELS) == "neutral"
    assert parse_emotion_label("worried", labels=MER2023_LABELS) == "worried"


# ---- prompt embedding -------------------------------------------------------------------------------


def test_embed_prompt_splices_multimodal_rows(tiny):
    model, tokenizer, family = tiny
    prompt = build_prompt(QUESTION, family)
    hidden = model.config.hidden_size
    multimodal = np.random.default_rng(0).standard_normal((260, hidden)).astype(np.float32)
    emb = llm.embed_prompt(model, tokenizer, prompt, multimodal)

    before_text, after_text = prompt.split(VIDEO_PLACEHOLDER)
    before = tokenizer(before_text, add_special_tokens=True)["input_ids"]
    after = tokenizer(after_text, add_special_tokens=False)["input_ids"]
    assert llm.tokenize_prompt(tokenizer, prompt) == (before, after)
    assert emb.shape == (len(before) + 260 + len(after), hidden)
    table = model.get_input_embeddings().weight
    assert torch.equal(emb[: len(before)], table[before])
    assert torch.equal(emb[len(before): len(before) + 260], torch.from_numpy(multimodal))
    assert torch.equal(emb[len(before) + 260:], table[after])
    # <FeatureHere> stays text after the splice, as in upstream inference
    assert "<FeatureHere>" in tokenizer.decode(after)
    # a torch tensor works too
    assert torch.equal(llm.embed_prompt(model, tokenizer, prompt, torch.from_numpy(multimodal)), emb)


def test_embed_prompt_rejects_bad_input(tiny):
    model, tokenizer, family = tiny
    rows = torch.zeros(260, model.config.hidden_size)
    with pytest.raises(ValueError):
        llm.embed_prompt(model, tokenizer, "no placeholder", rows)
    with pytest.raises(ValueError):
        llm.embed_prompt(model, tokenizer, "<VideoHere> twice <VideoHere>", rows)
    with pytest.raises(ValueError):
        llm.embed_prompt(model, tokenizer, build_prompt(QUESTION, family), torch.zeros(260, 7))


# ---- generation ---------------------------------------------------------------------------------------


def test_sampling_params_validation():
    assert DEMO_DEFAULTS == SamplingParams(0.2, 0.9, 1.05, 500)
    assert not DEMO_DEFAULTS.greedy and GREEDY.greedy
    for bad in (
        dict(temperature=-0.1),
        dict(temperature=float("nan")),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(repetition_penalty=0.0),
        dict(max_new_tokens=0),
        dict(max_new_tokens=2.5),
        dict(seed=-1),
        dict(top_k=-1),
        dict(min_new_tokens=600),
    ):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


def test_greedy_batch_equals_single(tiny):
    model, tokenizer, family = tiny
    rows = torch.randn(260, model.config.hidden_size, generator=torch.Generator().manual_seed(1)) * 0.02
    prompts = [
        llm.embed_prompt(model, tokenizer, build_prompt(QUESTION, family), rows),
        text_embeds(model, tokenizer, "Hello there, how are you today?"),
        text_embeds(model, tokenizer, "A much longer prompt " * 12),
    ]
    assert len({p.shape[0] for p in prompts}) == 3
    params = [greedy(12), greedy(7), greedy(12, min_new_tokens=0)]
    batched = generate_batch(model, tokenizer, prompts, params)
    for prompt, p, result in zip(prompts, params, batched):
        alone = generate_batch(model, tokenizer, [prompt], [p])[0]
        assert alone.token_ids == result.token_ids
        assert alone.finish_reason == result.finish_reason
        assert np.allclose(alone.token_logprobs, result.token_logprobs, atol=1e-4)
    assert len(batched[1].token_ids) == 7 and batched[1].finish_reason == "length"


def test_seeded_sampling_reproducible(tiny):
    model, tokenizer, _ = tiny
    prompt = text_embeds(model, tokenizer, "Tell me a story")
    hot = dict(temperature=1.5, top_p=1.0, top_k=0, max_new_tokens=10)
    seeds = [SamplingParams(seed=7, **hot), SamplingParams(seed=7, **hot), SamplingParams(seed=8, **hot)]
    a, b, c = generate_batch(model, tokenizer, [prompt] * 3, seeds)
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids
    again = generate_batch(model, tokenizer, [prompt], [SamplingParams(seed=8, **hot)])[0]
    assert again.token_ids == c.token_ids


def test_stop_on_eos_and_min_new_tokens(tiny):
    model, tokenizer, _ = tiny
    eos = tokenizer.eos_token_id
    prompt = text_embeds(model, tokenizer, "Say nothing")
    old = with_lm_head_bias(model, {eos: 100.0})
    try:
        default, immediate = generate_batch(model, tokenizer, [prompt] * 2, [greedy(20), greedy(20, min_new_tokens=0)])
    finally:
        model.lm_head = old
    # upstream min_length=1: EOS is blocked for the first token only
    assert default.finish_reason == "eos" and len(default.token_ids) == 1 and eos not in default.token_ids
    assert immediate == GenerationResult((), "", "eos", ())


def test_max_new_tokens_and_cancellation(tiny):
    model, tokenizer, _ = tiny
    prompt = text_embeds(model, tokenizer, "Count with me")
    steps = {0: 0, 1: 0}
    seen: list[int] = []

    def on_token(i, token, delta):
        steps[i] += 1
        seen.append(i)

    def should_stop(i):
        return i == 1 and steps[1] >= 3

    long, cancelled = generate_batch(
        model, tokenizer, [prompt, prompt], [greedy(9), greedy(50)], on_token=on_token, should_stop=should_stop
    )
    assert long.finish_reason == "length" and len(long.token_ids) == 9
    assert cancelled.finish_reason == "cancelled" and len(cancelled.token_ids) == 3
    assert seen.count(0) == 9 and seen.count(1) == 3


def test_stop_strings_end_the_answer_with_the_token_that_completes_them(tiny):
    model, tokenizer, _ = tiny
    prompt = text_embeds(model, tokenizer, "Count with me")
    free = generate_batch(model, tokenizer, [prompt], [greedy(20)])[0]
    assert free.finish_reason == "length" and len(free.token_ids) == 20
    # a stop string that the free answer's 5th token completes: the answer is its first 5 tokens
    fifth = tokenizer.decode(list(free.token_ids[:5]), skip_special_tokens=True)
    stop = fifth[len(tokenizer.decode(list(free.token_ids[:4]), skip_special_tokens=True)) - 1:]
    assert stop and stop not in tokenizer.decode(list(free.token_ids[:4]), skip_special_tokens=True)
    stopped = generate_batch(model, tokenizer, [prompt], [greedy(20, stop=(stop,))])[0]
    assert stopped.finish_reason == "stop" and stopped.token_ids == free.token_ids[:5] and stopped.text == fifth
    with pytest.raises(ValueError):
        greedy(5, stop=("",))


def test_repetition_penalty_discourages_repeats(tiny):
    model, tokenizer, _ = tiny
    prompt = text_embeds(model, tokenizer, "Again and again")
    favourite = tokenizer(" again", add_special_tokens=False)["input_ids"][0]
    old = with_lm_head_bias(model, {favourite: 6.0})
    try:
        penalty = SamplingParams(temperature=0.0, repetition_penalty=50.0, max_new_tokens=8)
        plain, penalised = generate_batch(model, tokenizer, [prompt] * 2, [greedy(8), penalty])
    finally:
        model.lm_head = old
    assert plain.token_ids.count(favourite) == 8
    assert penalised.token_ids.count(favourite) == 1
    assert len(set(penalised.token_ids)) == 8


def test_on_token_deltas_concatenate_to_text(tiny):
    model, tokenizer, _ = tiny
    prompts = [text_embeds(model, tokenizer, "Write something"), text_embeds(model, tokenizer, "Other")]
    deltas: dict[int, list[str]] = {0: [], 1: []}
    results = generate_batch(
        model, tokenizer, prompts, [SamplingParams(seed=3, temperature=1.0, max_new_tokens=30), greedy(15)],
        on_token=lambda i, tok, d: deltas[i].append(d),
    )
    for i, result in enumerate(results):
        assert "".join(deltas[i]) == result.text
        assert result.text == tokenizer.decode(list(result.token_ids), skip_special_tokens=True)
        assert len(deltas[i]) == len(result.token_ids) == len(result.token_logprobs)
        assert all(lp <= 0 for lp in result.token_logprobs)


def test_incremental_detokenizer_never_splits_utf8(smol_tokenizer):
    text = "Emotion 😀 情绪 ok"
    ids = smol_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text.split())  # multi-byte characters span several byte-level tokens
    detok = IncrementalDetokenizer(smol_tokenizer)
    deltas = [detok.push(i) for i in ids]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text


# ---- emotion confidence --------------------------------------------------------------------------------


def test_emotion_confidence(tiny):
    model, tokenizer, family = tiny
    rows = torch.zeros(260, model.config.hidden_size)
    prompt = llm.embed_prompt(model, tokenizer, build_prompt(format_question("Leave me alone", "emotion"), family), rows)
    probs = emotion_confidence(model, prompt, [])
    assert list(probs) == list(EMOTION_LABELS)
    assert abs(sum(probs.values()) - 1.0) < 1e-6

    sad_ids = label_token_ids(tokenizer, ("sad",))[0]
    assert tokenizer.decode(sad_ids) == " sad"
    old = with_lm_head_bias(model, {sad_ids[0]: 8.0})
    try:
        forced = emotion_confidence(model, prompt, [])
        prefix = tokenizer(" The emotion is", add_special_tokens=False)["input_ids"]
        forced_prefix = emotion_confidence(model, prompt, prefix, tokenizer=tokenizer)
    finally:
        model.lm_head = old
    assert max(forced, key=forced.get) == "sad" and forced["sad"] > 0.9 > probs["sad"]
    assert max(forced_prefix, key=forced_prefix.get) == "sad"
    with pytest.raises(ValueError, match="tokenizer"):
        emotion_confidence(torch.nn.Linear(1, 1), prompt, [])  # no tokenizer attached

    # the batched scoring equals scoring one label by hand
    ids = label_token_ids(tokenizer, ("contempt",))[0]
    seq = torch.cat([prompt, llm.embed_tokens(model, ids)])
    with torch.no_grad():
        logp = torch.log_softmax(model(inputs_embeds=seq[None]).logits[0].float(), -1)
    manual = sum(float(logp[prompt.shape[0] - 1 + j, t]) for j, t in enumerate(ids))
    ratio = np.log(probs["contempt"]) - np.log(probs["neutral"])
    ids_n = label_token_ids(tokenizer, ("neutral",))[0]
    seq_n = torch.cat([prompt, llm.embed_tokens(model, ids_n)])
    with torch.no_grad():
        logp_n = torch.log_softmax(model(inputs_embeds=seq_n[None]).logits[0].float(), -1)
    manual_n = sum(float(logp_n[prompt.shape[0] - 1 + j, t]) for j, t in enumerate(ids_n))
    assert abs(ratio - (manual - manual_n)) < 1e-4


def confidence_by_reprefill(model, prompt_embeds, answer_prefix_ids, tokenizer, labels=EMOTION_LABELS):
    """The previous implementation, kept as the reference: the whole context re-run once per label
    (right-padded rows of context + label, no cache)."""
    table = model.get_input_embeddings()
    per_label = label_token_ids(tokenizer, labels)
    prefix = prompt_embeds
    if answer_prefix_ids:
        prefix = torch.cat([prefix, table(torch.tensor(list(answer_prefix_ids)))], dim=0)
    context, longest = prefix.shape[0], max(len(ids) for ids in per_label)
    inputs = torch.zeros(len(labels), context + longest, prefix.shape[1])
    mask = torch.zeros(len(labels), context + longest, dtype=torch.long)
    for k, ids in enumerate(per_label):
        inputs[k, :context] = prefix
        inputs[k, context:context + len(ids)] = table(torch.tensor(ids))
        mask[k, :context + len(ids)] = 1
    with torch.no_grad():
        out = model(inputs_embeds=inputs, attention_mask=mask, use_cache=False, logits_to_keep=longest + 1)
    log_probs = torch.log_softmax(out.logits.float(), dim=-1)
    scores = torch.tensor([sum(float(log_probs[k, j, tok]) for j, tok in enumerate(ids)) for k, ids in enumerate(per_label)],
                          dtype=torch.float64)
    return dict(zip(labels, torch.softmax(scores, dim=0).tolist()))


def assert_same_confidence(model, tokenizer, prompt, prefix_ids, labels=EMOTION_LABELS):
    cached = emotion_confidence(model, prompt, prefix_ids, tokenizer=tokenizer, labels=labels)
    reference = confidence_by_reprefill(model, prompt, prefix_ids, tokenizer, labels)
    assert list(cached) == list(reference)
    for label in labels:
        assert cached[label] == pytest.approx(reference[label], abs=1e-5), label


def test_emotion_confidence_from_the_cache_equals_reprefilling_per_label(tiny):
    model, tokenizer, family = tiny
    assert len({len(ids) for ids in label_token_ids(tokenizer, LONG_LABELS)}) >= 3
    rows = torch.randn(260, model.config.hidden_size, generator=torch.Generator().manual_seed(2)) * 0.05
    prompt = llm.embed_prompt(model, tokenizer, build_prompt(format_question("Leave me alone", "emotion"), family), rows)
    for prefix in ("", " The emotion is", " I think the person feels"):
        ids = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
        for labels in (EMOTION_LABELS, LONG_LABELS):
            assert_same_confidence(model, tokenizer, prompt, ids, labels)


def test_smollm2_emotion_confidence_from_the_cache_equals_reprefilling_per_label(smollm2):
    model, tokenizer, family = smollm2
    rows = torch.randn(260, model.config.hidden_size, generator=torch.Generator().manual_seed(2)) * 0.02
    prompt = llm.embed_prompt(model, tokenizer, build_prompt(format_question("Leave me alone", "emotion"), family), rows)
    for labels in (EMOTION_LABELS, LONG_LABELS):
        assert_same_confidence(model, tokenizer, prompt, [], labels)
        assert_same_confidence(model, tokenizer, prompt, tokenizer(" The emotion is", add_special_tokens=False)["input_ids"], labels)


# ---- LoRA merge ----------------------------------------------------------------------------------------


def _synthetic_llama(folder: Path, tokenizer) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_lora_merge(tmp_path, smol_tokenizer):
    base = _synthetic_llama(tmp_path / "llama", smol_tokenizer)
    r, alpha, hidden, kv = 8, 16, 32, 16
    g = torch.Generator().manual_seed(0)
    prefix = "llama_model.base_model.model.model.layers"
    lora = {
        (0, "q_proj"): (torch.randn(r, hidden, generator=g), torch.randn(hidden, r, generator=g)),
        (0, "v_proj"): (torch.randn(r, hidden, generator=g), torch.randn(kv, r, generator=g)),
        (2, "q_proj"): (torch.randn(r, hidden, generator=g), torch.randn(hidden, r, generator=g)),
    }
    state = {}
    for (layer, proj), (a, b) in lora.items():
        state[f"{prefix}.{layer}.self_attn.{proj}.lora_A.weight"] = a
        state[f"{prefix}.{layer}.self_attn.{proj}.lora_B.weight"] = b
    # projections and other non-LLM weights are someone else's business here
    state["llama_proj.weight"] = torch.randn(hidden, 5632, generator=g)
    state["feats_llama_proj1.weight"] = torch.randn(hidden, 1024, generator=g)
    ckpt = tmp_path / "emotion_llama.pth"
    torch.save({"model": state, "epoch": 3}, ckpt)

    out = llm.load_llama2_emotion_llama(base, ckpt, tmp_path / "merged", lora_r=r, lora_alpha=alpha)
    merged, _, family = llm.load_llm(out)
    assert family == "llama2"
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    before = dict(original.named_parameters())
    after = dict(merged.named_parameters())
    scale = alpha / r
    for name, weight in after.items():
        parts = name.split(".")
        key = (int(parts[2]), parts[4]) if name.startswith("model.layers.") and parts[3] == "self_attn" else None
        if key in lora:
            a, b = lora[key]
            torch.testing.assert_close(weight, before[name] + scale * b @ a, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(weight, before[name]), name
    meta = llm.read_meta(out)
    assert meta["lora"]["merged_modules"] == 3 and meta["lora"]["scale"] == scale

    # peft >= 0.3 names the adapter in the key ("lora_A.default.weight"): same result
    renamed = {
        k.replace("lora_A.weight", "lora_A.default.weight").replace("lora_B.weight", "lora_B.default.weight"): v
        for k, v in state.items()
    }
    torch.save({"model": renamed}, tmp_path / "peft03.pth")
    out2 = llm.load_llama2_emotion_llama(base, tmp_path / "peft03.pth", tmp_path / "merged2", lora_r=r, lora_alpha=alpha)
    merged2, _, _ = llm.load_llm(out2)
    for name, weight in merged2.named_parameters():
        assert torch.equal(weight, after[name])


def test_lora_merge_rejects_bad_checkpoints(tmp_path, smol_tokenizer):
    base = _synthetic_llama(tmp_path / "llama", smol_tokenizer)
    no_lora = tmp_path / "no_lora.pth"
    torch.save({"model": {"llama_proj.weight": torch.zeros(32, 5632)}}, no_lora)
    with pytest.raises(ValueError, match="no LoRA"):
        llm.load_llama2_emotion_llama(base, no_lora, tmp_path / "out")
    half = tmp_path / "half.pth"
    key = "llama_model.base_model.model.model.layers.0.self_attn.q_proj.lora_"
    torch.save({"model": {key + "A.weight": torch.zeros(64, 32)}}, half)
    with pytest.raises(ValueError, match="incomplete"):
        llm.load_llama2_emotion_llama(base, half, tmp_path / "out")
    wrong_rank = tmp_path / "rank.pth"
    torch.save({"model": {key + "A.weight": torch.zeros(4, 32), key + "B.weight": torch.zeros(32, 4)}}, wrong_rank)
    with pytest.raises(ValueError, match="rank"):
        llm.load_llama2_emotion_llama(base, wrong_rank, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_load_llm_requires_metadata(tmp_path, smol_tokenizer):
    base = _synthetic_llama(tmp_path / "llama", smol_tokenizer)
    with pytest.raises(ValueError, match="emoserve_llm.json"):
        llm.load_llm(base)
    assert not llm.is_complete(base)


def test_a_folder_holding_another_llm_is_not_taken_for_the_smollm2_conversion(tmp_path, smol_tokenizer):
    # a repository built with --llm tiny and rebuilt with --llm smollm2 must not keep serving the tiny model
    folder = llm.build_tiny_llama(tmp_path / "llm", tokenizer=smol_tokenizer)
    assert llm.is_complete(folder)
    assert not llm.is_converted_from(folder, llm.SMOLLM2_GGUF)
    meta = json.loads((folder / llm.META_FILE).read_text())
    (folder / llm.META_FILE).write_text(json.dumps({**meta, "source": llm.SMOLLM2_GGUF}))
    assert llm.is_converted_from(folder, llm.SMOLLM2_GGUF)


# ---- the default LLM: the real SmolLM2 -------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    folder = llm.prepare_smollm2(llm.smollm2_cache_dir())
    assert llm.is_converted_from(folder, llm.SMOLLM2_GGUF)
    return llm.load_llm(folder)


def test_smollm2_greedy_chat(smollm2):
    model, tokenizer, family = smollm2
    assert family == CHATML and model.config.hidden_size == 576
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    prompt = llm.embed_tokens(model, tokenizer(chat)["input_ids"])
    result = generate_batch(model, tokenizer, [prompt], [greedy(40)])[0]
    words = result.text.split()
    assert len(words) >= 2
    assert sum(w.strip(".,!?'\"").isascii() and w.strip(".,!?'\"").isalpha() for w in words) >= 0.7 * len(words)
    assert "paris" in result.text.lower()


def test_smollm2_batched_decoding_equals_each_request_alone(smollm2):
    model, tokenizer, family = smollm2
    rows = torch.randn(260, model.config.hidden_size, generator=torch.Generator().manual_seed(0)) * 0.02
    prompts = [llm.embed_prompt(model, tokenizer, build_prompt(QUESTION, family), rows),
               text_embeds(model, tokenizer, "Name three colours.")]
    params = [greedy(8), greedy(5)]
    batched = generate_batch(model, tokenizer, prompts, params)
    for prompt, p, result in zip(prompts, params, batched):
        assert generate_batch(model, tokenizer, [prompt], [p])[0].token_ids == result.token_ids


def test_smollm2_cuts_an_emotion_answer_at_its_first_full_stop_with_the_tasks_limits(smollm2):
    model, tokenizer, family = smollm2
    # random multimodal rows (the demo profile's encoders are seeded-random): the answer is not about a video, but
    # this one runs past a first sentence when nothing stops it
    rows = torch.randn(260, model.config.hidden_size, generator=torch.Generator().manual_seed(0)) * 0.02
    question = "The person in video says: I can't believe it! We actually won the prize!  [emotion] " + EMOTION_INSTRUCTION + " "
    max_new_tokens, stop = answer_limits(question, None)
    prompt = llm.embed_prompt(model, tokenizer, build_prompt(question, family), rows)
    limited, unlimited = (generate_batch(model, tokenizer, [prompt], [params])[0] for params in (
        SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, stop=stop), SamplingParams(temperature=0.0, max_new_tokens=96)))
    assert limited.finish_reason == "stop" and limited.text.endswith(".") and limited.text.count(".") == 1, limited.text
    assert unlimited.text.startswith(limited.text) and len(unlimited.text) > len(limited.text)  # cut, not changed
    assert limited.token_ids == unlimited.token_ids[:len(limited.token_ids)] and len(limited.token_ids) < max_new_tokens


@pytest.mark.parametrize(
    "answer, label",
    [("The emotion expressed in this video is happiness.", "happy"), ("He is full of anger!", "angry"),
     ("She looks afraid", "fear"), ("It shows sadness", "sad"), ("Something unrelated.", "neutral")],
)
def test_label_word_forms_map_onto_the_label_set(answer, label):
    assert parse_emotion_label(answer) == label
