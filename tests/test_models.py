"""The papers' models (cnn_cifar, lstm_imdb, resnet18/50), BatchNorm under the
batched per-worker gradients, and the IMDB loader they train on."""
from __future__ import annotations

import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from sim.learn import data
from sim.learn.compute import forward_flops_per_sample
from sim.learn.data import load_dataset
from sim.errors import DataError
from sim.learn.grads import GradFn, dropout_masks
from sim.learn.models import (
    MODELS,
    BatchNorm,
    CnnCifarConfig,
    CnnMnistConfig,
    LogRegConfig,
    LSTMLayer,
    LstmImdbConfig,
    MlpConfig,
    ResNet18Config,
    ResNet50Config,
    build_model,
    merge_buffers,
)
from sim.learn.rng import WorkerStreams

# kind -> (config, paper input shape, classes, documented d)
PAPER = {
    "logreg": (LogRegConfig(), (1, 28, 28), 10, 7_850),
    "mlp": (MlpConfig(), (1, 28, 28), 10, 407_050),
    "cnn_mnist": (CnnMnistConfig(), (1, 28, 28), 10, 1_199_882),
    "cnn_cifar": (CnnCifarConfig(), (3, 32, 32), 10, 356_810),
    "lstm_imdb": (LstmImdbConfig(), (300,), 2, 59_266),
    "resnet18": (ResNet18Config(), (3, 32, 32), 10, 11_173_962),
    "resnet50": (ResNet50Config(), (3, 32, 32), 10, 23_520_842),
}

# kind -> (tiny config, input shape, classes) for the gradient tests
TINY = {
    "cnn_cifar": (CnnCifarConfig(channels=[4, 8, 8], fc_hidden=16), (3, 16, 16), 10),
    "lstm_imdb": (LstmImdbConfig(vocab=50, embed_dim=8, hidden=12, fc_hidden=8), (15,), 2),
    "resnet18": (ResNet18Config(width=4), (3, 16, 16), 10),
    "resnet50": (ResNet50Config(width=4), (3, 16, 16), 10),
}


def make_batch(model, n, b, seed=0):
    """x [n, b, *input_shape] (token ids, front-padded, for the LSTM), y [n, b]."""
    g = torch.Generator().manual_seed(seed)
    if model.input_dtype == torch.int64:
        vocab = model.module.embedding.num_embeddings - 1
        x = torch.randint(1, vocab + 1, (n, b, *model.input_shape), generator=g)
        lengths = torch.randint(1, model.input_shape[0] + 1, (n, b), generator=g)
        pos = torch.arange(model.input_shape[0])
        x = torch.where(pos >= model.input_shape[0] - lengths[..., None], x, 0)
    else:
        x = torch.randn(n, b, *model.input_shape, generator=g)
    return x, torch.randint(0, model.num_classes, (n, b), generator=g)


# --------------------------------------------------------------------------- #
# Every model at its paper size
# --------------------------------------------------------------------------- #


def test_every_registered_model_is_covered():
    assert set(MODELS.names()) == set(PAPER)
    assert set(TINY) <= set(PAPER)


@pytest.mark.parametrize("kind", sorted(PAPER))
def test_model_at_paper_size(kind):
    cfg, shape, classes, d = PAPER[kind]
    assert type(cfg) is MODELS[kind]
    model = build_model(cfg, shape, classes)
    assert model.d == d
    assert sum(b.stop - b.start for b in model.blocks) == d and model.blocks[-1].stop == d
    theta = model.init_params(0)
    assert theta.shape == (d,) and torch.isfinite(theta).all()
    x = model.example_input(2)
    assert x.dtype == (torch.int64 if kind == "lstm_imdb" else torch.float32)
    logits = model.forward(theta, x, buffers=model.buffers0())
    assert logits.shape == (2, classes) and torch.isfinite(logits).all()
    assert model.has_buffers == kind.startswith("resnet")
    assert forward_flops_per_sample(model) > 0       # what build_world does with float zeros


def test_resnet_width_scales_channels_and_cifar100_head():
    small = build_model(ResNet18Config(width=8), (3, 32, 32), 100)
    assert small.module.conv1.out_channels == 8
    assert small.module.linear.in_features == 64
    assert build_model(ResNet50Config(width=8), (3, 32, 32), 100).module.linear.in_features == 8 * 8 * 4
    with pytest.raises(ValueError):
        build_model(ResNet18Config(), (3, 4, 4), 10)
    with pytest.raises(ValueError):
        build_model(LstmImdbConfig(), (3, 32, 32), 10)


