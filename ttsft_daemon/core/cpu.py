"""One CPU budget for the daemon's thread pools, derived from the cores this process may use.

Whisper (CTranslate2), the speaker encoder (torch), the quality gate (ONNX Runtime) and Spleeter (TensorFlow, in
its worker process) each keep a pool of threads, and the stages run side by side. On a small host, pools of two or
more threads per library fight over the same cores: a pool's threads spin while they wait for each other, and the
CPU they burn does no work. Measured on 2 cores with the pipeline busy (`bench/pipeline.py`, per-thread CPU from
/proc): the speaker encoder with torch's two threads spent 0.20 CPU-s per audio second against 0.02 with one.
So on a host of up to `SMALL_HOST_CORES` cores every library gets one thread and the stages' workers share the
cores; on a bigger host each library gets its own default share. A configured count (> 0) always wins.
"""

from __future__ import annotations

import os

SMALL_HOST_CORES = 4


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and systemd's CPUAffinity= narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def small_host() -> bool:
    return usable_cores() <= SMALL_HOST_CORES


def pool_threads(configured: int, big_host: int) -> int:
    """Threads for one library's pool: `configured` when > 0; else 1 on a small host and `big_host` (capped at the
    usable cores; 0 = the library's own default) on a bigger one."""
    if configured > 0:
        return configured
    if small_host():
        return 1
    return min(big_host, usable_cores()) if big_host > 0 else 0
