# syntax=docker/dockerfile:1
# The operator image: `python -m agenttoken run`, non-root, no shell tools, read-only root FS ready.
#
# Two ways to build the same image:
#   docker build -t agent-token-operator .          (python:3.12-slim from Docker Hub)
#   hack/build-images operator                      (no Docker: a Debian Python base made with
#                                                    mmdebstrap, OCI archive for `ctr import`)
# hack/build-images takes ENV, USER, EXPOSE, ENTRYPOINT and CMD from the final stage below and
# mirrors the RUN steps (tools/images/recipes.py); tests/unit/test_images.py keeps them in step.
# Any base with `python` (3.11+) and the venv module works: --build-arg BASE=...
ARG BASE=python:3.12-slim

FROM ${BASE} AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY operator/ operator/
# operator/sdk named first: the operator's dependency agent-token-sdk resolves to this checkout.
# Byte code is compiled once here with hash-checked invalidation: the root FS is read-only and
# PYTHONDONTWRITEBYTECODE is set, so without it every start would compile the kubernetes client's
# thousand modules again, in memory. Unchecked hashes do not depend on file times.
RUN python -m venv /venv && /venv/bin/pip install --no-compile ./operator/sdk . && \
    find /venv -name '__pycache__' -prune -exec rm -rf {} + && \
    /venv/bin/python -m compileall -q --invalidation-mode unchecked-hash /venv

FROM ${BASE}
# Nothing from the build stage but the venv; no compiler, no pip cache.
COPY --from=build /venv /venv
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# A numeric non-root user, so runAsNonRoot can be verified by the kubelet.
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "agenttoken"]
CMD ["run"]
