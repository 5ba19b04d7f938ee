"""`python -m zscir ...` = `zscir ...`."""

import sys

from zscir.cli import main

sys.exit(main())
