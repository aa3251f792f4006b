"""Emotion-LLaMA's defaults and limits, in one place: the front end's settings and schemas, the export's
``BuildSettings`` and the ``emotion_llama*`` models' fallbacks all read :data:`EMOTION_LLAMA`.

The sampling values are upstream's demo (app.py / conversation.Chat: temperature 0.2, top_p 0.9, repetition
penalty 1.05, 500 new tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

_MiB = 1024 * 1024


@dataclass(frozen=True)
class EmotionLlamaDefaults:
    gradio_port: int = 7889  # the Emotion-LLaMA document's two servers (documented-ports mode)
    fastapi_port: int = 7887
    temperature: float = 0.2
    top_p: float = 0.9
    repetition_penalty: float = 1.05
    max_new_tokens: int = 500
    max_new_tokens_limit: int = 1024  # the most a request may ask for
    max_prompt_chars: int = 2000
    # continuous batching in emotion_llama_llm: sequences decoded together, and the KV positions they may reserve
    # (prompt + max_new_tokens each; SmolLM2's 313-token [emotion] prompt + 500 tokens ~ 0.8 k, so 8 fit)
    max_active_sequences: int = 8
    max_batch_tokens: int = 16384
    max_waiting_requests: int = 256  # admitted to the model but not yet decoding; beyond, refused (UNAVAILABLE)
    # one video, as a file or an upload: the front end answers 413 above it, the pipeline refuses it too
    max_video_bytes: int = 200 * _MiB
    # HuBERT attends over the whole track: only the audio's first seconds are encoded
    max_audio_seconds: float = 30.0
    generation_timeout_s: float = 600.0  # one whole answer, as the front end waits for it


EMOTION_LLAMA = EmotionLlamaDefaults()
