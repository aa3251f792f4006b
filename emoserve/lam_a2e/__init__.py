"""LAM-A2E (audio-to-ARKit-expression) network, checkpoint loading and helpers."""
