"""`python -m wtb_conf.cli`: the same as `wtb`."""

import sys

from wtb_conf.cli import main

sys.exit(main())
