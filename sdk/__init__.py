"""Python clients of the REST front end (the SDK shape the Emotion-LLaMA API overview sketches).

The documents' own import lines work too: ``from emotion_llama import EmotionLLaMA`` and
``from emo_hallo.client import Hallo2Client`` are these classes."""

from sdk.clients import AnalysisResult, EmotionLLaMA, EmotionLLaMAError, Hallo2Client, Hallo2Error, question_for
from sdk.lam_a2e import AsyncLamA2EClient, BlendshapeResult, LamA2EClient, LamA2EError

__all__ = ["AnalysisResult", "AsyncLamA2EClient", "BlendshapeResult", "EmotionLLaMA", "EmotionLLaMAError", "Hallo2Client",
           "Hallo2Error", "LamA2EClient", "LamA2EError", "question_for"]
