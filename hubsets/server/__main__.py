"""`python -m hubsets.server ROOT [--host] [--port] [--tokens FILE]`: the same as `hubsets serve`."""

from __future__ import annotations

import sys

from hubsets.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
