"""Emotion-LLaMA prompt text: the ONE place for labels, task tokens, templates, answer limits and answer parsing.

Everything here mirrors upstream ZebangCheng/Emotion-LLaMA (commit 4ee28d2):

* ``minigpt4/datasets/datasets/first_face.py`` builds the training/eval instruction as
  ``"<video><VideoHere></video> <feature><FeatureHere></feature> {character_line} [{task}] {instruction} "``
  with ``character_line = "The person in video says: {sentence}. "`` (hence the double space before
  ``[task]`` and the trailing space), and the label order ``neutral, angry, happy, sad, worried, surprise,
  fear, contempt, doubt``.
* ``minigpt4/conversation/conversation.py`` (``CONV_VISION_minigptv2``) wraps user turns as
  ``"<s>[INST] " + message`` and the assistant turn as ``" [/INST]"`` with an empty separator and system.
* ``app.py`` / ``app_EmotionLlamaClient.py`` (demo and API) first append the multimodal prefix as its own
  user message and then call ``Chat.ask(question)``; ``ask`` only merges into the previous message when
  that message ends with ``"</Img>"``, which ``"...</feature>"`` never does, so the served prompt has TWO
  user turns: ``"<s>[INST] <video><VideoHere></video> <feature><FeatureHere></feature><s>[INST] {question} [/INST]"``.
  ``eval_emotion.py`` (``prepare_texts``) instead uses one turn:
  ``"<s>[INST] <video>…</feature> {question} [/INST]"``. Both layouts are available (``layout=``).
* At inference ``MiniGPTBase.get_context_emb`` splits ONLY on ``<VideoHere>`` and splices all 260
  multimodal embeddings there; ``<FeatureHere>`` stays in the prompt as ordinary text (only the training
  path ``prompt_wrap`` splits on it). See :func:`emoserve.emotion_llama.llm.embed_prompt`.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from emoserve.emotion_llama.defaults import EMOTION_LLAMA

# ---- labels and tasks ---------------------------------------------------------------------------------

#: The 9 emotion labels in upstream index order (first_face.py ``emos``).
EMOTION_LABELS: tuple[str, ...] = (
    "neutral",
    "angry",
    "happy",
    "sad",
    "worried",
    "surprise",
    "fear",
    "contempt",
    "doubt",
)
#: The 6 MER2023 labels that upstream ``eval_emotion.py`` accepts (anything else is scored as neutral).
MER2023_LABELS: tuple[str, ...] = EMOTION_LABELS[:6]
#: The label an unparseable answer falls back to (upstream eval rule).
FALLBACK_LABEL = "neutral"

#: Task name -> the bracketed token that selects it in the prompt. ``emotion``/``reason`` are the
#: Emotion-LLaMA tasks; ``visual``/``audio`` are the extra demo shortcuts (app.py ``gradio_taskselect``).
TASK_TOKENS: dict[str, str] = {
    "emotion": "[emotion]",
    "reason": "[reason]",
    "visual": "[visual]",
    "audio": "[audio]",
}


@dataclass(frozen=True)
class TaskAnswer:
    """How far an answer to one task runs when its request leaves ``max_new_tokens`` unset."""

    max_new_tokens: int
    stop: tuple[str, ...] = ()  # the answer ends with the first of these it writes


#: ``[emotion]`` asks for a label, and upstream's answers to it are one sentence ("The emotion expressed in the video
#: is happy."; eval_emotion.py reads its last word): such an answer ends at its first full stop, within 48 tokens,
#: instead of running toward the demo's 500. Other tasks (explanations) keep the demo's length.
TASK_ANSWERS: dict[str, TaskAnswer] = {"emotion": TaskAnswer(max_new_tokens=48, stop=(".",))}

# ---- templates ----------------------------------------------------------------------------------------

VIDEO_PLACEHOLDER = "<VideoHere>"
FEATURE_PLACEHOLDER = "<FeatureHere>"
#: The multimodal prefix (its own user message in the demo/API layout).
MULTIMODAL_PREFIX = f"<video>{VIDEO_PLACEHOLDER}</video> <feature>{FEATURE_PLACEHOLDER}</feature>"
#: The user's part of the upstream instruction (what the API receives as the question).
QUESTION_TEMPLATE = "The person in video says: {sentence}.  [{task}] {instruction} "
#: The full upstream instruction template (first_face.py), whitespace exactly as upstream.
USER_TEMPLATE = MULTIMODAL_PREFIX + " " + QUESTION_TEMPLATE

#: Upstream instruction pools (first_face.py); the emotion pool is the 9-label one used for training.
EMOTION_INSTRUCTION = (
    "Please determine which emotion label in the video represents: "
    "happy, sad, neutral, angry, worried, surprise, fear, contempt, doubt."
)
REASON_INSTRUCTIONS: tuple[str, ...] = (
    "Please analyze all the clues in the video and reason out the emotional label of the person in the video.",
    "What is the emotional state of the person in the video? Please tell me the reason.",
    (
        "What are the facial expressions and vocal tone used in the video? What is the intended meaning behind "
        "his words? Which emotion does this reflect?"
    ),
    (
        "Please integrate information from various modalities to infer the emotional category of the person in "
        "the video."
    ),
    (
        "Could you describe the emotion-related features of the individual in the video? What emotional category "
        "do they fall into?"
    ),
)

# ---- chat wrappers per LLM family ---------------------------------------------------------------------

LLAMA2 = "llama2"
CHATML = "chatml"
FAMILIES: tuple[str, ...] = (LLAMA2, CHATML)

#: Llama-2 (MiniGPT-v2) roles; system and separator are empty upstream.
LLAMA2_USER = "<s>[INST] "
LLAMA2_ASSISTANT = " [/INST]"

#: SmolLM2's own chat template (ChatML): the default system turn is inserted when none is given.
CHATML_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CHATML_TURN = "<|im_start|>{role}\n{content}<|im_end|>\n"
CHATML_GENERATION_PROMPT = "<|im_start|>assistant\n"

#: ``layout`` values for the llama2 family.
LAYOUT_DEMO = "demo"  # app.py / app_EmotionLlamaClient.py: prefix and question are two user turns
LAYOUT_EVAL = "eval"  # eval_emotion.py / training: one user turn "<prefix> <question>"
LAYOUTS: tuple[str, ...] = (LAYOUT_DEMO, LAYOUT_EVAL)

DEFAULT_MAX_QUESTION_CHARS = 4000


def format_question(sentence: str, task: str, instruction: str | None = None) -> str:
    """The upstream user question for a transcript ``sentence`` and ``task`` ("emotion"/"reason"/...)."""
    if task not in TASK_TOKENS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASK_TOKENS)}")
    if instruction is None:
        instruction = EMOTION_INSTRUCTION if task == "emotion" else REASON_INSTRUCTIONS[0]
    return QUESTION_TEMPLATE.format(sentence=sentence, task=task, instruction=instruction)


def build_prompt(question: str, family: str, *, layout: str = LAYOUT_DEMO, tokenizer=None) -> str:
    """The full LLM prompt text (still containing ``<VideoHere>`` once) for the user's ``question``.

    ``question`` is the text as the API receives it, e.g.
    ``"The person in video says: ... [reason] What are ...?"``; the multimodal prefix is added here.

    * ``llama2`` + ``layout="demo"`` (default, what upstream's demo and API serve):
      ``"<s>[INST] <video><VideoHere></video> <feature><FeatureHere></feature><s>[INST] {question} [/INST]"``
    * ``llama2`` + ``layout="eval"`` (eval_emotion.py, training format):
      ``"<s>[INST] <video><VideoHere></video> <feature><FeatureHere></feature> {question} [/INST]"``
    * ``chatml`` (SmolLM2): one user turn ``"{prefix} {question}"`` rendered with SmolLM2's chat template
      (default system turn + ``<|im_start|>assistant\\n`` generation prompt). When ``tokenizer`` has a
      ``chat_template`` it is used instead of the built-in copy (they agree for SmolLM2).
    """
    if family == LLAMA2:
        if layout == LAYOUT_DEMO:
            return LLAMA2_USER + MULTIMODAL_PREFIX + LLAMA2_USER + question + LLAMA2_ASSISTANT
        if layout == LAYOUT_EVAL:
            return LLAMA2_USER + MULTIMODAL_PREFIX + " " + question + LLAMA2_ASSISTANT
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    if family == CHATML:
        content = MULTIMODAL_PREFIX + " " + question
        template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
        if template:
            return tokenizer.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
            )
        return (
            CHATML_TURN.format(role="system", content=CHATML_DEFAULT_SYSTEM)
            + CHATML_TURN.format(role="user", content=content)
            + CHATML_GENERATION_PROMPT
        )
    raise ValueError(f"unknown LLM family {family!r}; expected one of {FAMILIES}")


_TASK_RE = re.compile(r"\[([A-Za-z_]+)\]")


def parse_task(question: str) -> str | None:
    """The first known task token in ``question`` ("emotion", "reason", "visual", "audio"), else None."""
    for match in _TASK_RE.finditer(question):
        name = match.group(1).lower()
        if name in TASK_TOKENS:
            return name
    return None


_STRIP = string.punctuation + "\u3002\uff0c\uff01\uff1f"  # ASCII + common CJK sentence punctuation


# Word forms a general-purpose LLM uses for the labels (Emotion-LLaMA itself answers with the bare label).
LABEL_SYNONYMS = {
    "happiness": "happy", "joy": "happy", "joyful": "happy", "anger": "angry", "sadness": "sad",
    "worry": "worried", "anxious": "worried", "anxiety": "worried", "surprised": "surprise",
    "fearful": "fear", "afraid": "fear", "scared": "fear", "contemptuous": "contempt",
    "doubtful": "doubt", "skeptical": "doubt", "neutrality": "neutral",
}


def answer_limits(question: str, max_new_tokens: int | None) -> tuple[int, tuple[str, ...]]:
    """``(max_new_tokens, stop strings)`` of the answer to ``question``: the request's ``max_new_tokens`` (no stop),
    else its task's :data:`TASK_ANSWERS`, else the demo's length without a stop."""
    if max_new_tokens is not None:
        return max_new_tokens, ()
    task = TASK_ANSWERS.get(parse_task(question) or "")
    return (task.max_new_tokens, task.stop) if task is not None else (EMOTION_LLAMA.max_new_tokens, ())


def parse_emotion_label(answer: str, labels: tuple[str, ...] = EMOTION_LABELS) -> str:
    """The emotion label of an ``[emotion]`` answer: the last whitespace-separated word, lower-cased and
    stripped of surrounding punctuation; anything not in ``labels`` (or an empty answer) -> ``"neutral"``.

    Upstream eval_emotion.py takes ``answer.split(" ")[-1]`` without normalisation and accepts only the 6
    MER2023 labels (pass ``labels=MER2023_LABELS`` for that set); normalising case/punctuation makes
    "Happy." count as happy instead of falling back to neutral, and :data:`LABEL_SYNONYMS` maps the other
    word forms a general LLM answers with ("... is happiness.") onto the label.
    """
    words = answer.split()
    if not words:
        return FALLBACK_LABEL
    word = words[-1].strip(_STRIP).lower()
    word = LABEL_SYNONYMS.get(word, word)
    return word if word in labels else FALLBACK_LABEL


def validate_question(question: str, max_chars: int = DEFAULT_MAX_QUESTION_CHARS) -> str:
    """Check a user question and return it unchanged; ValueError when it is not usable.

    Rejected: non-strings, empty/whitespace-only text, more than ``max_chars`` characters, NUL
    characters, and text containing the ``<VideoHere>``/``<FeatureHere>`` placeholders (the prompt must
    hold exactly one ``<VideoHere>``, the one this module adds).
    """
    if max_chars <= 0:
        raise ValueError(f"max_chars must be positive, got {max_chars}")
    if not isinstance(question, str):
        raise ValueError(f"the question must be text, got {type(question).__name__}")
    if not question.strip():
        raise ValueError("the question is empty")
    if len(question) > max_chars:
        raise ValueError(f"the question has {len(question)} characters; at most {max_chars} are allowed")
    if "\x00" in question:
        raise ValueError("the question contains a NUL character")
    for placeholder in (VIDEO_PLACEHOLDER, FEATURE_PLACEHOLDER):
        if placeholder in question:
            raise ValueError(f"the question must not contain the placeholder {placeholder}")
    return question
