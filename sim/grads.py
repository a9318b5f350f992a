"""Per-worker gradients: one batched call for all n workers.

``torch.func.vmap(grad_and_value(loss))`` maps the loss over the worker axis
of the minibatch tensor, giving the ``[n, d]`` gradient matrix in one call.
Models vmap cannot handle fall back to a Python loop over workers
(``mode: loop``); ``tests/test_grads.py`` checks that both agree.
"""
from __future__ import annotations

import torch

from .models import FlatModel
from .rng import TAG_DROPOUT, WorkerStreams


class GradFn:
    """grads, losses = GradFn(model)(theta, x, y, masks)

    theta [d]; x [n, b, *input_shape]; y [n, b]; masks: dropout name ->
    [n, b, *feature_shape].  Returns grads [n, d] and minibatch losses [n].
    """

    def __init__(self, model: FlatModel, mode: str = "vmap") -> None:
        if mode not in ("vmap", "loop"):
            raise ValueError(f"unknown gradient mode {mode!r}; allowed: vmap, loop")
        self.model = model
        self.mode = mode
        self._one = torch.func.grad_and_value(model.loss)
        self._batched = torch.func.vmap(self._one, in_dims=(None, 0, 0, 0))

    def __call__(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                 masks: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        masks = masks or {}
        if self.mode == "vmap":
            return self._batched(theta, x, y, masks)
        outs = [self._one(theta, x[i], y[i], {k: m[i] for k, m in masks.items()})
                for i in range(x.shape[0])]
        return torch.stack([g for g, _ in outs]), torch.stack([l for _, l in outs])


def dropout_masks(model: FlatModel, streams: WorkerStreams, round: int, batch: int) -> dict[str, torch.Tensor]:
    """Inverted-dropout masks for every MaskDropout layer: keep / (1 - p),
    [n, batch, *feature_shape], drawn from each worker's own stream."""
    out = {}
    for i, (name, mod) in enumerate(sorted(model.dropouts.items())):
        if mod.p == 0.0:
            continue
        u = streams.uniform(streams_tag(i), round, (batch, *mod.feature_shape))
        out[name] = (u >= mod.p).to(torch.float32) / (1.0 - mod.p)
    return out


def streams_tag(layer: int) -> int:
    return TAG_DROPOUT + 1000 * layer
