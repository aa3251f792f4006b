"""Hallo2 task API (``emo-hallo-api.zh.md``): router, schemas, engine (Triton calls), task store, worker and service."""
