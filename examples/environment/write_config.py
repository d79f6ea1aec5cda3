"""Uses a package only the run's environment has (tomli-w), and logs a metric with the Runyard SDK."""

import os
import sys

import tomli_w

from runyard import Run

run = Run.get_context()
config = {"model": {"layers": 4, "lr": 0.01}}
os.makedirs("outputs", exist_ok=True)
with open("outputs/config.toml", "wb") as f:
    tomli_w.dump(config, f)
print(f"python {sys.prefix}: wrote outputs/config.toml with tomli-w")
run.log("layers", config["model"]["layers"])
