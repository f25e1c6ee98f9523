"""`python -m tools.fake_bitunix --port 0`: run the fake exchange (see `--help`)."""

import sys

from tools.fake_bitunix.server import main

sys.exit(main())
