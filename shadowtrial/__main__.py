"""`python -m shadowtrial ...` is the same as the `shadowtrial` command."""

from __future__ import annotations

import sys

from shadowtrial.cli import main

if __name__ == "__main__":
    sys.exit(main())
