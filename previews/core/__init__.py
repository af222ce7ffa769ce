"""The pure core of `previews`: validation, tag policy, path filters, retention planning, event naming.

Nothing in this package performs I/O or imports a library that does (prefect, httpx, docker, git, starlette).
"""
