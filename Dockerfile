# syntax=docker/dockerfile:1
# sni-exporter container image: Python slim, non-root, entrypoint `sni-exporter`.
#
#   docker build -t ghcr.io/sni-exporter/sni-exporter:0.1.0 .
#   docker run --rm -p 9866:9866 -v "$PWD/my-targets.yaml:/etc/sni-exporter/targets.yaml:ro" \
#       ghcr.io/sni-exporter/sni-exporter:0.1.0
#
# The Helm chart (helm/sni-exporter) runs this image with a read-only root
# filesystem as uid 65532 and mounts the targets at /etc/sni-exporter/.
# tests/test_dockerfile.py checks what can be checked without building it.

ARG PYTHON_VERSION=3.12

# --- build: install the package and its wheels into a self-contained venv ----
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/sni-exporter
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
# Bytecode is compiled here, once: the runtime filesystem is read-only.
RUN /opt/sni-exporter/bin/pip install . \
 && /opt/sni-exporter/bin/python -m compileall -q /opt/sni-exporter

# --- runtime: the venv on a clean slim base, no build tools, no root ---------
FROM python:${PYTHON_VERSION}-slim-bookworm
LABEL org.opencontainers.image.title="sni-exporter" \
      org.opencontainers.image.description="Prometheus exporter that tells which TLS endpoints need SNI" \
      org.opencontainers.image.source="https://github.com/sni-exporter/sni-exporter" \
      org.opencontainers.image.licenses="Apache-2.0"
# A named user for readable `ps` output; the numeric USER below is what
# Kubernetes' runAsNonRoot can verify.
RUN groupadd --system --gid 65532 sni-exporter \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin sni-exporter
COPY --from=build /opt/sni-exporter /opt/sni-exporter
ENV PATH=/opt/sni-exporter/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 9866
ENTRYPOINT ["sni-exporter"]
CMD ["serve", "--config.file", "/etc/sni-exporter/targets.yaml"]
