"""A small training-like script: prints progress and logs loss and accuracy with the Runyard SDK."""

import argparse
import math
import random
import time

from runyard import Run

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--lr", type=float, default=0.1)
parser.add_argument("--delay", type=float, default=0.1, help="seconds per step")
args = parser.parse_args()

run = Run.get_context()
run.log_param("lr", args.lr)
run.log_param("steps", args.steps)
rng = random.Random(0)
print(f"training for {args.steps} steps with lr={args.lr}")
for step in range(args.steps):
    time.sleep(args.delay)
    loss = 2.0 * math.exp(-args.lr * step) + rng.uniform(0, 0.05)
    accuracy = 1.0 - loss / 2.5
    run.log_metrics({"loss": loss, "accuracy": accuracy}, step=step)
    print(f"step {step + 1}/{args.steps}  loss={loss:.4f}  accuracy={accuracy:.4f}")
with open("outputs/model.txt", "w") as f:
    f.write(f"weights after {args.steps} steps\n")
print("done")
