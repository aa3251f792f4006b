"""``from emotion_llama import EmotionLLaMA``, as the Emotion-LLaMA API overview writes it: the SDK's client (``sdk``)."""

from sdk.clients import AnalysisResult, EmotionLLaMA, EmotionLLaMAError

__all__ = ["AnalysisResult", "EmotionLLaMA", "EmotionLLaMAError"]
