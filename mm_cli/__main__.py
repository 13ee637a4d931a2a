"""`python -m mm_cli` runs the command line."""

import sys

from mm_cli.main import main

sys.exit(main())
