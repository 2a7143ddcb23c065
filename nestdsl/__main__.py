"""`python -m nestdsl` is the `nestdsl` command (also what torchrun runs)."""

import sys

from nestdsl.cli import main

sys.exit(main())
