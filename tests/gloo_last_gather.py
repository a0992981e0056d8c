"""A process that ends right after a gloo gather, the way a GRPO step ends (run by torchrun, 2 CPU ranks).

    python -m torch.distributed.run --nproc_per_node 2 tests/gloo_last_gather.py OUT_DIR [plain]

Each rank writes `rankN.txt` and leaves through `leave_distributed`, or with `plain` through Python's
own finalization (which can abort while gloo's worker threads still release the gathered tensors).
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from visionthink.train import leave_distributed

if __name__ == "__main__":
    dist.init_process_group("gloo")
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 4))  # keeps the group alive
    model(torch.ones(2, 4)).sum().backward()
    gathered = [None] * dist.get_world_size()
    for _ in range(3):
        dist.all_gather_object(gathered, {"rank": dist.get_rank()})
    Path(sys.argv[1], f"rank{dist.get_rank()}.txt").write_text(str(sorted(g["rank"] for g in gathered)))
    if sys.argv[2:] != ["plain"]:
        leave_distributed(0)
