FROM python:3.11-slim
WORKDIR /opt/emoserve
COPY pyproject.toml README.md ./
COPY emoserve emoserve
COPY export export
COPY frontend frontend
COPY examples examples
# the core dependencies and the `frontend` extra: no torch, no Triton server binary
RUN pip install --no-cache-dir ".[frontend]"
EXPOSE 8080
CMD ["python", "-m", "frontend", "--host", "0.0.0.0", "--port", "8080", "--triton-url", "triton:8001"]
