"""``python -m capo_tutorial.testbed --out DIR``: write the testbed's JSONL files and data card."""

import sys

from capo_tutorial.testbed.card import main

sys.exit(main())
