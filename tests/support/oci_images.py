"""Tiny OCI images written straight through the registry API: a config blob and a manifest, no layers."""

from __future__ import annotations

import json
from datetime import datetime

from previews.registry.oci import OCI_MANIFEST, OciRegistry


def put_config_image(
    oci: OciRegistry,
    repo: str,
    tag: str,
    *,
    created: datetime,
    marker: str,
    labels: dict[str, str] | None = None,
) -> str:
    """Push a layer-less image whose config carries ``created`` and the labels ``m=<marker>`` and ``labels``;
    its digest."""
    config = json.dumps(
        {"created": created.isoformat(), "config": {"Labels": {"m": marker, **(labels or {})}}}
    ).encode()
    digest = oci.ensure_blob(repo, config)
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest,
            "size": len(config),
        },
        "layers": [],
    }
    return oci.put_manifest(repo, tag, json.dumps(body).encode(), OCI_MANIFEST)
