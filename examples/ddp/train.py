"""A tiny DistributedDataParallel job over gloo (CPU): a few steps on random data; rank 0 prints and logs the loss.

Runyard sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT for every process, so init_process_group needs nothing.
"""

import argparse

import torch
import torch.distributed as dist

from runyard import Run

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=5)
parser.add_argument("--lr", type=float, default=0.1)
args = parser.parse_args()

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
model = torch.nn.Linear(8, 1)
ddp = torch.nn.parallel.DistributedDataParallel(model)
opt = torch.optim.SGD(ddp.parameters(), lr=args.lr)
data = torch.Generator().manual_seed(rank)  # each rank its own batch
run = Run.get_context()
for step in range(args.steps):
    x = torch.randn(16, 8, generator=data)
    y = x.sum(1, keepdim=True)
    loss = ((ddp(x) - y) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if rank == 0:
        print(f"step {step + 1}/{args.steps}  loss={loss.item():.4f}  world={world}", flush=True)
        run.log("loss", loss.item())
dist.barrier()  # no rank leaves while another still talks to the store rank 0 holds
dist.destroy_process_group()
