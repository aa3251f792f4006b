# NVIDIA Triton (the release matching the 2.51 server used on CPU) with what the python-backend
# models import: the emoserve package and its numeric/audio dependencies.
FROM nvcr.io/nvidia/tritonserver:24.10-py3
WORKDIR /opt/emoserve
COPY pyproject.toml README.md ./
COPY emoserve emoserve
COPY export export
COPY frontend frontend
# the core dependencies and the `models` extra; the LLM model runs torch + transformers inside the python backend,
# and the extra leaves torch unpinned so pip takes the CUDA build PyPI offers for this image's Python
RUN pip install --no-cache-dir ".[models]"
EXPOSE 8000 8001 8002
CMD ["tritonserver", "--model-repository=/models", "--allow-gpu-metrics=true"]
