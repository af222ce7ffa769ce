"""Prefect blocks of `previews`: credentials (secret) and pipeline configuration (not secret).

Register them with ``prefect block register -m blocks``. The flows load them by name at run time
(``PREVIEWS_CREDENTIALS_BLOCK``, ``PREVIEWS_CONFIG_BLOCK``), so no secret is ever stored in a deployment.
"""

from blocks.config import PreviewsConfig
from blocks.credentials import PreviewsCredentials
from blocks.loader import load_wiring

__all__ = ["PreviewsConfig", "PreviewsCredentials", "load_wiring"]
