"""The keys of the system metrics an agent samples of each run (agent/usage.py): the agent writes them, the head
stores and reads them (`system_metrics`), the CLI shows them. One place for all three.
Must not: import protobuf or the daemons (the head's store reads these keys too)."""

from __future__ import annotations

PREFIX = "system/"                                      # every key of a system metric starts with it
CPU_SECONDS = PREFIX + "cpu_seconds"                    # CPU time of the run's processes since its start
CPU_PERCENT = PREFIX + "cpu_utilization_percentage"     # since the previous sample; 100 = one CPU busy
MEMORY = PREFIX + "memory_bytes"                        # resident memory now
MEMORY_PEAK = PREFIX + "memory_peak_bytes"              # the highest so far
GPU_PREFIX = PREFIX + "gpu_"                            # then <index>_utilization_percentage, <index>_memory_bytes
GPU_UTIL_SUFFIX = "_utilization_percentage"
GPU_MEMORY_SUFFIX = "_memory_bytes"


def gpu_keys(index: int) -> tuple[str, str]:
    """The keys of one GPU's utilisation and memory."""
    return f"{GPU_PREFIX}{index}{GPU_UTIL_SUFFIX}", f"{GPU_PREFIX}{index}{GPU_MEMORY_SUFFIX}"
