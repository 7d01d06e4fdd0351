"""Reports how it was started: `argv_probe.py OUT [ARGS...]` writes sys.argv, __name__,
sys.path[0], the working directory and more to the JSON file OUT, takes one optimizer step (so the
run is a real one), and exits with the status given after `--exit-status` (default 0). It parses
nothing else: any other argument, dltui's flag names included, must reach it untouched."""

import json
import os
import sys

import torch

here = {
    "argv": sys.argv,
    "name": __name__,
    "path0": sys.path[0],
    "cwd": os.getcwd(),
    "file": os.path.abspath(__file__),
    "main_is_this_module": sys.modules["__main__"].__dict__ is globals(),
}
model = torch.nn.Linear(2, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
model(torch.ones(4, 2)).pow(2).mean().backward()
optimizer.step()
with open(sys.argv[1], "w") as f:
    json.dump(here, f)
print("probe done")
if "--exit-status" in sys.argv:
    sys.exit(int(sys.argv[sys.argv.index("--exit-status") + 1]))
