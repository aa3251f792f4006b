# NVIDIA Triton (the release matching the 2.51 server used on CPU) with what the python-backend
# models import: the emoserve package and its numeric/audio dependencies.
FROM nvcr.io/nvidia/tritonserver:24.10-py3
WORKDIR /opt/emoserve
COPY pyproject.toml README.md ./
COPY emoserve emoserve
COPY export export
COPY frontend frontend
# the LLM model runs torch + transformers inside the python backend (CUDA build from PyPI on the GPU host)
RUN pip install --no-cache-dir --no-deps . && pip install --no-cache-dir "numpy<2" scipy soundfile av "onnxruntime>=1.17" \
    torch "transformers>=4.45" safetensors accelerate "mediapipe==0.10.21"
EXPOSE 8000 8001 8002
CMD ["tritonserver", "--model-repository=/models", "--allow-gpu-metrics=true"]
