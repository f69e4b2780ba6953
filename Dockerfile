# syntax=docker/dockerfile:1
#
# authsvc container image.
#
#   docker build -t authsvc .
#   docker run --init -p 8080:8080 authsvc          # embedded storage, key set in /app/.authsvc
#
# Stage 1 installs the project and its dependencies into a virtualenv; the runtime stage
# copies only that virtualenv, so it never needs a compiler, pip's cache or the network.

FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# README.md is optional (the glob may match nothing); pyproject.toml names it as the readme.
COPY pyproject.toml README.m[d] ./
COPY authsvc ./authsvc

RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/authsvc \
    && /opt/authsvc/bin/pip install .


FROM python:3.11-slim AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/authsvc/bin:$PATH \
    AUTHSVC_DATA_DIR=/app/.authsvc

# The same base image, so the virtualenv's interpreter links resolve unchanged.
COPY --from=builder /opt/authsvc /opt/authsvc

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
