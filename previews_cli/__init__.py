"""The ``previews`` command: the outermost layer, which may import flows, blocks and the library.

Nothing in ``previews/`` imports this package (tests/test_architecture.py checks it).
"""
