"""Training: supervised warm start (`sft`) and multi-turn GRPO (`grpo`)."""

from __future__ import annotations

import logging
import os
import sys


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
