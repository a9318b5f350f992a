"""Peak-memory check before anything large is allocated.

A scenario whose model or worker state cannot fit must be refused with the
estimate, not crash in the allocator half-way through building the world.  The
model is built on PyTorch's ``meta`` device (shapes, no storage) to count its
d parameters; the estimate is a lower bound of what a run holds at once:

    4 * d * (n + 4) bytes = the [n, d] float32 per-worker gradients of a round
                            + theta, its update and two d-vectors of server state

Algorithms with per-worker state ([n, d] error-feedback residuals, momenta)
and the activations of the batched backward need more, so a scenario refused
here would certainly not have fit; one that passes may still be too big, and
then the allocator's failure is reported (exit 1) instead of a traceback.
"""
from __future__ import annotations

import functools
import os

import torch

from sim.errors import ConfigError

FLOAT32_BYTES = 4


def count_params(model_cfg, input_shape: tuple[int, ...], num_classes: int) -> int:
    """d of the model ``model_cfg`` builds, counted without allocating it."""
    try:
        with torch.device("meta"):
            module = model_cfg.build(tuple(input_shape), num_classes)
    except (ValueError, TypeError, OverflowError, RuntimeError) as exc:
        # on the meta device nothing is allocated: a failure is a setting that does not fit the
        # data (input too small for the pools) or a size torch cannot represent (a width of 1e30)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{model_cfg.kind} cannot be built with these settings: {first}", field="model") from None
    return sum(p.numel() for p in module.parameters())


def estimate_bytes(d: int, n: int) -> int:
    """The lower bound of the module docstring, in bytes."""
    return FLOAT32_BYTES * d * (n + 4)


def available_bytes(device: torch.device) -> tuple[int | None, str]:
    """(bytes free for a new allocation, where the number comes from), or None if unknown."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free), f"free memory of {torch.cuda.get_device_name(device)}"
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "available physical memory"
    except (ValueError, OSError, AttributeError):
        return None, ""


def gib(b: float) -> str:
    return f"{b / 1024 ** 3:,.3g} GiB"


def check_fits(model_cfg, input_shape: tuple[int, ...], num_classes: int, n: int, device: torch.device) -> int:
    """d; raises ConfigError (field ``model``) with the estimate when it cannot fit."""
    d = count_params(model_cfg, input_shape, num_classes)
    need = estimate_bytes(d, n)
    have, source = available_bytes(device)
    if have is not None and need > have:
        raise ConfigError(
            f"{model_cfg.kind} has d = {d:,} parameters; with workers = {n} a run needs at least "
            f"4 * d * (n + 4) bytes = {gib(need)} ([n, d] float32 gradients, parameters and server state), "
            f"more than the {gib(have)} available here ({source}); allowed: a smaller model or fewer workers",
            field="model")
    return d


def allocation_failed(exc: BaseException) -> bool:
    """True for the allocators' out-of-memory errors (CPU and CUDA)."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in str(exc) or "out of memory" in str(exc))


@functools.lru_cache(maxsize=16)
def _data_shape(dataset: str, root: str | None) -> tuple[tuple[int, ...], int]:
    from sim.learn.data import load_dataset
    data = load_dataset(dataset, root)
    return tuple(data.input_shape), int(data.num_classes)


def scenario_bytes(scn) -> int | None:
    """The estimate of the module docstring for a scenario, in bytes, or None
    when it cannot be made here (the data set cannot be read on this machine,
    the model cannot be built: the point itself reports that)."""
    budget = getattr(scn.compute, "memory_budget", None)
    try:
        shape, classes = _data_shape(scn.data.dataset, scn.data.root)
        need = estimate_bytes(count_params(scn.model, shape, classes), scn.workers)
        return need if budget is None else min(need, int(budget))    # a budget caps the round (sim/learn/chunked.py)
    except Exception:  # noqa: BLE001 - no estimate: nothing is refused before the point runs
        return None
