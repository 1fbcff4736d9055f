"""The token endpoint's calls to the apiserver: TokenReview of a pod's ServiceAccount token, and a
pod read (is the pod a token was issued to still there?). Beside the adapter (kube.adapter) on the
same client; the review body holds the assertion, so no error here ever quotes a body."""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio import client

from agenttoken import api
from agenttoken.kube.adapter import MERGE_PATCH, Kube
from agenttoken.kube.errors import read_json, read_json_or_none


class PodReviews:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.authn: Any = client.AuthenticationV1Api(kube.api_client)

    async def review(self, token: str, audience: str) -> dict[str, Any]:
        """The TokenReview's status (authenticated, user with extra, audiences)."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [audience]},
        }
        answer = await read_json(self.authn.create_token_review(body, _preload_content=False))
        status: dict[str, Any] = answer.get("status") or {}
        return status

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await read_json_or_none(
            self.kube.core.read_namespaced_pod(name, namespace, _preload_content=False)
        )

    async def patch_status_if(self, namespace: str, name: str, version: str, status: dict[str, Any]) -> None:
        """Merge `status` into an AgentToken's status if it is still at `version` (else 409)."""
        await read_json(
            self.kube.custom.patch_namespaced_custom_object_status(
                api.GROUP,
                api.VERSION,
                namespace,
                api.AGENTTOKEN_PLURAL,
                name,
                {"metadata": {"resourceVersion": version}, "status": status},
                field_manager=api.FIELD_MANAGER,
                _content_type=MERGE_PATCH,
                _preload_content=False,
            )
        )
