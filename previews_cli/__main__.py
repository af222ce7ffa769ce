"""``python -m previews_cli``: the same as the ``previews`` console script."""

import sys

from previews_cli.app import main

if __name__ == "__main__":
    sys.exit(main())
