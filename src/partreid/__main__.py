"""``python -m partreid`` (and ``torchrun ... -m partreid``) runs the command line."""

import sys

from .cli import main

sys.exit(main())
