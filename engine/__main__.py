"""Entry point: `python -m dltui.engine RECIPE ...` (see dltui.engine.main)."""

import os
import sys

from .main import main

code = main()
sys.stdout.flush()
sys.stderr.flush()
# Everything is on disk by now (the store was closed). Skipping interpreter teardown avoids
# native threads (torch's, DataLoader's) aborting while their modules are torn down.
os._exit(code)
