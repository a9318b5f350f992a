"""Batched per-worker gradients agree with the loop and with autograd; dropout masks."""
from __future__ import annotations

import pytest
import torch

from sim.learn.grads import GradFn, dropout_masks
from sim.learn.models import CnnMnistConfig, LogRegConfig, MlpConfig, build_model
from sim.learn.rng import WorkerStreams


def batch(n, b, shape, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, b, *shape, generator=g), torch.randint(0, classes, (n, b), generator=g)


@pytest.mark.parametrize("cfg,shape", [(MlpConfig(hidden=[16, 8]), (1, 8, 8)), (LogRegConfig(), (20,)),
                                       (CnnMnistConfig(), (1, 12, 12))])
def test_vmap_equals_loop_and_autograd(cfg, shape):
    model = build_model(cfg, shape, 10)
    theta = model.init_params(0)
    x, y = batch(3, 5, shape)
    masks = dropout_masks(model, WorkerStreams(0, 3), round=0, batch=5)
    gv, lv = GradFn(model, "vmap")(theta, x, y, masks)
    gl, ll = GradFn(model, "loop")(theta, x, y, masks)
    assert gv.shape == (3, model.d) and lv.shape == (3,)
    torch.testing.assert_close(gv, gl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lv, ll)
    for i in range(3):  # against plain autograd on worker i's minibatch
        t = theta.clone().requires_grad_(True)
        loss = model.loss(t, x[i], y[i], {k: m[i] for k, m in masks.items()})
        loss.backward()
        torch.testing.assert_close(gv[i], t.grad, rtol=1e-5, atol=1e-6)


def test_dropout_masks_are_per_worker_seeded_and_scaled():
    model = build_model(CnnMnistConfig(dropout=0.5), (1, 12, 12), 10)
    m1 = dropout_masks(model, WorkerStreams(7, 4), round=3, batch=6)
    m2 = dropout_masks(model, WorkerStreams(7, 4), round=3, batch=6)
    (name, mask), = m1.items()
    assert mask.shape == (4, 6, *model.dropouts[name].feature_shape)
    assert torch.equal(mask, m2[name])
    assert set(mask.unique().tolist()) == {0.0, 2.0}
    assert not torch.equal(mask[0], mask[1])                       # workers differ
    assert abs(float((mask > 0).float().mean()) - 0.5) < 0.05
    m3 = dropout_masks(model, WorkerStreams(7, 4), round=4, batch=6)
    assert not torch.equal(mask, m3[name])                          # rounds differ


def test_no_mask_means_eval_mode():
    model = build_model(CnnMnistConfig(), (1, 12, 12), 10)
    theta = model.init_params(0)
    x, _ = batch(1, 4, (1, 12, 12))
    out1 = model.forward(theta, x[0])
    out2 = model.forward(theta, x[0])
    assert torch.equal(out1, out2)


def test_init_params_is_seeded_and_leaves_global_rng_alone():
    model = build_model(MlpConfig(hidden=[16]), (4,), 3)
    state = torch.get_rng_state()
    a, b, c = model.init_params(1), model.init_params(1), model.init_params(2)
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (model.d,) == (4 * 16 + 16 + 16 * 3 + 3,)
