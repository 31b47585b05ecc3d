"""`python -m vlviz`: the command line (`vlviz.cli.main`)."""

import sys

from vlviz.cli.main import main

sys.exit(main())
