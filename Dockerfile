# nts serve: the inference API (and, with --mode paper, a session with its operator API).
# CPU only: torch comes from PyTorch's CPU wheel index, never a CUDA build.
#   docker build -t trading-system:v1 .
#   docker run -p 127.0.0.1:8000:8000 -v "$PWD/artifacts:/app/models:ro" \
#       -e MODEL_PATH=/app/models/tcn_v1 -e NTS_API_TOKEN=... trading-system:v1
# Inside a container the server binds 0.0.0.0, which nts refuses without an API token.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
WORKDIR /src
COPY setup.cfg pyproject.toml README.md LICENSE ./
COPY core ./core
COPY models ./models
COPY indicators ./indicators
COPY strategies ./strategies
COPY brokers ./brokers
COPY venues ./venues
COPY sweeps ./sweeps
COPY sessions ./sessions
COPY server ./server
COPY cli ./cli
# the dependencies only: the code runs from /app (configs/ is found beside it)
RUN pip install --no-cache-dir . && pip uninstall --yes neural-trading-system

FROM python:3.11-slim
RUN groupadd --gid 10001 nts && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin nts
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --from=build /src /app
COPY configs ./configs
RUN mkdir -p /app/models /app/state /app/logs /app/cache && chown -R nts:nts /app/state /app/logs /app/cache
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/app/cache/numba \
    NTS_LOG_DIR=/app/logs \
    NTS_CACHE_DIR=/app/cache \
    MODEL_PATH=/app/models/tcn_v1
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"]
ENTRYPOINT ["python", "-m", "cli.main", "serve"]
CMD ["--host", "0.0.0.0", "--port", "8000"]
