# hookyard container image (docs/deploy.md):
#   docker build -t hookyard .
#   docker run -p 127.0.0.1:8000:8000 -v hookyard-data:/data hookyard
# With a config file: mount it and set HOOKYARD_CONFIG, e.g.
#   docker run -p 127.0.0.1:8000:8000 -v hookyard-data:/data -v $PWD/hookyard.toml:/etc/hookyard.toml:ro \
#     -e HOOKYARD_CONFIG=/etc/hookyard.toml -e SEGMENT_WRITE_KEY=... hookyard

# 1. wheels of hookyard, its built-in plugins and every dependency
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core ./core
COPY plugins ./plugins
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# 2. the runtime image: those wheels only, no compiler, no sources, not root
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin hookyard \
    && mkdir /data && chown hookyard:hookyard /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
# third-party connectors: add `RUN pip install --no-cache-dir hookyard-<name>` here
USER hookyard
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# --host/--port/--data-dir override the config file's [server] values
CMD ["hookyard", "serve", "--host", "0.0.0.0", "--port", "8000", "--data-dir", "/data"]
