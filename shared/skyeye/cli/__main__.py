"""``python -m skyeye.cli``: the same command line as ``skyeye``."""

import sys

from skyeye.cli.main import main

sys.exit(main())
