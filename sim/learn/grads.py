"""Per-worker gradients: one batched call for all n workers.

``torch.func.vmap(grad_and_value(loss))`` maps the loss over the worker axis
of the minibatch tensor, giving the ``[n, d]`` gradient matrix in one call.
Models vmap cannot handle fall back to a Python loop over workers
(``mode: loop``); ``tests/test_grads.py`` and ``tests/test_models.py`` check
that both agree.

BatchNorm (models with ``model.has_buffers``): inside the vmap every worker's
minibatch is a separate call, so each worker normalises over its own
minibatch, as it would on its own machine.  Pass the server's running
statistics as ``buffers`` and GradFn also returns each worker's updated
statistics ``[n, ...]``; :func:`sim.learn.models.merge_buffers` turns them into the
server's next set.
"""
from __future__ import annotations

import contextlib

import torch

from sim.learn.models import Buffers, FlatModel
from sim.learn.rng import TAG_DROPOUT, WorkerStreams, to_uniform


@contextlib.contextmanager
def threads_for(rows: int):
    """Run a batched call of ``rows`` workers on one thread when it has fewer
    rows than torch has intra-op threads.  A batch of at least that many rows
    gives each thread whole per-worker products; a smaller one lets the BLAS
    split a single product across threads, in another order, and its rows
    then differ in the last bit from the same workers' rows in a wider call
    (measured on a 2-core AMD EPYC: a one-worker call; on the 2-core Intel Xeon
    the same call agreed).  On one thread every call agrees, so a worker's
    gradient does not depend on how many others share its call: the batches
    of the event-driven and gossip engines (:meth:`GradFn.at`), proved equal
    to one-at-a-time runs.  (The chunked rounds of sim/learn/chunked.py share
    one theta and never make a chunk smaller than the threads instead.)"""
    threads = torch.get_num_threads()
    if rows >= threads or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class GradFn:
    """Per-worker gradients of the training loss.

    ``grads, losses = GradFn(model)(theta, x, y, masks)`` for models without
    running statistics, and for any model

    ``grads, losses, new_buffers = GradFn(model)(theta, x, y, masks, buffers)``

    theta [d]; x [n, b, *input_shape]; y [n, b]; masks: dropout name ->
    [n, b, *feature_shape]; buffers: the running statistics every worker
    starts from (name -> tensor, ``model.buffers0()`` at the start; ``{}``
    for models without BatchNorm).  Returns grads [n, d], minibatch losses [n]
    and, when ``buffers`` is given, each worker's updated running statistics
    (name -> [n, ...]; ``{}`` without BatchNorm).
    """

    def __init__(self, model: FlatModel, mode: str = "vmap") -> None:
        if mode not in ("vmap", "loop"):
            raise ValueError(f"unknown gradient mode {mode!r}; allowed: vmap, loop")
        self.model = model
        self.mode = mode
        self._one = torch.func.grad_and_value(model.loss)
        self._batched = torch.func.vmap(self._one, in_dims=(None, 0, 0, 0))
        self._one_aux = torch.func.grad_and_value(model.loss_and_buffers, has_aux=True)
        self._batched_aux = torch.func.vmap(self._one_aux, in_dims=(None, 0, 0, 0, None))

    def __call__(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                 masks: dict[str, torch.Tensor] | None = None, buffers: Buffers | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, Buffers]:
        masks = masks or {}
        if buffers is None:
            if self.model.has_buffers:
                raise ValueError("this model has BatchNorm running statistics: call "
                                 "grad_fn(theta, x, y, masks, buffers) with buffers = model.buffers0() "
                                 "(then the server's merged statistics) and use the returned new buffers")
            return self._plain(theta, x, y, masks)
        if not self.model.has_buffers:
            grads, losses = self._plain(theta, x, y, masks)
            return grads, losses, {}
        if self.mode == "vmap":
            grads, (losses, new) = self._batched_aux(theta, x, y, masks, buffers)
            return grads, losses, new
        outs = [self._one_aux(theta, x[i], y[i], {k: m[i] for k, m in masks.items()}, buffers)
                for i in range(x.shape[0])]
        new = {k: torch.stack([aux[k] for _, (_, aux) in outs]) for k in self.model.buffer_names}
        return (torch.stack([g for g, _ in outs]), torch.stack([l for _, (l, _) in outs]), new)

    def at(self, thetas: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
           masks: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Each worker's gradient at its own parameters: thetas [n, d] -> [n, d]
        (the auxiliary gradients of skip rules), one batched call."""
        if self.model.has_buffers:
            raise ValueError("per-worker parameters are not supported for BatchNorm models")
        with threads_for(x.shape[0]):
            return self._at(thetas, x, y, masks or {})

    def _at(self, thetas, x, y, masks):
        if self.mode == "vmap":
            if not hasattr(self, "_per_worker"):
                self._per_worker = torch.func.vmap(self._one, in_dims=(0, 0, 0, 0))
            return self._per_worker(thetas, x, y, masks)[0]
        return torch.stack([self._one(thetas[i], x[i], y[i], {k: m[i] for k, m in masks.items()})[0]
                            for i in range(x.shape[0])])

    def _plain(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
               masks: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode == "vmap":
            return self._batched(theta, x, y, masks)
        outs = [self._one(theta, x[i], y[i], {k: m[i] for k, m in masks.items()})
                for i in range(x.shape[0])]
        return torch.stack([g for g, _ in outs]), torch.stack([l for _, l in outs])


def dropout_masks(model: FlatModel, streams: WorkerStreams, round: int, batch: int) -> dict[str, torch.Tensor]:
    """Inverted-dropout masks for every MaskDropout layer: keep / (1 - p),
    [n, batch, *feature_shape], drawn from each worker's own stream (every
    worker's row of :func:`masks_at` at ``round``)."""
    workers = torch.arange(streams.n, device=streams.device)
    return masks_at(model, streams, workers, torch.full_like(workers, round), batch)


def masks_at(model: FlatModel, streams: WorkerStreams, workers: torch.Tensor, rounds: torch.Tensor,
             batch: int, sub: int | None = None, tag_offset: int = 0) -> dict[str, torch.Tensor]:
    """As :func:`dropout_masks`, for rows of (worker, round[, sub]) pairs: [m, batch, *feature_shape]."""
    out = {}
    for i, (name, mod) in enumerate(sorted(model.dropouts.items())):
        if mod.p == 0.0:
            continue
        u = to_uniform(streams.bits_at(streams_tag(i) + tag_offset, workers, rounds, (batch, *mod.feature_shape),
                                       sub))
        out[name] = (u >= mod.p).to(torch.float32) / (1.0 - mod.p)
    return out


def streams_tag(layer: int) -> int:
    return TAG_DROPOUT + 1000 * layer
