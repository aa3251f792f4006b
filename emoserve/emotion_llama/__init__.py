"""Emotion-LLaMA (ZebangCheng/Emotion-LLaMA, a MiniGPT-v2 derivative) re-implemented for serving.

* :mod:`emoserve.emotion_llama.encoders` -- the multimodal encoders: EVA-CLIP ViT-g + ``ln_vision``
  + ``llama_proj`` / ``cls_tk_llama_proj`` (image -> 256 + 1 LLM tokens) and chinese-hubert-large
  + ``feats_llama_proj1/2/3`` (16 kHz audio -> 3 LLM tokens), their checkpoint loaders and the
  image preprocessing.
* the LLM side (LLaMA-2 + LoRA, prompts, generation) lives in the sibling modules.
"""
