"""The synchronous parameter-server round in chunks of workers, within a memory
budget (issue 15, goal 6: ``compute.memory_budget``, ``compute.state_dtype``).

The unchunked round (sim/engine.py Trainer) holds, at its peak, about
ROUND_ROWS float32 ``[n, d]`` tensors (gradients, x + e, decoded uploads, the
new error, compressor scratch) and the saved activations of n workers'
backward passes.  When that does not fit in the budget the round goes chunk by
chunk, c workers at a time (rows a .. b):

    worker side, per chunk:  gradients [c, d] (one batched call) -> the
        algorithm's worker_encode on the chunk's state rows [c, d] and streams
        (WorkerStreams.rows) -> payload kept (the wire data) + state rows written back
    server side, per chunk:  decode the payload [c, d] and fold it into the sum
        over workers (algorithms/ps.py fold_rows); then g_bar = sum / |arrived|
        and the algorithm's apply_mean (optimizer, broadcast)

Why the results are the bits of the unchunked run (tests/test_chunked.py):

* the worker-side math is row-wise: a worker's local transform, compressor and
  error feedback read its own row and its own counter-based stream; the
  conformance test checks this for every registered compressor;
* the sum over workers is the same fold over fixed blocks of REDUCE_ROWS
  workers in both; chunks start on block boundaries;
* a chunk's batched gradients equal the rows of the [n]-worker call when the
  chunk has at least as many workers as torch has intra-op threads (measured:
  a one-worker call on 2 threads splits its GEMMs differently and differs in
  the last bit); no chunk is smaller than that, nor than one block.

What is kept between rounds: the per-worker state rows (``[n, d]`` error
feedback, local momenta) in ``state_dtype``, the server state, and this
round's payloads until the server has decoded them.  The rows live where
``compute.state_store`` says (sim/learn/rowstore.py): on the device, on the
host (pinned; ``auto`` picks it when a GPU cannot hold them), or on disk with
the round's uploads, so that the budget holds only the server's vectors and
one chunk.  Only the parameter-server family
(algorithms/ps.py ParameterServer, without ``late: apply``) runs in chunks;
another algorithm whose round does not fit is refused.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

from algorithms.base import Payload
from algorithms.ps import REDUCE_ROWS, ParameterServer, fold_rows
from sim.alloc import keep_within
from sim.errors import ConfigError
from sim.learn import rowstore
from sim.learn.memory import available_bytes, gib

FLOAT32_BYTES = 4
ROUND_ROWS = 6        # float32 [n, d] tensors the unchunked round holds at its peak (see above)
SERVER_VECTORS = 8    # [d] float32 vectors of the server: theta, its update, g_bar, optimizer state (<= 3), scratch
STATE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def activation_bytes(model, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes the backward pass of one worker's minibatch x [b, ...] keeps
    (the tensors autograd saves in its training-mode loss), measured on the
    real model with saved-tensor hooks."""
    total = [0]

    def pack(t: torch.Tensor):
        total[0] += t.numel() * t.element_size()
        return t

    th = theta.detach().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.loss(th, x, y)
    return int(total[0])


@dataclass
class Plan:
    """How a round runs under the budget: ``rows`` workers per chunk (None: unchunked)."""

    rows: int | None
    budget_bytes: int
    state_bytes: int          # per-worker state kept between rounds, all workers
    row_bytes: int            # transient bytes per worker in a chunk (ROUND_ROWS [d] vectors + activations)
    why: str = ""
    store: str = "device"     # where the state rows live (sim/learn/rowstore.py): device, host or disk

    @property
    def trim_above(self) -> int | None:
        """Resident bytes above which a chunk is followed by a heap trim
        (sim/alloc.py keep_within): the budget less one chunk's bytes, so that
        the next chunk, which needs at most that much new memory, stays within
        the budget.  None without a budget or chunks."""
        if not self.budget_bytes or self.rows is None:
            return None
        return max(0, self.budget_bytes - self.rows * self.row_bytes)


def min_rows(n: int) -> int:
    """No chunk smaller than one block nor than torch's intra-op threads (module docstring)."""
    return min(n, max(REDUCE_ROWS, torch.get_num_threads()))


