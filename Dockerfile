# camingest in a container: Debian slim, the project's wheels, a non-root user, data in a volume.
#   docker build -t camingest .
#   docker run -p 8080:8080 -v camingest-data:/data \
#     -e CAMINGEST_TOKEN=... -e CAMINGEST_ALLOWED_HOSTS=camera.example.org camingest
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    CAMINGEST_CACHE_DIR=/var/cache/camingest

RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin camingest \
    && mkdir -p /data /var/cache/camingest \
    && chown camingest:camingest /data /var/cache/camingest

WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY ingest ingest
COPY storage storage
COPY web web
RUN pip install .

USER camingest
# the model arrays and the compiled landmark kernel, once, into the image (not at every start)
RUN python -c "from ingest.predictor import prepare_engine, predictor; prepare_engine('numba'); predictor('numba')"

VOLUME /data
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/api/health')"
CMD ["camingest", "serve", "--host", "0.0.0.0", "--port", "8080", "--data", "/data"]
