"""Resident memory of this process (Linux /proc), shared by the benchmarks."""

from __future__ import annotations


def rss_kb(field: str = "VmRSS") -> int:
    """VmRSS (current) or VmHWM (peak since the last reset) in kB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def reset_peak() -> None:
    """Make VmHWM equal the current RSS, so the next peak is measured from here."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
