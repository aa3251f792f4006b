"""Hallo2 task API (``emo-hallo-api.zh.md``): router, task store, worker and the service wiring."""
