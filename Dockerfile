# syntax=docker/dockerfile:1
# tradewarden operator image.
#   docker build -t localhost/tradewarden:0.1.0 .      (or podman build / buildah bud)
# Where public registries cannot be reached, PYTHON_IMAGE names a locally made base instead of the
# official image: `./tw image build` makes one (Debian bookworm's Python 3.11, mmdebstrap) and builds
# with --build-arg PYTHON_IMAGE=localhost/tradewarden-python:3.11-bookworm.
# Two stages: `build` installs the pinned dependencies and the package into a virtual environment;
# the runtime stage copies only that environment onto the same slim base and runs as a non-root user.
# No credentials are ever needed at build time: exchange keys live in Kubernetes Secrets, read at run time.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/tradewarden
# Dependencies first (their layer is reused while only the code changes), exactly as locked, no resolver.
COPY requirements.lock ./
RUN /opt/tradewarden/bin/pip install --no-deps --only-binary=:all: -r requirements.lock
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN /opt/tradewarden/bin/pip install --no-deps . \
 && /opt/tradewarden/bin/pip check \
 && /opt/tradewarden/bin/python -m compileall -q /opt/tradewarden/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="tradewarden" \
      org.opencontainers.image.description="Kubernetes operator that keeps crypto-exchange trading accounts honest" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 tradewarden \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin tradewarden
COPY --from=build /opt/tradewarden /opt/tradewarden
ENV PATH=/opt/tradewarden/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
# 9464: Prometheus /metrics; 8080: kopf liveness (/healthz); 8081: readiness (/readyz, when --readiness asks)
EXPOSE 9464 8080 8081
ENTRYPOINT ["tradewarden"]
CMD ["run", "--all-namespaces"]
