"""previews: per-PR preview images from GitHub pull-request events, orchestrated by Prefect."""

__version__ = "0.1.0"
