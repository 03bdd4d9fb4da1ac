"""``python -m sar.train --config run.json`` (one process, or under torchrun)."""

import sys

from .cli import main

sys.exit(main())
