# syntax=docker/dockerfile:1
# The operator image: `python -m agenttoken run`, non-root, no shell tools, read-only root FS ready.
# Not built in CI (our machines have no Docker engine); kept minimal so it stays correct.

FROM python:3.12-slim AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY operator/ operator/
# operator/sdk named first: the operator's dependency agent-token-sdk resolves to this checkout.
RUN python -m venv /venv && /venv/bin/pip install --no-compile ./operator/sdk . && \
    find /venv -name '__pycache__' -prune -exec rm -rf {} +

FROM python:3.12-slim
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