def bounds(n: int, rows: int) -> list[tuple[int, int]]:
    """Chunks of ``rows`` workers (a multiple of REDUCE_ROWS) starting on block
    boundaries; a last chunk below :func:`min_rows` is merged into the one before."""
    out = [(a, min(a + rows, n)) for a in range(0, n, rows)]
    if len(out) > 1 and out[-1][1] - out[-1][0] < min_rows(n):
        out[-2:] = [(out[-2][0], n)]
    return out


def state_rows(state) -> dict[str, torch.Tensor]:
    """The per-worker state leaves of a PSState: name -> [n, ...] tensor."""
    out = {}
    if state.error is not None:
        out["error"] = state.error
    local = state.local
    if isinstance(local, torch.Tensor):
        out["local"] = local
    elif local is not None:
        for k in local.__dataclass_fields__:
            out[f"local.{k}"] = getattr(local, k)
    return out


def with_rows(state, rows: dict[str, torch.Tensor]):
    """A PSState whose per-worker leaves are ``rows`` (the inverse of :func:`state_rows`)."""
    local = state.local
    if isinstance(local, torch.Tensor):
        local = rows["local"]
    elif local is not None:
        local = type(local)(**{k: rows[f"local.{k}"] for k in local.__dataclass_fields__})
    return dataclasses.replace(state, error=rows.get("error"), local=local)


