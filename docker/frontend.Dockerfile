FROM python:3.11-slim
WORKDIR /opt/emoserve
COPY pyproject.toml README.md ./
COPY emoserve emoserve
COPY export export
COPY frontend frontend
COPY examples examples
# the front end needs no torch and no Triton server binary
RUN pip install --no-cache-dir --no-deps . && pip install --no-cache-dir "numpy<2" scipy soundfile av fastapi "uvicorn[standard]" \
    pydantic pydantic-settings python-multipart "tritonclient[grpc]==2.51.0" "sqlalchemy>=2" httpx
EXPOSE 8080
CMD ["python", "-m", "frontend", "--host", "0.0.0.0", "--port", "8080", "--triton-url", "triton:8001"]