def test_new_models_init_is_seeded():
    model = build_model(*TINY["resnet18"])
    a, b, c = model.init_params(1), model.init_params(1), model.init_params(2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    weights = model.unflatten(a)
    assert torch.equal(weights["bn1.weight"], torch.ones(4)) and torch.equal(weights["bn1.bias"], torch.zeros(4))


# --------------------------------------------------------------------------- #
# Batched per-worker gradients
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("kind", sorted(TINY))
def test_vmap_equals_loop_and_autograd(kind):
    cfg, shape, classes = TINY[kind]
    model = build_model(cfg, shape, classes)
    theta = model.init_params(0)
    n, b = 3, 4
    x, y = make_batch(model, n, b)
    masks = dropout_masks(model, WorkerStreams(0, n), round=0, batch=b)
    assert bool(masks) == (kind == "cnn_cifar")
    buffers = model.buffers0()
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # e.g. vmap's "no batching rule" fallback warning
        gv, lv, bv = GradFn(model, "vmap")(theta, x, y, masks, buffers)
    gl, ll, bl = GradFn(model, "loop")(theta, x, y, masks, buffers)
    assert gv.shape == (n, model.d) and lv.shape == (n,)
    # atol relative to the gradient's scale: behind BatchNorm, weight gradients are sums
    # that largely cancel, so their smallest entries carry float32 rounding of the largest
    # (float32 vs float64 differ by far more than vmap vs loop for the tiny resnet50)
    atol = 1e-5 * float(gl.abs().max())
    torch.testing.assert_close(gv, gl, rtol=1e-4, atol=atol)
    torch.testing.assert_close(lv, ll, rtol=1e-4, atol=1e-6)
    assert set(bv) == set(bl) == set(model.buffer_names)
    for k in bv:
        assert bv[k].shape == (n, *buffers[k].shape)
        torch.testing.assert_close(bv[k], bl[k], rtol=1e-4, atol=1e-6)
    for i in range(n):  # plain autograd on worker i's minibatch alone
        t = theta.clone().requires_grad_(True)
        model.loss(t, x[i], y[i], {k: m[i] for k, m in masks.items()}).backward()
        torch.testing.assert_close(gv[i], t.grad, rtol=1e-4, atol=atol)
    if not model.has_buffers:  # the engine's current call still works
        g2, l2 = GradFn(model, "vmap")(theta, x, y, masks)
        torch.testing.assert_close(g2, gv)


# --------------------------------------------------------------------------- #
# BatchNorm
# --------------------------------------------------------------------------- #


def test_batchnorm_matches_torch_batchnorm():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 4, 4, generator=g)
    ours, ref = BatchNorm(3, momentum=0.2), nn.BatchNorm2d(3, momentum=0.2)
    with torch.no_grad():
        for m in (ours, ref):
            m.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
            m.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    ours._name, sink = "bn", {}
    ours._sink = sink
    torch.testing.assert_close(ours(x), ref.train()(x))
    torch.testing.assert_close(sink["bn.running_mean"], ref.running_mean)
    torch.testing.assert_close(sink["bn.running_var"], ref.running_var)
    ours._sink = None
    ref.eval()
    with torch.no_grad():
        ref.running_mean.copy_(torch.tensor([0.3, -0.2, 0.0]))
        ref.running_var.copy_(torch.tensor([2.0, 0.5, 1.0]))
        ours.running_mean.copy_(ref.running_mean)
        ours.running_var.copy_(ref.running_var)
    torch.testing.assert_close(ours(x), ref(x))


