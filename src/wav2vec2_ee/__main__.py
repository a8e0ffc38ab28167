"""``python -m wav2vec2_ee <command> ...``: the same as the ``wav2vec2-ee`` script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
