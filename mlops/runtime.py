"""Process facts the flow needs before it touches tracking: which rank of a distributed launch am I."""

from __future__ import annotations

import os

# The order Lightning reads them in (lightning_fabric's rank_zero._get_rank).
_RANK_KEYS = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def global_rank() -> int:
    """This process's global rank under torchrun, SLURM or Lightning's DDP launcher (0 otherwise)."""
    for key in _RANK_KEYS:
        value = os.environ.get(key)
        if value is not None:
            return int(value)
    return 0


def is_primary_process() -> bool:
    """Rank 0 does the tracking, registration and promotion; other ranks only train."""
    return global_rank() == 0
