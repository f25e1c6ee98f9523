"""`python -m tools.fake_bitunix --port 0`: run the fake exchange (see `--help`)."""

import sys

try:
    from tools.fake_bitunix.server import main
except ModuleNotFoundError as exc:  # its server (hypercorn) comes with the test extra
    sys.exit(
        f"python -m tools.fake_bitunix: the module {exc.name!r} is missing: the fake exchange needs "
        "the test extra; install it with: pip install -e '.[test]'"
    )

sys.exit(main())
