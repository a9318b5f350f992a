"""Where the per-worker state rows of a chunked round live between rounds
(``compute.state_store``, issue 15 goal 6; the round itself is sim/learn/chunked.py).

A store holds one state leaf, ``[n, *shape]`` (an error-feedback residual, a
local momentum), in ``compute.state_dtype``.  The round reads the rows of a
chunk as float32 on the compute device and writes the new rows back:

  device  one tensor on the compute device; a chunk reads a view (float32)
          or a float32 copy (bfloat16), and writes back in place
  host    one tensor in the host's memory, pinned when the device is a GPU so
          that the copies are DMA; a chunk's rows are copied to the device and
          back.  On a CPU device the host is the device: the device store.
  disk    one file per leaf in a private folder under ``compute.state_dir``
          (default: the system's temporary folder), deleted when the run ends.
          Rows a .. b are the bytes [a * row_bytes, b * row_bytes) of the file,
          row_bytes = itemsize(state_dtype) * prod(shape); a chunk reads them
          with positional reads (os.preadv) into a host buffer and writes them
          with os.pwritev.  The round's uploads go to the same folder
          (:class:`Spill`) until the server decodes them.

Why the disk store reads and writes instead of mapping the file: the pages of
a mapped file count in the process's resident set, and the kernel, not the
plan, decides when they are written back and dropped, so the peak would not
stay within ``compute.memory_budget``.  With explicit I/O the process holds
only the chunk's buffer; the file's pages sit in the kernel's page cache,
which it reclaims.

Every store gives back the bits it was given: float32 rows unchanged, and
bfloat16 rows rounded once on the way in (round to nearest even, the same
``copy_``/``to`` conversion as the device store), so the results are the
same in every store (tests/test_chunked.py).
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile

import torch

# Linux moves at most 0x7ffff000 bytes per read/write call (read(2), NOTES); larger rows are looped
_IO_MAX = 0x7FFFF000


def _bytes(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, writable, as a flat memoryview."""
    return memoryview(t.reshape(-1).view(torch.uint8).numpy()).cast("B")


def _move(op, fd: int, t: torch.Tensor, offset: int, what: str) -> None:
    """os.preadv or os.pwritev of all the bytes of ``t`` at ``offset``, in pieces of at most _IO_MAX."""
    mv, done = _bytes(t), 0
    while done < len(mv):
        k = op(fd, [mv[done:done + _IO_MAX]], offset + done)
        if k <= 0:
            raise OSError(f"state file: short {what} at byte {offset + done:,} (wanted {len(mv) - done:,} more)")
        done += k


def read_into(fd: int, t: torch.Tensor, offset: int) -> None:
    """Fill the contiguous CPU tensor ``t`` with the file's bytes at ``offset``."""
    _move(os.preadv, fd, t, offset, "read")


def write_from(fd: int, t: torch.Tensor, offset: int) -> None:
    """Write the bytes of the contiguous CPU tensor ``t`` at ``offset``."""
    _move(os.pwritev, fd, t, offset, "write")


class DeviceRows:
    """The rows in one tensor (``where``: the compute device, or the host)."""

    where = "device"

    def __init__(self, template: torch.Tensor, n: int, dtype: torch.dtype, device: torch.device):
        self.device, self.dtype = device, dtype
        self.rows = self._alloc(template, n)

    def _alloc(self, template: torch.Tensor, n: int) -> torch.Tensor:
        return template.to(self.dtype).repeat(n, *([1] * (template.dim() - 1)))

    def read(self, a: int, b: int) -> torch.Tensor:
        """Rows a .. b, float32 on the device (a view when stored as such)."""
        v = self.rows[a:b]
        return v if v.dtype == torch.float32 else v.to(torch.float32)

    def write(self, a: int, b: int, rows: torch.Tensor) -> None:
        dst = self.rows[a:b]
        if rows.data_ptr() != dst.data_ptr():     # worker_encode made new rows (it may also hand back ours)
            dst.copy_(rows)

    def all(self) -> torch.Tensor:
        """Every row, float32 on the device (for inspection and tests)."""
        return self.read(0, self.rows.shape[0])

    def close(self) -> None:
        """Nothing to release: the tensor goes with the trainer."""


