"""Batched KV-cache decoding from input embeddings, and the emotion-label confidence.

:func:`generate_batch` runs ONE decoding loop for several requests (continuous-batching friendly, no HF
``generate``): prompts are left-padded with zero embeddings under a zero attention mask, position ids
count only real positions, so every row computes what it would compute alone. Each request has its own
sampling parameters, seeded generator, repetition-penalty history and stop state.

The logits pipeline per request and step mirrors what upstream's ``llama_model.generate(...)`` (HF 4.30)
applied: min-length (EOS is blocked until ``min_new_tokens`` tokens exist; upstream passes
``min_length=1`` with ``inputs_embeds``, so its answers are never empty) -> repetition penalty over the
tokens generated so far (upstream passes only embeddings, so prompt tokens are not penalised) ->
temperature -> top-k (HF's default 50) -> top-p -> sample; ``temperature == 0`` means greedy (argmax after
the min-length and repetition-penalty steps).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch

from emoserve.emotion_llama.defaults import EMOTION_LLAMA
from emoserve.emotion_llama.prompts import EMOTION_LABELS

FINISH_EOS = "eos"
FINISH_LENGTH = "length"
FINISH_CANCELLED = "cancelled"
FINISH_STOP = "stop"


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding settings (defaults = upstream demo: app.py / conversation.Chat)."""

    temperature: float = EMOTION_LLAMA.temperature
    top_p: float = EMOTION_LLAMA.top_p
    repetition_penalty: float = EMOTION_LLAMA.repetition_penalty
    max_new_tokens: int = EMOTION_LLAMA.max_new_tokens
    seed: int | None = None
    top_k: int = 50  # HF GenerationConfig default, in effect upstream; 0 disables
    min_new_tokens: int = 1  # upstream min_length=1: EOS cannot be the first token
    stop: tuple[str, ...] = ()  # the answer ends once its text contains one of these (the token completing it kept)

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not (isinstance(self.repetition_penalty, (int, float)) and math.isfinite(self.repetition_penalty)
                and self.repetition_penalty > 0):
            raise ValueError(f"repetition_penalty must be a finite number > 0, got {self.repetition_penalty!r}")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 2**63):
            raise ValueError(f"seed must be None or an integer in [0, 2**63), got {self.seed!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0, got {self.top_k!r}")
        if (isinstance(self.min_new_tokens, bool) or not isinstance(self.min_new_tokens, int)
                or not 0 <= self.min_new_tokens <= self.max_new_tokens):
            raise ValueError(f"min_new_tokens must be an integer in [0, max_new_tokens], got {self.min_new_tokens!r}")
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be a tuple of non-empty strings, got {self.stop!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


#: Upstream demo sampling (app.py, app_EmotionLlamaClient.py: temperature 0.2, top_p 0.9, rep. 1.05, 500).
DEMO_DEFAULTS = SamplingParams()
#: Upstream eval decoding (eval_emotion.py: do_sample=False, repetition_penalty=1, 500 new tokens).
GREEDY = SamplingParams(temperature=0.0, top_p=1.0, repetition_penalty=1.0, top_k=0)


@dataclass(frozen=True)
class GenerationResult:
    token_ids: tuple[int, ...]  # generated tokens, without the stopping EOS
    text: str  # exactly the concatenation of the on_token deltas
    finish_reason: str  # "eos" | "length" | "stop" | "cancelled"
    token_logprobs: tuple[float, ...] = field(default=())  # log p(token) under the raw model distribution


class IncrementalDetokenizer:
    """Turns a growing token list into text deltas that never split a UTF-8 character.

    Each step decodes a small window (the tokens since the last emitted boundary plus the new ones) and
    emits only the text past the window's already-emitted part; while the decoded text ends in U+FFFD (an
    incomplete byte sequence) nothing is emitted. Special tokens are skipped.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.text = ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if len(full) > len(prefix) and not full.endswith("\ufffd") and full.startswith(prefix):
            delta = full[len(prefix):]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            self.text += delta
            return delta
        return ""


def eos_token_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if source is None:
            continue
        ids.update([source] if isinstance(source, int) else list(source))
    if not ids:
        raise ValueError("neither the tokenizer nor the model defines an EOS token")
    return ids


def pad_token_id(tokenizer, eos_ids: set[int]) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)


def _choose(logits: torch.Tensor, params: SamplingParams, history: list[int], eos_ids: set[int],
            generator: torch.Generator | None) -> int:
    """The next token of one request from its raw last-position logits ``[V]`` (float32)."""
    scores = logits.clone()
    if len(history) < params.min_new_tokens:
        scores[list(eos_ids)] = -math.inf
    if params.repetition_penalty != 1.0 and history:
        seen = torch.tensor(sorted(set(history)), dtype=torch.long)
        picked = scores[seen]
        scores[seen] = torch.where(picked < 0, picked * params.repetition_penalty, picked / params.repetition_penalty)
    if params.greedy:
        return int(torch.argmax(scores))
    scores = scores / params.temperature
    if params.top_k > 0 and params.top_k < scores.numel():
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if params.top_p < 1.0:
        ordered, order = torch.sort(scores, descending=False)
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative <= (1.0 - params.top_p)
        drop[-1] = False  # keep at least the most likely token
        scores = scores.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), -math.inf)
    probs = scores.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate_batch(
    model,
    tokenizer,
    prompts_embeds: list[torch.Tensor],
    params: list[SamplingParams],
    on_token: Callable[[int, int, str], None] | None = None,
    should_stop: Callable[[int], bool] | None = None,
) -> list[GenerationResult]:
    """Decode all requests together in one KV-cache loop; one :class:`GenerationResult` per request.

    ``prompts_embeds[i]`` is ``[L_i, hidden]`` (see :func:`~emoserve.emotion_llama.llm.embed_prompt`).
    ``on_token(i, token_id, text_delta)`` is called for every generated (non-EOS) token; ``text_delta`` may
    be ``""`` while a multi-byte character is incomplete. ``should_stop(i)`` is polled before every step
    for each unfinished request; True ends it with ``finish_reason="cancelled"``. A finished request's row
    keeps being fed a pad token until the whole batch is done but emits nothing. Rows never see each
    other (left padding is masked, positions count real tokens only), so greedy output equals running a
    request alone up to floating-point reassociation.
    """
    if len(prompts_embeds) != len(params):
        raise ValueError(f"{len(prompts_embeds)} prompts but {len(params)} sampling parameter sets")
    if not prompts_embeds:
        return []
    table = model.get_input_embeddings()
    device, dtype = table.weight.device, table.weight.dtype
    check_prompt_shapes(prompts_embeds, hidden=table.weight.shape[1])

    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = pad_token_id(tokenizer, eos_ids)
    batch = len(prompts_embeds)
    inputs, mask = left_padded(prompts_embeds, dtype, device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    next_position = torch.tensor([int(e.shape[0]) for e in prompts_embeds], dtype=torch.long, device=device)
    states = [RequestState.start(p, tokenizer) for p in params]

    out = model(inputs_embeds=inputs, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    logits = out.logits[:, -1, :].float().cpu()

    while True:
        step_tokens = []
        for i, state in enumerate(states):
            if state.finish is None and should_stop is not None and should_stop(i):
                state.finish = FINISH_CANCELLED
            token = None
            if state.finish is None:
                token = state.advance(logits[i], eos_ids, None if on_token is None else partial(on_token, i))
            # a finished row keeps being fed a pad token: its output is never read
            step_tokens.append(pad_id if token is None else token)
        if all(state.finish is not None for state in states):
            break
        ids = torch.tensor(step_tokens, dtype=torch.long, device=device)
        mask = torch.cat([mask, torch.ones(batch, 1, dtype=mask.dtype, device=device)], dim=1)
        out = model(
            inputs_embeds=table(ids)[:, None, :],
            attention_mask=mask,
            position_ids=next_position[:, None],
            past_key_values=cache,
            use_cache=True,
        )
        cache = out.past_key_values
        next_position = next_position + 1
        logits = out.logits[:, -1, :].float().cpu()

    return [state.result() for state in states]


@dataclass
class RequestState:
    """One request's decoding state: shared by :func:`generate_batch` and the continuous-batching scheduler."""

    params: SamplingParams
    generator: torch.Generator | None  # None for greedy requests
    detokenizer: IncrementalDetokenizer
    history: list[int] = field(default_factory=list)  # generated tokens (repetition-penalty history)
    logprobs: list[float] = field(default_factory=list)
    finish: str | None = None

    @classmethod
    def start(cls, params: SamplingParams, tokenizer) -> RequestState:
        return cls(params, request_generator(params), IncrementalDetokenizer(tokenizer))

    def advance(self, logits: torch.Tensor, eos_ids: set[int], on_token: Callable[[int, str], None] | None = None) -> int | None:
        """Choose the next token from this request's raw last-position ``logits`` ``[V]``.

        Returns the token to feed the model next, or None once the request has finished (EOS, length or a
        stop string: ``finish`` is then set). ``on_token(token_id, text_delta)`` is called for every
        generated (non-EOS) token before the stop checks, so a stream always ends with its last token.
        """
        token = _choose(logits, self.params, self.history, eos_ids, self.generator)
        if token in eos_ids:
            self.finish = FINISH_EOS
            return None
        self.history.append(token)
        self.logprobs.append(float(torch.log_softmax(logits, -1)[token]))
        delta = self.detokenizer.push(token)
        if on_token is not None:
            on_token(token, delta)
        if delta and _completes_stop(self.detokenizer.text, delta, self.params.stop):
            self.finish = FINISH_STOP
        elif len(self.history) >= self.params.max_new_tokens:
            self.finish = FINISH_LENGTH
        return None if self.finish is not None else token

    def result(self) -> GenerationResult:
        return GenerationResult(tuple(self.history), self.detokenizer.text, self.finish, tuple(self.logprobs))  # type: ignore[arg-type]


def check_prompt_shapes(prompts_embeds: list[torch.Tensor], hidden: int) -> None:
    for i, emb in enumerate(prompts_embeds):
        if emb.ndim != 2 or emb.shape[1] != hidden or emb.shape[0] == 0:
            raise ValueError(f"prompt {i}: embeddings must be [L>0, {hidden}], got {tuple(emb.shape)}")


def left_padded(
    prompts_embeds: list[torch.Tensor], dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, W, hidden]`` inputs left-padded with zeros and their ``[B, W]`` attention mask (W the longest)."""
    lengths = [int(e.shape[0]) for e in prompts_embeds]
    width = max(lengths)
    hidden = prompts_embeds[0].shape[1]
    inputs = torch.zeros(len(prompts_embeds), width, hidden, dtype=dtype, device=device)
    mask = torch.zeros(len(prompts_embeds), width, dtype=torch.long, device=device)
    for i, emb in enumerate(prompts_embeds):
        inputs[i, width - lengths[i]:] = emb.to(device=device, dtype=dtype)
        mask[i, width - lengths[i]:] = 1
    return inputs, mask


def request_generator(params: SamplingParams) -> torch.Generator | None:
    """A CPU generator seeded with ``params.seed`` (fresh entropy without one); None for greedy decoding."""
    if params.greedy:
        return None
    generator = torch.Generator(device="cpu")
    if params.seed is None:
        generator.seed()
    else:
        generator.manual_seed(params.seed)
    return generator


def _completes_stop(text: str, delta: str, stop: tuple[str, ...]) -> bool:
    """True when ``delta`` (the end of ``text``) completes a stop string: earlier text was checked before."""
    return any(s in text[-(len(delta) + len(s) - 1):] for s in stop)


def label_token_ids(
    tokenizer, labels: tuple[str, ...] = EMOTION_LABELS, leading_space: bool = True
) -> list[list[int]]:
    """Token ids of each label as the model writes it after preceding text (``" happy"`` by default).

    With ``leading_space`` the ids are those the label gets after a word (tokenise ``"a happy"`` and drop
    the tokens of ``"a"``): ``Ġhappy`` for byte-level BPE (SmolLM2), ``▁happy`` for SentencePiece
    (Llama-2, whose eval answers start that way after ``[/INST]``).
    """
    result = []
    anchor = tokenizer("a", add_special_tokens=False)["input_ids"]
    for label in labels:
        if leading_space:
            ids = tokenizer("a " + label, add_special_tokens=False)["input_ids"]
            if ids[: len(anchor)] == anchor:
                ids = ids[len(anchor):]
            else:
                ids = tokenizer(" " + label, add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(label, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"label {label!r} tokenises to nothing")
        result.append(list(ids))
    return result


@dataclass
class PromptCache:
    """A prompt's KV cache (one row, no padding) and its last position's logits, kept from its prefill.

    Scoring the labels from it (:func:`emotion_confidence` with ``prompt_cache=``) runs only the answer
    prefix and the labels' later tokens, never the prompt again.
    """

    cache: object  # a DynamicCache of ``length`` positions
    last_logits: torch.Tensor  # [vocab]: the prompt's last position
    length: int


@torch.no_grad()
def emotion_confidence(
    model,
    prompt_embeds: torch.Tensor | None,
    answer_prefix_ids: list[int],
    *,
    tokenizer=None,
    labels: tuple[str, ...] = EMOTION_LABELS,
    leading_space: bool = True,
    prompt_cache: PromptCache | None = None,
) -> dict[str, float]:
    """``{label: probability}`` over ``labels`` (sums to 1) from the model's own token probabilities.

    ``tokenizer`` (to spell the labels) defaults to the one :func:`~emoserve.emotion_llama.llm.load_llm`
    attached to the model as ``model.emoserve_tokenizer``.

    For each label ``l`` with token ids ``t_1..t_n`` (:func:`label_token_ids`, leading space by default)
    this computes ``s_l = sum_j log p(t_j | prompt, answer_prefix, t_<j)`` under the RAW model
    distribution (no temperature, top-p or repetition penalty), where ``answer_prefix_ids`` are the
    generated tokens before the label word (empty when the answer is just the label, as for upstream's
    ``[emotion]`` task), and returns ``softmax(s)`` over the labels - i.e. the model's probability of
    continuing with each label, renormalised to the label set. Multi-token labels are not
    length-normalised (that would no longer be a probability).

    The context (prompt + answer prefix) is run ONCE, with a KV cache; its last position gives every
    label's first token. The labels' later tokens are then scored as continuations of that cache, all
    labels in one batched step (right-padded, masked), instead of re-running the whole prompt per label.
    With ``prompt_cache`` (the prompt's cache from its prefill, consumed here) the prompt is not run at
    all: only the answer prefix continues it, and ``prompt_embeds`` is not needed.
    """
    if tokenizer is None:
        tokenizer = getattr(model, "emoserve_tokenizer", None)
        if tokenizer is None:
            raise ValueError("emotion_confidence needs tokenizer= (or a model loaded with load_llm)")
    table = model.get_input_embeddings()
    device, dtype = table.weight.device, table.weight.dtype
    per_label = label_token_ids(tokenizer, labels, leading_space)
    if prompt_cache is None:
        if prompt_embeds is None:
            raise ValueError("emotion_confidence needs prompt_embeds or a prompt_cache")
        prompt_cache = _run_prompt(model, prompt_embeds.to(device=device, dtype=dtype))
    cache, length, last_logits = prompt_cache.cache, prompt_cache.length, prompt_cache.last_logits
    if answer_prefix_ids:
        count = len(answer_prefix_ids)
        out = model(inputs_embeds=table(torch.tensor(list(answer_prefix_ids), device=device))[None],
                    position_ids=torch.arange(length, length + count, device=device)[None],
                    past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache, length, last_logits = out.past_key_values, length + count, out.logits[0, -1]
    first = torch.log_softmax(last_logits.float(), dim=-1)
    scores = torch.tensor([float(first[ids[0]]) for ids in per_label], dtype=torch.float64)

    # only labels of several tokens need their later tokens scored; each feeds all but its last token
    longer = [k for k, ids in enumerate(per_label) if len(ids) > 1]
    if longer:
        width = max(len(per_label[k]) for k in longer) - 1
        feed = torch.full((len(longer), width), tokenizer.pad_token_id or 0, dtype=torch.long, device=device)
        mask = torch.ones(len(longer), length + width, dtype=torch.long, device=device)
        for row, k in enumerate(longer):
            ids = per_label[k][:-1]
            feed[row, :len(ids)] = torch.tensor(ids, device=device)
            mask[row, length + len(ids):] = 0  # right padding: never seen by the real positions before it
        cache.batch_repeat_interleave(len(longer))
        positions = torch.arange(length, length + width, device=device).expand(len(longer), width)
        step = model(inputs_embeds=table(feed), attention_mask=mask, position_ids=positions, past_key_values=cache,
                     use_cache=True)
        log_probs = torch.log_softmax(step.logits.float(), dim=-1)
        for row, k in enumerate(longer):
            # fed position j predicts label token j + 1
            scores[k] += sum(float(log_probs[row, j, tok]) for j, tok in enumerate(per_label[k][1:]))
    probs = torch.softmax(scores, dim=0)
    return {label: float(p) for label, p in zip(labels, probs)}


def _run_prompt(model, context: torch.Tensor) -> PromptCache:
    out = model(inputs_embeds=context[None], use_cache=True, logits_to_keep=1)
    return PromptCache(out.past_key_values, out.logits[0, -1], int(context.shape[0]))
