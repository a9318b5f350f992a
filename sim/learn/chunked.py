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
feedback, local momenta) in ``state_dtype`` on the device, the server state,
and this round's payloads until the server has decoded them.  Not built: state
on the host (pinned) or on disk when even that does not fit; such a scenario
is refused with the figures.  Only the parameter-server family
(algorithms/ps.py ParameterServer, without ``late: apply``) runs in chunks;
another algorithm whose round does not fit is refused.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from algorithms.ps import REDUCE_ROWS, ParameterServer, fold_rows
from sim.errors import ConfigError
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
    """Decide chunking: unchunked when the whole round fits (and state is
    float32), else the largest chunk that fits; ConfigError when nothing fits
    or the algorithm cannot run in chunks.  ``act_row``: activation bytes of
    one worker (:func:`activation_bytes`); ``n_state``: [n, d] state tensors
    per worker (:func:`state_rows` of a one-worker state); ``payload_row``:
    bytes one worker's upload keeps until the server decodes it
    (:func:`payload_bytes`; default a dense float32 row)."""
    comp = scn.compute
    dtype = comp.state_dtype
    if comp.memory_budget is not None:
        budget, source = int(comp.memory_budget), "compute.memory_budget"
    else:
        have, source = available_bytes(device)
        if have is None:
            return Plan(None, 0, 0, 0, "no budget known")
        budget = int(have)
    chunkable = isinstance(alg, ParameterServer) and not alg.keep_late
    itemsize = STATE_DTYPES[dtype].itemsize
    row = FLOAT32_BYTES * d * ROUND_ROWS + int(act_row or 0)
    fixed = FLOAT32_BYTES * d * SERVER_VECTORS
    whole = fixed + n * (row + FLOAT32_BYTES * d * n_state)
    if dtype == "float32" and whole <= budget:
        return Plan(None, budget, FLOAT32_BYTES * d * n_state * n, row)
    if not chunkable:
        why = ("its state is kept in bfloat16 (compute.state_dtype)" if dtype != "float32" else
               f"its round needs about {gib(whole)}, more than the {gib(budget)} of {source}")
        raise ConfigError(f"algorithm {getattr(alg, 'name', '?')!r} cannot run in chunks of workers, and {why}; "
                          "allowed: a parameter-server algorithm (sgd, topk_ef_sgd, comp_ams, ...) without "
                          "late: apply, state_dtype: float32, or a larger memory_budget", field="compute.memory_budget")
    state = itemsize * d * n_state * n
    # the payloads of a round are kept until the server decodes them
    payload = (FLOAT32_BYTES * d if payload_row is None else int(payload_row)) * n
    left = budget - fixed - state - payload
    rows = (left // row) // REDUCE_ROWS * REDUCE_ROWS if left > 0 else 0
    least = min_rows(n)
    if rows < least:
        need = fixed + state + payload + least * row
        raise ConfigError(
            f"d = {d:,} and workers = {n} need at least {gib(need)} in chunks of {least} workers "
            f"(per-worker state {gib(state)} in {dtype}, this round's uploads {gib(payload)}, "
            f"{gib(row)} per worker in a chunk), more than the {gib(budget)} of {source}; allowed: "
            f"memory_budget >= {gib(need)}, state_dtype: bfloat16, or fewer workers", field="compute.memory_budget")
    return Plan(min(rows, n), budget, state, row)


class ChunkedRound:
    """Drives a ParameterServer ``alg`` over chunks of ``rows`` workers.

    ``state`` is the algorithm's PSState without per-worker leaves (they live
    in ``self.rows``, ``state_dtype``); the engine calls :meth:`encode` in its
    plan and :meth:`aggregate` in its update."""

    def __init__(self, alg: ParameterServer, theta: torch.Tensor, n: int, rows: int | None, state_dtype: str):
        self.alg, self.n = alg, n
        self.rows = rows or n
        self.dtype = STATE_DTYPES[state_dtype]
        one = dataclasses.replace(alg, n=1).init(theta)       # the state of one worker: the template row
        self.store = {k: v.to(self.dtype).repeat(n, *([1] * (v.dim() - 1))) for k, v in state_rows(one).items()}
        self.state = with_rows(one, {k: None for k in self.store}) if self.store else one
        self.payloads: list[tuple[int, int, object]] = []

    def chunks(self) -> list[tuple[int, int]]:
        return bounds(self.n, self.rows)

    def encode(self, a: int, b: int, grads: torch.Tensor, t: int, streams, active: torch.Tensor):
        """Worker side of rows a .. b: grads [b - a, d] -> Upload of the chunk (its payload kept)."""
        rows = {k: v[a:b].to(torch.float32) if self.dtype != torch.float32 else v[a:b] for k, v in self.store.items()}
        state = with_rows(self.state, rows)
        upload, new = self.alg.worker_encode(state, grads, t, streams.rows(a, b), active[a:b])
        for k, v in state_rows(new).items():
            dst = self.store[k][a:b]
            if v.data_ptr() != dst.data_ptr():     # worker_encode made new rows (it may also hand back ours)
                dst.copy_(v)
        self.state = dataclasses.replace(with_rows(new, {k: None for k in self.store}), decoded=None)
        self.payloads.append((a, b, upload.payload))
        return upload

    def aggregate(self, theta: torch.Tensor, arrived: torch.Tensor, t: int):
        """Server side: the mean of the arrived workers' decoded uploads,
        folded chunk by chunk, then the algorithm's step.  -> (theta, Downlink)."""
        w = arrived.to(device=theta.device, dtype=torch.bool)
        acc = None
        for a, b, payload in self.payloads:
            acc = fold_rows(self.alg.compressor.decompress(payload), w[a:b], acc, start=a)
        self.payloads = []
        count = float(w.sum().clamp(min=1))
        g_bar = acc / count
        theta, down, self.state = self.alg.apply_mean(self.state, theta, g_bar, t)
        return theta, down

    def full_state(self):
        """The algorithm's state with every worker's rows (float32), for inspection and tests."""
        return with_rows(self.state, {k: v.to(torch.float32) for k, v in self.store.items()})


def plan_round(world, alg, theta: torch.Tensor) -> tuple[Plan, int]:
    """The Plan of ``alg`` in ``world`` and its per-worker state tensor count.
    Without a budget or bfloat16 state, activations are measured only when the
    round's [n, d] tensors alone come near the free memory (so a default run
    does not pay for the measurement)."""
    scn, d, n = world.scenario, world.model.d, world.n
    leaves = len(state_rows(dataclasses.replace(alg, n=1).init(theta))) if isinstance(alg, ParameterServer) else 1
    comp = scn.compute
    if comp.memory_budget is None and comp.state_dtype == "float32":
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

