"""``python -m wav2vec2_ee.demo``: the same as ``wav2vec2-ee demo``."""

import sys

from .cli import main

sys.exit(main())
