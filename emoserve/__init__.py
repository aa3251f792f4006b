"""emoserve: Triton model repository tooling for emotion-AI models."""