def test_batchnorm_statistics_are_per_worker():
    model = build_model(*TINY["resnet18"])
    theta, buffers = model.init_params(0), model.buffers0()
    x, y = make_batch(model, 3, 4)
    grad_fn = GradFn(model, "vmap")
    g1, l1, b1 = grad_fn(theta, x, y, {}, buffers)
    x2 = x.clone()
    x2[1] = 3.0 * x2[1] + 1.0                    # only worker 1's minibatch changes
    g2, l2, b2 = grad_fn(theta, x2, y, {}, buffers)
    torch.testing.assert_close(g2[0], g1[0], rtol=0, atol=0)
    torch.testing.assert_close(g2[2], g1[2], rtol=0, atol=0)
    assert not torch.allclose(g2[1], g1[1])
    for k in model.buffer_names:
        assert torch.equal(b2[k][[0, 2]], b1[k][[0, 2]])
        assert not torch.allclose(b2[k][1], b1[k][1])
    # worker 0's statistics are those of its own minibatch: first BN after the stem conv
    feat = nn.functional.conv2d(x[0], model.unflatten(theta)["conv1.weight"], padding=1)
    var, mean = torch.var_mean(feat, dim=(0, 2, 3), correction=1)
    torch.testing.assert_close(b1["bn1.running_mean"][0], 0.1 * mean, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(b1["bn1.running_var"][0], 0.9 + 0.1 * var, rtol=1e-4, atol=1e-6)


def test_merge_buffers_is_the_mean_over_arrived_workers():
    model = build_model(*TINY["resnet18"])
    theta, old = model.init_params(0), model.buffers0()
    x, y = make_batch(model, 3, 4)
    _, _, new = GradFn(model, "vmap")(theta, x, y, {}, old)
    merged = merge_buffers(old, new)
    some = merge_buffers(old, new, torch.tensor([True, False, True]))
    none = merge_buffers(old, new, torch.tensor([False, False, False]))
    for k in model.buffer_names:
        torch.testing.assert_close(merged[k], new[k].mean(0))
        torch.testing.assert_close(some[k], (new[k][0] + new[k][2]) / 2)
        assert torch.equal(none[k], old[k])
    assert merge_buffers({}, {}) == {}


def test_evaluation_uses_the_running_statistics():
    model = build_model(*TINY["resnet18"])
    theta = model.init_params(0)
    x, y = make_batch(model, 1, 6)
    b0 = model.buffers0()
    shifted = {k: v + 0.5 for k, v in b0.items()}
    out0 = model.forward(theta, x[0], buffers=b0)
    out1 = model.forward(theta, x[0], buffers=shifted)
    assert not torch.allclose(out0, out1)
    torch.testing.assert_close(model.forward(theta, x[0]), out0)            # default: the initial ones
    torch.testing.assert_close(model.forward(theta, x[0, :2], buffers=shifted), out1[:2])  # per sample
    logits, _ = model.forward_train(theta, x[0], buffers=shifted)
    torch.testing.assert_close(model.forward_train(theta, x[0], buffers=b0)[0], logits)  # batch stats only
    assert not torch.allclose(logits[:2], model.forward_train(theta, x[0, :2], buffers=b0)[0])
    # the template itself is never changed
    assert all(torch.equal(v, model.buffers0()[k]) for k, v in b0.items())


def test_gradfn_asks_for_buffers_only_where_needed():
    bn = build_model(*TINY["resnet18"])
    x, y = make_batch(bn, 2, 2)
    with pytest.raises(ValueError, match="buffers"):
        GradFn(bn)(bn.init_params(0), x, y, {})
    plain = build_model(MlpConfig(hidden=[8]), (4,), 3)
    assert plain.buffers0() == {}
    x, y = torch.randn(2, 3, 4), torch.randint(0, 3, (2, 3))
    grads, losses, new = GradFn(plain)(plain.init_params(0), x, y, {}, {})
    assert grads.shape == (2, plain.d) and new == {}


# --------------------------------------------------------------------------- #
# LSTM
# --------------------------------------------------------------------------- #


def test_lstm_layer_matches_torch_lstm():
    g = torch.Generator().manual_seed(0)
    ours, ref = LSTMLayer(5, 7), nn.LSTM(5, 7, batch_first=True)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(ref, f"{name}_l0").copy_(getattr(ours, name))
    x = torch.randn(3, 9, 5, generator=g, requires_grad=True)
    h = ours(x)
    _, (h_ref, _) = ref(x)
    torch.testing.assert_close(h, h_ref[0])
    (gx,) = torch.autograd.grad(h.square().sum(), x)
    (gx_ref,) = torch.autograd.grad(h_ref.square().sum(), x)
    torch.testing.assert_close(gx, gx_ref)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())


def test_lstm_padding_does_not_move_the_state():
    model = build_model(*TINY["lstm_imdb"])
    theta = model.init_params(0)
    words = torch.tensor([[5, 9, 3, 7]])
    padded = torch.cat([torch.zeros(1, 11, dtype=torch.int64), words], 1)
    short = build_model(LstmImdbConfig(vocab=50, embed_dim=8, hidden=12, fc_hidden=8), (4,), 2)
    torch.testing.assert_close(model.forward(theta, padded), short.forward(theta, words))
    unmasked = build_model(LstmImdbConfig(vocab=50, embed_dim=8, hidden=12, fc_hidden=8,
                                          mask_padding=False), (15,), 2)
    assert not torch.allclose(unmasked.forward(theta, padded), model.forward(theta, padded))


