"""Emotion-LLaMA REST API (Gradio ``/api/predict/`` and FastAPI ``/process_video``): router, schemas, engine (Triton calls)."""
