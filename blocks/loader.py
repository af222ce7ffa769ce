"""Loading the blocks a flow run names: the environment, then the config block, then the credentials block."""

from __future__ import annotations

from blocks.config import PreviewsConfig
from blocks.credentials import PreviewsCredentials
from previews.settings import Settings
from previews.wiring import Wiring


def load_wiring(settings: Settings | None = None) -> Wiring:
    """The composition root of a deployed flow run, built at run time.

    ``settings`` (default: the environment, prefix ``PREVIEWS_``) names the blocks; every field set on the
    config block overrides it, and the credentials block fills in the secrets and hands out the clients.
    """
    resolved = settings if settings is not None else Settings()
    if resolved.config_block:
        config = PreviewsConfig.load(resolved.config_block)
        assert isinstance(config, PreviewsConfig)
        resolved = config.apply(resolved)
    if resolved.credentials_block:
        credentials = PreviewsCredentials.load(resolved.credentials_block)
        assert isinstance(credentials, PreviewsCredentials)
        return credentials.wiring(resolved)
    return Wiring(resolved)