def test_lstm_embedding_padding_row_gets_no_gradient():
    model = build_model(*TINY["lstm_imdb"])
    theta = model.init_params(0)
    assert torch.equal(model.unflatten(theta)["embedding.weight"][0], torch.zeros(8))
    x, y = make_batch(model, 2, 3)
    grads, _ = GradFn(model)(theta, x, y)
    emb = next(b for b in model.blocks if b.name == "embedding.weight")
    assert torch.equal(grads[:, emb.start:emb.start + 8], torch.zeros(2, 8))


# --------------------------------------------------------------------------- #
# IMDB data (sim/learn/data.py, ``imdb``)
# --------------------------------------------------------------------------- #


def _objects(seqs):
    arr = np.empty(len(seqs), dtype=object)
    for i, s in enumerate(seqs):
        arr[i] = list(s)
    return arr


def _write_npz(path, x_train, y_train, x_test, y_test):
    np.savez(path, x_train=_objects(x_train), y_train=np.asarray(y_train),
             x_test=_objects(x_test), y_test=np.asarray(y_test))


def test_imdb_from_keras_npz(tmp_path):
    long = list(range(1, 400))
    _write_npz(tmp_path / "imdb.npz",
               [[4, 1001, 7, 1000, 5000], long, [2]], [1, 0, 1],
               [[1, 2, 3]], [0])
    d = load_dataset("imdb", str(tmp_path))
    assert d.name == "imdb" and d.input_shape == (300,) and d.num_classes == 2
    assert d.x_train.dtype == d.x_test.dtype == torch.int64
    assert d.x_train.shape == (3, 300) and d.x_test.shape == (1, 300)
    assert d.y_train.tolist() == [1, 0, 1] and d.y_test.tolist() == [0]
    row = d.x_train[0]
    assert row[-3:].tolist() == [4, 7, 1000] and not row[:-3].any()   # > 1000 dropped, zeros in front
    assert d.x_train[1].tolist() == long[-300:]                         # the last 300 tokens kept
    assert d.x_test[0, -3:].tolist() == [1, 2, 3]


def test_imdb_npz_with_plain_int_arrays(tmp_path):
    np.savez(tmp_path / "imdb.npz", x_train=np.array([[3, 4], [5, 6]]), y_train=np.array([0, 1]),
             x_test=np.array([[7, 8]]), y_test=np.array([1]))
    d = load_dataset("imdb", str(tmp_path))
    assert d.x_train[:, -2:].tolist() == [[3, 4], [5, 6]]


def _write_raw(folder, reviews):
    for (split, cls), texts in reviews.items():
        (folder / split / cls).mkdir(parents=True, exist_ok=True)
        for i, text in enumerate(texts):
            (folder / split / cls / f"{i}_7.txt").write_text(text, encoding="utf-8")


RAW = {
    ("train", "neg"): ["Bad bad film.<br /><br />Boring", "bad acting"],
    ("train", "pos"): ["A good film, really GOOD!", "good, don't miss"],
    ("test", "neg"): ["bad unseen words"],
    ("test", "pos"): ["good film"],
}


@pytest.mark.parametrize("point_at", ["parent", "archive"])
def test_imdb_from_raw_archive(tmp_path, monkeypatch, point_at):
    _write_raw(tmp_path / "aclImdb", RAW)
    monkeypatch.setattr(data, "IMDB_VOCAB", 3)
    monkeypatch.setattr(data, "IMDB_MAXLEN", 4)
    root = tmp_path if point_at == "parent" else tmp_path / "aclImdb"
    d = load_dataset("imdb", str(root))
    # training counts: bad 3, good 3 (tie: by word), film 2, the rest 1 -> bad 1, good 2, film 3
    assert d.input_shape == (4,) and d.x_train.dtype == torch.int64
    assert d.y_train.tolist() == [0, 0, 1, 1] and d.y_test.tolist() == [0, 1]
    assert d.x_train.tolist() == [[0, 1, 1, 3], [0, 0, 0, 1], [0, 2, 3, 2], [0, 0, 0, 2]]
    assert d.x_test.tolist() == [[0, 0, 0, 1], [0, 0, 2, 3]]
    assert data.imdb_tokens("Don't<br />STOP, 2nd-rate") == ["don't", "stop", "2nd", "rate"]


