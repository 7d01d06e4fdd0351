"""Entry point: `python -m dltui.engine RECIPE ...` (see dltui.engine.main)."""

import sys

from .main import main

sys.exit(main())
