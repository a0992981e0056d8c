"""Training: supervised warm start (`sft`) and multi-turn GRPO (`grpo`)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path


def newest_checkpoint(output_dir: str | Path, state_file: str) -> Path | None:
    """The newest `checkpoint-N` folder under `output_dir` that holds `state_file`, or None.

    Both trainers write their state file last, so a folder without it is a save that a kill cut short;
    resuming from it would fail, so it is passed over.
    """
    found = [(int(p.name.split("-")[1]), p) for p in Path(output_dir).glob("checkpoint-*")
             if p.name.split("-")[1].isdigit() and (p / state_file).is_file()]
    return max(found)[1] if found else None


def leave_distributed(code: int = 0) -> int:
    """End a process that `accelerate launch` started: returns `code` at once when no process group is up.

    Otherwise it destroys the group, closes a wandb run, flushes the logs and streams and leaves with
    `os._exit(code)`. Python's own finalization is skipped on purpose: gloo's worker threads may still be
    releasing the last gather's tensors (DDP keeps the group alive past `destroy_process_group`), a
    thread that asks for the GIL while the interpreter finalizes is killed inside C++, and the process
    aborts ("terminate called without an active exception") after its work is done.
    """
    import torch.distributed

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return code
    torch.distributed.destroy_process_group()
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
