"""Python clients of the REST front end (the SDK shape the Emotion-LLaMA API overview sketches)."""

from sdk.clients import AnalysisResult, EmotionLLaMA, EmotionLLaMAError, Hallo2Client, Hallo2Error, question_for

__all__ = ["AnalysisResult", "EmotionLLaMA", "EmotionLLaMAError", "Hallo2Client", "Hallo2Error", "question_for"]