class HostRows(DeviceRows):
    """The rows in the host's memory, pinned when the device is a GPU."""

    where = "host"

    def _alloc(self, template: torch.Tensor, n: int) -> torch.Tensor:
        rows = torch.empty((n, *template.shape[1:]), dtype=self.dtype, device="cpu",
                           pin_memory=self.device.type == "cuda")
        rows.copy_(template.to("cpu").expand_as(rows))
        return rows

    def read(self, a: int, b: int) -> torch.Tensor:
        return self.rows[a:b].to(self.device, torch.float32, non_blocking=True)

    def write(self, a: int, b: int, rows: torch.Tensor) -> None:
        self.rows[a:b].copy_(rows)                # device -> host (waits for the copy), rounded to dtype


class DiskRows:
    """The rows in a file of ``folder`` (module docstring)."""

    where = "disk"

    def __init__(self, template: torch.Tensor, n: int, dtype: torch.dtype, device: torch.device, folder: str,
                 name: str):
        self.device, self.dtype, self.n = device, dtype, n
        self.shape = tuple(template.shape[1:])
        self.row_bytes = dtype.itemsize * math.prod(self.shape)
        self.path = os.path.join(folder, f"{name}.rows")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        row = template.to("cpu", dtype).contiguous()
        if not bool((row.reshape(-1).view(torch.uint8) != 0).any()):
            os.ftruncate(self.fd, n * self.row_bytes)    # all-zero rows: a sparse file reads back as zeros
        else:
            block = max(1, min(n, (64 << 20) // max(self.row_bytes, 1)))   # write the template 64 MiB at a time
            rows = row.expand(block, *self.shape).contiguous()
            for a in range(0, n, block):
                write_from(self.fd, rows[:min(block, n - a)], a * self.row_bytes)

    def read(self, a: int, b: int) -> torch.Tensor:
        buf = torch.empty((b - a, *self.shape), dtype=self.dtype)
        read_into(self.fd, buf, a * self.row_bytes)
        return buf.to(self.device, torch.float32)    # no copy for float32 rows on a CPU device

    def write(self, a: int, b: int, rows: torch.Tensor) -> None:
        write_from(self.fd, rows.to("cpu", self.dtype).contiguous(), a * self.row_bytes)

    def all(self) -> torch.Tensor:
        return self.read(0, self.n)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Spill:
    """This round's uploads, on disk until the server decodes them: put() writes
    a chunk's payload tensors at the end of one file and hands back where they
    are; take() reads them back (the same bits) onto the device; clear() starts
    the next round at the file's beginning."""

    def __init__(self, folder: str, device: torch.device):
        self.device, self.end = device, 0
        self.fd = os.open(os.path.join(folder, "uploads.bin"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)

    def put(self, tensors) -> list[tuple[str, torch.dtype, tuple[int, ...], int]]:
        where = []
        for k, t in tensors.items():
            host = t.detach().to("cpu").contiguous()
            write_from(self.fd, host, self.end)
            where.append((k, host.dtype, tuple(host.shape), self.end))
            self.end += host.numel() * host.element_size()
        return where

    def take(self, where) -> dict[str, torch.Tensor]:
        out = {}
        for k, dtype, shape, offset in where:
            buf = torch.empty(shape, dtype=dtype)
            read_into(self.fd, buf, offset)
            out[k] = buf.to(self.device)
        return out

    def clear(self) -> None:
        self.end = 0

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Folder:
    """The private folder of a run's disk store, removed by close() or when
    the object is collected (an interrupted run leaves nothing behind)."""

    def __init__(self, parent: str | None):
        self._dir = tempfile.TemporaryDirectory(prefix="commsim-state-", dir=parent)
        self.path = self._dir.name

    def close(self) -> None:
        self._dir.cleanup()


def free_disk_bytes(parent: str | None) -> int:
    """Free bytes of the file system holding ``parent`` (default: the temporary folder)."""
    return shutil.disk_usage(parent or tempfile.gettempdir()).free
