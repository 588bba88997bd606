"""The process's peak resident memory, as benchmarks and ``predict --whole`` report it.

It imports nothing heavy, so that a benchmark's process for another framework (torch) can use it
without loading JAX into the memory it measures.
"""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (2^20 bytes).

    Linux's ``VmHWM`` (the high-water mark of this program's own memory): ``getrusage``'s
    ``ru_maxrss`` would also count the parent's memory copied at ``fork``, before ``exec``
    replaced it, so that a child of a large process reported the parent's size.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:  # no procfs (macOS): ru_maxrss is in bytes there, kB on Linux.
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