def make_plan(scn, alg, d: int, n: int, device: torch.device, act_row: int | None, n_state: int,
              payload_row: int | None = None) -> Plan:
    """Decide chunking: unchunked when the whole round fits (state float32 on
    the device), else the largest chunk that fits; ConfigError when nothing
    fits or the algorithm cannot run in chunks.  ``act_row``: activation bytes
    of one worker (:func:`activation_bytes`); ``n_state``: [n, d] state tensors
    per worker (:func:`state_rows` of a one-worker state); ``payload_row``:
    bytes one worker's upload keeps until the server decodes it
    (:func:`payload_bytes`; default a dense float32 row).

    What the budget must hold, by ``compute.state_store`` (sim/learn/rowstore.py):

      device  server vectors + every worker's state + this round's uploads + c rows
      host    server vectors + this round's uploads + c (rows + the chunk's state, float32);
              the state itself in the host's memory (MemAvailable)
      disk    server vectors + c (rows + the chunk's state read buffer, and its float32
              copy unless float32 on a CPU device, + one upload); the state and the
              uploads in the file system of compute.state_dir
    """
    comp = scn.compute
    dtype = comp.state_dtype
    if comp.memory_budget is not None:
        budget, source = int(comp.memory_budget), "compute.memory_budget"
    else:
        have, source = available_bytes(device)
        if have is None:
            return Plan(None, 0, 0, 0, "no budget known")
        budget = int(have)
    store = comp.state_store
    if store == "host" and device.type != "cuda":
        store = "device"                                  # on a CPU device the host is the device
    chunkable = isinstance(alg, ParameterServer) and not alg.keep_late
    itemsize = STATE_DTYPES[dtype].itemsize
    row = FLOAT32_BYTES * d * ROUND_ROWS + int(act_row or 0)
    fixed = FLOAT32_BYTES * d * SERVER_VECTORS
    whole = fixed + n * (row + FLOAT32_BYTES * d * n_state)
    if dtype == "float32" and store in ("auto", "device") and whole <= budget:
        return Plan(None, budget, FLOAT32_BYTES * d * n_state * n, row)
    if not chunkable:
        why = ("its state is kept in bfloat16 (compute.state_dtype)" if dtype != "float32" else
               f"its state is kept on the {store} (compute.state_store)" if store in ("host", "disk") else
               f"its round needs about {gib(whole)}, more than the {gib(budget)} of {source}")
        raise ConfigError(f"algorithm {getattr(alg, 'name', '?')!r} cannot run in chunks of workers, and {why}; "
                          "allowed: a parameter-server algorithm (sgd, topk_ef_sgd, comp_ams, ...) without "
                          "late: apply, state_dtype: float32 and state_store: auto or device, or a larger "
                          "memory_budget", field="compute.memory_budget")
    state = itemsize * d * n_state * n
    # the payloads of a round are kept until the server decodes them
    one_up = FLOAT32_BYTES * d if payload_row is None else int(payload_row)
    payload = one_up * n
    chunk_state = FLOAT32_BYTES * d * n_state                      # a chunk's rows, float32 on the device
    disk_state = itemsize * d * n_state + (0 if itemsize == FLOAT32_BYTES and device.type == "cpu" else chunk_state)
    per_store = {"device": (state + payload, row), "host": (payload, row + chunk_state),
                 "disk": (0, row + disk_state + one_up)}
    least = min_rows(n)

    def fit(where: str) -> tuple[int, int]:
        """(rows per chunk that fit, the budget a chunk of ``least`` rows needs) with the state ``where``."""
        held, per_row = per_store[where]
        left = budget - fixed - held
        rows = (left // per_row) // REDUCE_ROWS * REDUCE_ROWS if left > 0 else 0
        return rows, fixed + held + least * per_row

    room: list = []

    def host_room() -> tuple[int | None, str]:
        """The host's free memory (read once)."""
        if not room:
            room.append(available_bytes(torch.device("cpu")))
        return room[0]

    if store == "auto":
        store = "device"
        if fit("device")[0] < least and device.type == "cuda" and fit("host")[0] >= least and \
                (host_room()[0] is None or state <= host_room()[0]):
            store = "host"                                # the GPU is short: the state on the (pinned) host
    rows, need = fit(store)
    if rows < least:
        others = [f"memory_budget >= {gib(need)}", "state_dtype: bfloat16"]
        if store != "disk":
            others.append(f"state_store: disk (then memory_budget >= {gib(fit('disk')[1])})")
        raise ConfigError(
            f"d = {d:,} and workers = {n} need at least {gib(need)} in chunks of {least} workers "
            f"(per-worker state {gib(state)} in {dtype} on the {store}, this round's uploads {gib(payload)}, "
            f"{gib(per_store[store][1])} per worker in a chunk), more than the {gib(budget)} of {source}; allowed: "
            f"{', '.join(others)}, or fewer workers", field="compute.memory_budget")
    if store == "host":
        have, where = host_room()
        if have is not None and state > have:
            raise ConfigError(f"the per-worker state ({gib(state)} in {dtype}) does not fit in the host's "
                              f"{gib(have)} ({where}); allowed: state_store: disk, state_dtype: bfloat16, "
                              "or fewer workers", field="compute.state_store")
    if store == "disk":
        if comp.state_dir is not None and not os.path.isdir(comp.state_dir):
            raise ConfigError(f"{comp.state_dir!r} is not a folder; allowed: an existing folder with room for "
                              f"{gib(state + payload)}, or leave state_dir unset (the temporary folder)",
                              field="compute.state_dir")
        free = rowstore.free_disk_bytes(comp.state_dir)
        if state + payload > free:
            raise ConfigError(f"the per-worker state ({gib(state)} in {dtype}) and one round's uploads "
                              f"({gib(payload)}) need {gib(state + payload)} on disk, more than the {gib(free)} "
                              f"free in {comp.state_dir or 'the temporary folder'}; allowed: a state_dir with "
                              "room, state_dtype: bfloat16, or fewer workers", field="compute.state_dir")
    return Plan(min(rows, n), budget, state, per_store[store][1], store=store)


class ChunkedRound:
    """Drives a ParameterServer ``alg`` over chunks of ``rows`` workers.

    ``state`` is the algorithm's PSState without per-worker leaves (they live
    in ``self.store``, one sim/learn/rowstore.py store per leaf, in
    ``state_dtype`` and where ``store`` says); the engine calls :meth:`encode`
    in its plan and :meth:`aggregate` in its update."""

    def __init__(self, alg: ParameterServer, theta: torch.Tensor, n: int, rows: int | None, state_dtype: str,
                 store: str = "device", state_dir: str | None = None, limit: int | None = None):
        self.alg, self.n = alg, n
        self.rows = rows or n
        self.dtype = STATE_DTYPES[state_dtype]
        self.where = store
        one = dataclasses.replace(alg, n=1).init(theta)       # the state of one worker: the template row
        self.folder = rowstore.Folder(state_dir) if store == "disk" else None
        dev = theta.device
        make = {"device": lambda k, v: rowstore.DeviceRows(v, n, self.dtype, dev),
                "host": lambda k, v: rowstore.HostRows(v, n, self.dtype, dev),
                "disk": lambda k, v: rowstore.DiskRows(v, n, self.dtype, dev, self.folder.path, k)}[store]
        self.store = {k: make(k, v) for k, v in state_rows(one).items()}
        self.spill = rowstore.Spill(self.folder.path, dev) if store == "disk" else None
        # on a CPU the budget is the process's memory: freed heap pages above it go back (sim/alloc.py)
        self.limit = limit if dev.type == "cpu" and limit is not None else None
        self.state = with_rows(one, {k: None for k in self.store}) if self.store else one
        self.payloads: list[tuple[int, int, object]] = []

    def chunks(self) -> list[tuple[int, int]]:
        return bounds(self.n, self.rows)

    def begin(self) -> None:
        """A new round: last round's uploads are gone."""
        self.payloads = []
        if self.spill is not None:
            self.spill.clear()

    def encode(self, a: int, b: int, grads: torch.Tensor, t: int, streams, active: torch.Tensor):
        """Worker side of rows a .. b: grads [b - a, d] -> Upload of the chunk (its payload kept)."""
        state = with_rows(self.state, {k: v.read(a, b) for k, v in self.store.items()})
        upload, new = self.alg.worker_encode(state, grads, t, streams.rows(a, b), active[a:b])
        for k, v in state_rows(new).items():
            self.store[k].write(a, b, v)
        self.state = dataclasses.replace(with_rows(new, {k: None for k in self.store}), decoded=None)
        kept = upload.payload if self.spill is None else (self.spill.put(upload.payload.tensors),
                                                          upload.payload.nbytes)
        self.payloads.append((a, b, kept))
        self._trim()
        return upload

    def _trim(self) -> None:
        if self.limit is not None:
            keep_within(self.limit)

    def _payload(self, kept):
        if self.spill is None:
            return kept
        where, nbytes = kept
        return Payload(self.spill.take(where), nbytes)

    def aggregate(self, theta: torch.Tensor, arrived: torch.Tensor, t: int):
        """Server side: the mean of the arrived workers' decoded uploads,
        folded chunk by chunk, then the algorithm's step.  -> (theta, Downlink)."""
        w = arrived.to(device=theta.device, dtype=torch.bool)
        acc = None
        for a, b, kept in self.payloads:
            acc = fold_rows(self.alg.compressor.decompress(self._payload(kept)), w[a:b], acc, start=a)
            self._trim()
        self.begin()
        count = float(w.sum().clamp(min=1))
        g_bar = acc / count
        theta, down, self.state = self.alg.apply_mean(self.state, theta, g_bar, t)
        return theta, down

    def full_state(self):
        """The algorithm's state with every worker's rows (float32), for inspection and tests."""
        return with_rows(self.state, {k: v.all() for k, v in self.store.items()})

    def close(self) -> None:
        """Release the stores (the disk store's folder is removed)."""
        for v in self.store.values():
            v.close()
        if self.spill is not None:
            self.spill.close()
        if self.folder is not None:
            self.folder.close()


def plan_round(world, alg, theta: torch.Tensor) -> tuple[Plan, int]:
    """The Plan of ``alg`` in ``world`` and its per-worker state tensor count.
    Without a budget or bfloat16 state, activations are measured only when the
    round's [n, d] tensors alone come near the free memory (so a default run
    does not pay for the measurement)."""
    scn, d, n = world.scenario, world.model.d, world.n
    leaves = len(state_rows(dataclasses.replace(alg, n=1).init(theta))) if isinstance(alg, ParameterServer) else 1
    comp = scn.compute
    if comp.memory_budget is None and comp.state_dtype == "float32" and comp.state_store in ("auto", "device"):
        have, _ = available_bytes(world.device)
        if have is None or FLOAT32_BYTES * d * (n * (ROUND_ROWS + leaves) + SERVER_VECTORS) * 2 <= have:
            return Plan(None, int(have or 0), 0, 0, "fits"), leaves
    b = scn.batch_size
    act = activation_bytes(world.model, theta, world.x_train[:b], world.y_train[:b])
    payload = payload_bytes(alg, d, world.device) if isinstance(alg, ParameterServer) else None
    return make_plan(scn, alg, d, n, world.device, act, leaves, payload), leaves


def payload_bytes(alg, d: int, device) -> int:
    """Bytes of the tensors of one worker's upload: the algorithm's compressor
    on one row of normal noise (exact for codes of fixed size: top-k, sign,
    qsgd, dense; an estimate for codes whose size depends on the data)."""
    from sim.learn.rng import WorkerStreams
    x = torch.randn(1, d, generator=torch.Generator().manual_seed(0)).to(device)
    payload = alg.compressor.compress(x, streams=WorkerStreams(0, 1, device), round=0)
    return int(sum(t.numel() * t.element_size() for t in payload.tensors.values()))

