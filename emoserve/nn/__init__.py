"""Reusable neural-network building blocks shared by the model slices (plain PyTorch, no transformers).

* :mod:`emoserve.nn.wav2vec2` -- wav2vec2 / HuBERT conv feature encoders (group- and layer-norm),
  positional conv embedding, attention, feed-forward, post-LN and pre-LN ("stable") encoders and a
  HF-compatible ``HubertModel`` body.
"""
