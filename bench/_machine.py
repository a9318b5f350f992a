"""The CPU model name, for the benchmarks' machine lines (shared by the bench scripts)."""
from __future__ import annotations

import platform
import subprocess


def cpu_model() -> str:
    """lscpu's "Model name", else platform.processor(), else "unknown"."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