def test_imdb_missing_files_name_what_is_expected(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("imdb", None)
    assert e.value.field == "data.root" and "imdb.npz" in e.value.message and "aclImdb" in e.value.message
    with pytest.raises(DataError) as e:
        load_dataset("imdb", str(tmp_path))
    assert "imdb.npz" in e.value.message and "aclImdb/{train,test}/{neg,pos}/*.txt" in e.value.message
    _write_raw(tmp_path / "aclImdb", {k: v for k, v in RAW.items() if k[0] == "train"})
    with pytest.raises(DataError) as e:
        load_dataset("imdb", str(tmp_path))
    assert "test/neg/*.txt" in e.value.message and "test/pos/*.txt" in e.value.message


def test_imdb_bad_npz(tmp_path):
    (tmp_path / "imdb.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset("imdb", str(tmp_path))
    np.savez(tmp_path / "imdb.npz", x_train=np.zeros((2, 3)))
    with pytest.raises(DataError, match="y_train"):
        load_dataset("imdb", str(tmp_path))
    _write_npz(tmp_path / "imdb.npz", [[1], [2]], [0], [[1]], [0])
    with pytest.raises(DataError, match="2 train reviews but 1 labels"):
        load_dataset("imdb", str(tmp_path))


def test_imdb_npz_does_not_run_code(tmp_path):
    import io
    import zipfile
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": (1,)})
    buf.write(pickle.dumps(eval))                      # a pickle that names builtins.eval
    with zipfile.ZipFile(tmp_path / "imdb.npz", "w") as z:
        for k in ("x_train", "y_train", "x_test", "y_test"):
            z.writestr(f"{k}.npy", buf.getvalue())
    with pytest.raises(DataError, match="refusing"):
        load_dataset("imdb", str(tmp_path))


def test_imdb_trains_in_the_engine(tmp_path, tiny_dict):
    from sim.study.config import validate
    from sim.engine import build_world, run_algorithm
    g = np.random.default_rng(0)
    seqs = [list(g.integers(1, 1200, size=g.integers(5, 40))) for _ in range(48)]
    _write_npz(tmp_path / "imdb.npz", seqs[:40], [i % 2 for i in range(40)], seqs[40:], [i % 2 for i in range(8)])
    tiny_dict["data"] = {"dataset": "imdb", "root": str(tmp_path), "partition": {"kind": "iid"}}
    tiny_dict["model"] = {"kind": "lstm_imdb", "hidden": 8, "fc_hidden": 4, "embed_dim": 4}
    tiny_dict["workers"], tiny_dict["batch_size"] = 2, 4
    tiny_dict["stop"] = {"target_accuracy": 1.0, "max_rounds": 2}
    tiny_dict["algorithms"] = tiny_dict["algorithms"][:1]
    scn = validate(tiny_dict, "test")
    world = build_world(scn, 0)
    assert world.x_train.dtype == torch.int64 and world.model.input_shape == (300,)
    result = run_algorithm(world, scn.algorithms[0])
    assert result.rows[-1]["round"] == 2 and not result.diverged


def test_batchnorm_model_trains_in_the_engine_and_keeps_running_stats(tmp_path):
    """A tiny ResNet on CIFAR-shaped data through the real engine: per-worker
    batch statistics in training, the server's running statistics in evaluation."""
    import yaml

    from sim.study.config import load_scenario
    from sim.learn.data import Dataset
    from sim.engine import build_world, run_algorithm

    g = torch.Generator().manual_seed(0)
    ds = Dataset("fake", torch.randn(64, 3, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g),
                 torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g), (3, 8, 8), 10)
    scn_dict = {"name": "bn", "workers": 2, "batch_size": 4, "device": "cpu",
                "data": {"dataset": "cifar10", "root": str(tmp_path)},
                "model": {"kind": "resnet18", "width": 4},
                "stop": {"max_rounds": 2, "on_target": False}, "eval_every": 1,
                "algorithms": [{"kind": "sgd", "lr": 0.1}]}
    p = tmp_path / "bn.yaml"
    p.write_text(yaml.safe_dump(scn_dict))
    world = build_world(load_scenario(p), 0, dataset=ds)
    res = run_algorithm(world, world.scenario.algorithms[0])
    assert [r["round"] for r in res.rows] == [0, 1, 2]
    assert all(math.isfinite(r["test_loss"]) for r in res.rows)
    # evaluation changes once running statistics move away from their initial values
    assert res.rows[1]["test_loss"] != res.rows[0]["test_loss"]
