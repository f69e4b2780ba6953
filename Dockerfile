# syntax=docker/dockerfile:1
#
# authsvc container image.
#
#   docker build -t authsvc .
#   docker run --init -p 8080:8080 authsvc          # embedded storage, key set in /app/.authsvc
#
# Stage 1 builds a wheel of the project and of every dependency, so the runtime stage
# installs from local files only and never needs a compiler or the network.

FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# README.md is optional (the glob may match nothing); pyproject.toml names it as the readme.
COPY pyproject.toml README.m[d] ./
COPY authsvc ./authsvc

RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --wheel-dir /wheels .


FROM python:3.11-slim AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AUTHSVC_DATA_DIR=/app/.authsvc

# The wheels are bind-mounted rather than copied, so they never land in an image layer.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels authsvc

# A fixed numeric uid, so orchestrators can check runAsNonRoot and volumes can be chowned to it.
RUN groupadd --system --gid 10001 authsvc \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin authsvc \
    && mkdir -p /app/.authsvc \
    && chown 10001:10001 /app/.authsvc \
    && chmod 0700 /app/.authsvc

WORKDIR /app
USER 10001:10001

EXPOSE 8080

# Liveness only: /readyz (storage reachable) is what an orchestrator should gate traffic on.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)" || exit 1

CMD ["authsvc", "serve", "--host", "0.0.0.0", "--port", "8080"]
