"""The build-settings fingerprint: an image is reused only when it was built exactly as it would be now.

The build writes it as the label ``previews.build-fingerprint``; a run finding ``pr-<N>-<sha>`` in the registry
with the same revision and the same fingerprint skips the build and the push.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

FINGERPRINT_LABEL = "previews.build-fingerprint"
REVISION_LABEL = "org.opencontainers.image.revision"


def build_fingerprint(
    *,
    dockerfile: str,
    context: str,
    target: str | None,
    build_args: Mapping[str, str],
    siblings: Mapping[str, str],
) -> str:
    """``sha256:<hex>`` over the Dockerfile path, context, target, build args and the siblings' resolved SHAs.

    ``siblings`` maps each sibling's ``name=owner/repo@ref`` to the commit it resolved to (the resolved SHA is
    what makes a rebuild necessary when a sibling's branch moved).
    """
    document = {
        "v": 1,
        "dockerfile": dockerfile,
        "context": context,
        "target": target or "",
        "build_args": dict(sorted(build_args.items())),
        "siblings": dict(sorted(siblings.items())),
    }
    raw = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def is_published(labels: Mapping[str, str], *, sha: str, fingerprint: str) -> bool:
    """True when an image's labels say it is ``sha`` built with the settings of ``fingerprint``."""
    return labels.get(REVISION_LABEL) == sha and labels.get(FINGERPRINT_LABEL) == fingerprint
