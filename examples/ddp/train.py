"""A tiny DistributedDataParallel job over gloo (CPU): a few steps on random data; rank 0 prints and logs the loss.

Runyard sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT for every process, so init_process_group needs nothing.

It ends with `os._exit(0)` once its records and output are written. torch 2.13's gloo backend keeps the process
group's worker threads until interpreter finalization even after `destroy_process_group()`; a worker still letting
go of its last piece of work then needs the GIL the finalizing interpreter no longer hands out, and aborts the
process (SIGABRT, "terminate called without an active exception") after all the training is done. A rank that
aborts fails the run, so a script with nothing left to do leaves without finalization.
"""

import argparse
import os
import sys

import torch
import torch.distributed as dist

from runyard import Run


def main() -> None:
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
    dist.barrier()  # every rank is done with its collectives before any leaves
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    Run.get_context().flush()
    sys.stdout.flush()
    os._exit(0)
