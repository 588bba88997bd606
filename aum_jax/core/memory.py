"""The process's peak resident memory, as benchmarks and ``predict --whole`` report it, and the memory it
may still take (``predict --whole`` refuses a pass that would not fit).

It imports nothing heavy, so that a benchmark's process for another framework (torch) can use it
without loading JAX into the memory it measures.
"""

from __future__ import annotations

import os
import resource

_UNLIMITED = 2**60  # a cgroup v1 "no limit" reads as a page-rounded 2^63 - 1.


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


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _meminfo_available_mb() -> float | None:
    """``MemAvailable`` of ``/proc/meminfo`` (what the kernel can give without swapping), MB; None without it."""
    text = _read("/proc/meminfo") or ""
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024.0  # kB
    return None


def _cgroup_room_mb() -> float | None:
    """The room left under this process's cgroup memory limit, MB (v2 ``memory.max``, v1 ``memory.limit_in_bytes``):
    the limit less the usage, less the inactive page cache the kernel reclaims first; None without a limit."""
    for line in (_read("/proc/self/cgroup") or "").splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2
            root, limit_file, usage_file, inactive = "/sys/fs/cgroup", "memory.max", "memory.current", "inactive_file"
        elif "memory" in controllers.split(","):
            root, limit_file = "/sys/fs/cgroup/memory", "memory.limit_in_bytes"
            usage_file, inactive = "memory.usage_in_bytes", "total_inactive_file"
        else:
            continue
        # The process's own group, or the mount's root where a cgroup namespace shows it as "/".
        for folder in (root + path, root):
            limit, usage = _read(os.path.join(folder, limit_file)), _read(os.path.join(folder, usage_file))
            if limit is None or usage is None:
                continue
            if limit.strip() == "max" or int(limit) >= _UNLIMITED:
                break
            stat = dict(row.split() for row in (_read(os.path.join(folder, "memory.stat")) or "").splitlines()
                        if len(row.split()) == 2)
            used = int(usage) - int(stat.get(inactive, 0))
            return max(0, int(limit) - used) / 2**20
    return None


def available_mb() -> float | None:
    """The memory this process may still take, in MB (2^20 bytes): Linux's ``MemAvailable``, or the room left
    under its cgroup's limit (a container's) where that is smaller; None where neither can be read (no procfs)."""
    readings = [mb for mb in (_meminfo_available_mb(), _cgroup_room_mb()) if mb is not None]
    return min(readings) if readings else None
