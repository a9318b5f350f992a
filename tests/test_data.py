"""Tests for sim/learn/data.py: data set loaders, partitions and the shard layout."""
from __future__ import annotations

import gzip
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.learn import data
from sim.learn.data import (
    CIFAR,
    DATASETS,
    MNIST_MEAN,
    MNIST_STD,
    PARTITIONS,
    Dataset,
    Shards,
    label_histogram,
    load_dataset,
    make_shards,
    partition,
)
from sim.errors import ConfigError, DataError

# --------------------------------------------------------------------------- #
# Embedded data sets
# --------------------------------------------------------------------------- #

# name -> (input_shape, num_classes, train size, test size)
EMBEDDED = {
    "mnist5k": ((1, 28, 28), 10, 4000, 1000),
    "digits": ((1, 8, 8), 10, 1438, 359),
    "mnist1d": ((1, 40), 10, 4000, 1000),
    "synthetic": ((20,), 4, 4000, 1000),
}


@pytest.fixture(scope="module")
def loaded() -> dict[str, Dataset]:
    return {name: load_dataset(name, seed=0) for name in EMBEDDED}


@pytest.mark.parametrize("name", sorted(EMBEDDED))
def test_embedded_dataset_layout(loaded: dict[str, Dataset], name: str) -> None:
    shape, classes, n_train, n_test = EMBEDDED[name]
    d = loaded[name]
    assert d.name == name and d.input_shape == shape and d.num_classes == classes
    assert d.x_train.shape == (n_train, *shape) and d.x_test.shape == (n_test, *shape)
    assert d.y_train.shape == (n_train,) and d.y_test.shape == (n_test,)
    assert d.x_train.dtype == d.x_test.dtype == torch.float32
    assert d.y_train.dtype == d.y_test.dtype == torch.int64
    for t in (d.x_train, d.y_train, d.x_test, d.y_test):
        assert t.device.type == "cpu"
    assert torch.isfinite(d.x_train).all() and torch.isfinite(d.x_test).all()
    for y in (d.y_train, d.y_test):
        assert int(y.min()) == 0 and int(y.max()) == classes - 1
    # standardised: mnist5k with the full-MNIST constants, the rest with train stats
    assert abs(float(d.x_train.mean())) < 0.05
    assert abs(float(d.x_train.std()) - 1.0) < 0.05
    assert d.num_train == n_train and d.num_test == n_test


@pytest.mark.parametrize("name", sorted(EMBEDDED))
def test_embedded_dataset_is_deterministic(loaded: dict[str, Dataset], name: str) -> None:
    a, b = loaded[name], load_dataset(name, seed=0)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert a.x_train is not b.x_train  # a fresh copy, never the cached array


def _row_keys(x: torch.Tensor) -> set[bytes]:
    flat = x.reshape(len(x), -1).numpy()
    return {row.tobytes() for row in flat}


@pytest.mark.parametrize("name", ["mnist5k", "digits"])
def test_split_is_stratified_disjoint_and_seeded(loaded: dict[str, Dataset], name: str) -> None:
    d = loaded[name]
    train_counts = np.bincount(d.y_train.numpy(), minlength=10)
    test_counts = np.bincount(d.y_test.numpy(), minlength=10)
    totals = train_counts + test_counts
    np.testing.assert_array_equal(test_counts, np.round(0.2 * totals).astype(int))
    if name == "mnist5k":
        np.testing.assert_array_equal(test_counts, 100)
    # labels are not left sorted by class
    assert (np.diff(d.y_train.numpy()) != 0).sum() > 100
    # train and test together are the whole set, without overlap (mnist5k has no
    # duplicate images; digits has a few, so only check the count there)
    train_rows, test_rows = _row_keys(d.x_train), _row_keys(d.x_test)
    if name == "mnist5k":
        assert not train_rows & test_rows and len(train_rows | test_rows) == 5000
    other = load_dataset(name, seed=1)
    assert not torch.equal(other.y_train, d.y_train)


def test_mnist5k_normalisation(loaded: dict[str, Dataset]) -> None:
    pixels = loaded["mnist5k"].x_train * MNIST_STD + MNIST_MEAN
    assert float(pixels.min()) == pytest.approx(0.0, abs=1e-6)
    assert float(pixels.max()) == pytest.approx(1.0, abs=1e-6)


def test_mnist1d_restores_global_rng(loaded: dict[str, Dataset]) -> None:
    np.random.seed(1234)
    random.seed(1234)
    np_before, py_before = np.random.get_state(), random.getstate()
    fresh_arrays = data._generate_mnist1d()     # the generator itself, not the cache
    fresh = data._make_dataset("mnist1d", fresh_arrays["x"], fresh_arrays["y"], fresh_arrays["x_test"],
                               fresh_arrays["y_test"], (1, 40), 10)
    np_after = np.random.get_state()
    assert np_after[0] == np_before[0]
    np.testing.assert_array_equal(np_after[1], np_before[1])
    assert np_after[2:] == np_before[2:]
    assert random.getstate() == py_before
    assert torch.equal(fresh.x_train, loaded["mnist1d"].x_train)


def test_synthetic_is_linearly_hard_but_not_separable(loaded: dict[str, Dataset]) -> None:
    from sklearn.linear_model import LogisticRegression

    d = loaded["synthetic"]
    np.testing.assert_array_equal(np.bincount(d.y_train.numpy()), 1000)
    np.testing.assert_array_equal(np.bincount(d.y_test.numpy()), 250)
    model = LogisticRegression(max_iter=500).fit(d.x_train.numpy(), d.y_train.numpy())
    acc = model.score(d.x_test.numpy(), d.y_test.numpy())
    assert 0.8 < acc < 0.97
    assert not torch.equal(load_dataset("synthetic", seed=1).x_train, d.x_train)


def test_unknown_dataset_lists_allowed_names() -> None:
    with pytest.raises(ConfigError) as e:
        load_dataset("imagenet")
    assert e.value.field == "data.dataset"
    for name in DATASETS.names():
        assert name in e.value.message
    assert set(EMBEDDED) | {"mnist", "cifar10", "cifar100"} <= set(DATASETS.names())


# --------------------------------------------------------------------------- #
# Full MNIST from IDX files
# --------------------------------------------------------------------------- #


def _write_idx(path: Path, arr: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def _fake_mnist(folder: Path, gz: dict[str, bool], n_train: int = 6, n_test: int = 4) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": (rng.integers(0, 256, (n_train, 28, 28)), 2051),
        "train-labels-idx1-ubyte": (rng.integers(0, 10, n_train), 2049),
        "t10k-images-idx3-ubyte": (rng.integers(0, 256, (n_test, 28, 28)), 2051),
        "t10k-labels-idx1-ubyte": (rng.integers(0, 10, n_test), 2049),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, (arr, magic) in arrays.items():
        _write_idx(folder / (name + (".gz" if gz.get(name) else "")), arr, magic)
    return {name: arr for name, (arr, _) in arrays.items()}


def _check_mnist(d: Dataset, arrays: dict) -> None:
    assert d.input_shape == (1, 28, 28) and d.num_classes == 10
    for x, key in ((d.x_train, "train-images-idx3-ubyte"), (d.x_test, "t10k-images-idx3-ubyte")):
        expected = torch.tensor(arrays[key] / 255.0, dtype=torch.float32).unsqueeze(1)
        torch.testing.assert_close(x * MNIST_STD + MNIST_MEAN, expected, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(d.y_train.numpy(), arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(d.y_test.numpy(), arrays["t10k-labels-idx1-ubyte"])


@pytest.mark.parametrize("layout", ["plain", "gz", "mixed"])
def test_mnist_reads_idx_files(tmp_path: Path, layout: str) -> None:
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    gz = {n: layout == "gz" or (layout == "mixed" and i % 2 == 0) for i, n in enumerate(names)}
    arrays = _fake_mnist(tmp_path, gz)
    _check_mnist(load_dataset("mnist", str(tmp_path)), arrays)


def test_mnist_reads_torchvision_layout(tmp_path: Path) -> None:
    arrays = _fake_mnist(tmp_path / "MNIST" / "raw", {"t10k-images-idx3-ubyte": True})
    _check_mnist(load_dataset("mnist", str(tmp_path)), arrays)


def test_mnist_without_root() -> None:
    with pytest.raises(DataError) as e:
        load_dataset("mnist", None)
    assert e.value.field == "data.root"
    assert "train-images-idx3-ubyte" in e.value.message


def test_mnist_missing_files_are_named(tmp_path: Path) -> None:
    arrays = _fake_mnist(tmp_path, {})
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as e:
        load_dataset("mnist", str(tmp_path))
    msg = e.value.message
    assert e.value.field == "data.root"
    assert str(tmp_path) in msg and "MNIST/raw" in msg
    assert "t10k-images-idx3-ubyte" in msg and "train-labels-idx1-ubyte" in msg
    assert "train-images-idx3-ubyte" not in msg and "t10k-labels-idx1-ubyte" not in msg
    assert arrays  # files were written


def test_mnist_bad_magic_names_the_file(tmp_path: Path) -> None:
    _fake_mnist(tmp_path, {})
    bad = tmp_path / "train-labels-idx1-ubyte"
    _write_idx(bad, np.zeros(6), 2051)  # image magic on a 1-D label file
    with pytest.raises(DataError) as e:
        load_dataset("mnist", str(tmp_path))
    assert str(bad) in e.value.message and "magic" in e.value.message


def test_mnist_truncated_file_names_the_file(tmp_path: Path) -> None:
    _fake_mnist(tmp_path, {})
    bad = tmp_path / "t10k-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-10])
    with pytest.raises(DataError) as e:
        load_dataset("mnist", str(tmp_path))
    assert str(bad) in e.value.message


def test_mnist_corrupt_gzip_names_the_file(tmp_path: Path) -> None:
    _fake_mnist(tmp_path, {})
    (tmp_path / "train-images-idx3-ubyte").unlink()
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(DataError) as e:
        load_dataset("mnist", str(tmp_path))
    assert str(bad) in e.value.message


def test_mnist_count_mismatch(tmp_path: Path) -> None:
    _fake_mnist(tmp_path, {})
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5), 2049)
    with pytest.raises(DataError, match="6 images but"):
        load_dataset("mnist", str(tmp_path))


# --------------------------------------------------------------------------- #
# CIFAR-10 / CIFAR-100 from python pickles
# --------------------------------------------------------------------------- #


def _fake_cifar(
    folder: Path, name: str, per_file: int = 3, protocol: int = pickle.DEFAULT_PROTOCOL
) -> tuple[np.ndarray, ...]:
    """Write tiny batches in the standard layout; return (x_train, y_train, x_test, y_test)."""
    spec = CIFAR[name]
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for fname in spec.train_files + (spec.test_file,):
        x = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
        y = rng.integers(0, spec.num_classes, per_file).tolist()
        batch = {b"batch_label": b"fake", b"data": x, spec.label_key: y}
        if name == "cifar100":
            batch[b"coarse_labels"] = [0] * per_file
        with open(folder / fname, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        written[fname] = (x, np.asarray(y))
    xs = [written[f][0] for f in spec.train_files]
    ys = [written[f][1] for f in spec.train_files]
    return (np.concatenate(xs), np.concatenate(ys), *written[spec.test_file])


def _check_cifar(d: Dataset, name: str, expected: tuple[np.ndarray, ...]) -> None:
    spec = CIFAR[name]
    x_train, y_train, x_test, y_test = expected
    assert d.input_shape == (3, 32, 32) and d.num_classes == spec.num_classes
    mean = torch.tensor(spec.mean).reshape(1, 3, 1, 1)
    std = torch.tensor(spec.std).reshape(1, 3, 1, 1)
    for x, raw in ((d.x_train, x_train), (d.x_test, x_test)):
        pixels = torch.tensor(raw.reshape(-1, 3, 32, 32) / 255.0, dtype=torch.float32)
        torch.testing.assert_close(x * std + mean, pixels, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(d.y_train.numpy(), y_train)
    np.testing.assert_array_equal(d.y_test.numpy(), y_test)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("point_at", ["parent", "folder"])
def test_cifar_reads_pickles(tmp_path: Path, name: str, point_at: str) -> None:
    folder = tmp_path / CIFAR[name].folder
    expected = _fake_cifar(folder, name)
    root = tmp_path if point_at == "parent" else folder
    d = load_dataset(name, str(root))
    _check_cifar(d, name, expected)
    n_train = 3 * len(CIFAR[name].train_files)
    assert d.x_train.shape == (n_train, 3, 32, 32) and d.x_test.shape == (3, 3, 32, 32)


@pytest.mark.parametrize("protocol", [0, 2])
def test_cifar_reads_old_pickle_protocols(tmp_path: Path, protocol: int) -> None:
    expected = _fake_cifar(tmp_path / "cifar-10-batches-py", "cifar10", protocol=protocol)
    _check_cifar(load_dataset("cifar10", str(tmp_path)), "cifar10", expected)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_without_root(name: str) -> None:
    with pytest.raises(DataError) as e:
        load_dataset(name, None)
    assert e.value.field == "data.root"
    assert CIFAR[name].folder in e.value.message
    if name == "cifar10":
        assert e.value.message == (
            "dataset 'cifar10' reads from a local folder: set data.root to the folder "
            "holding cifar-10-batches-py/ (data_batch_1..5, test_batch)"
        )


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_missing_files_are_named(tmp_path: Path, name: str) -> None:
    folder = tmp_path / CIFAR[name].folder
    _fake_cifar(folder, name)
    gone = CIFAR[name].test_file
    (folder / gone).unlink()
    with pytest.raises(DataError) as e:
        load_dataset(name, str(tmp_path))
    assert e.value.field == "data.root"
    assert str(folder) in e.value.message and gone in e.value.message
    # an empty folder: every file is named, and both places looked in
    with pytest.raises(DataError) as e:
        load_dataset(name, str(tmp_path / "empty"))
    for fname in CIFAR[name].train_files + (CIFAR[name].test_file,):
        assert fname in e.value.message
    assert CIFAR[name].folder in e.value.message


def test_cifar_malformed_batch_names_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _fake_cifar(folder, "cifar10")
    bad = folder / "data_batch_3"
    with open(bad, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", str(tmp_path))
    assert str(bad) in e.value.message


class _Sneaky:
    pass


def test_cifar_refuses_pickled_objects(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _fake_cifar(folder, "cifar10")
    bad = folder / "test_batch"
    with open(bad, "wb") as f:
        pickle.dump({b"data": _Sneaky(), b"labels": []}, f)
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", str(tmp_path))
    assert str(bad) in e.value.message and "refusing" in e.value.message


# --------------------------------------------------------------------------- #
# Partitions
# --------------------------------------------------------------------------- #

BALANCED = np.random.default_rng(7).permutation(np.repeat(np.arange(10), 100))  # 10 x 100
SKEWED = np.random.default_rng(8).choice(5, size=1003, p=[0.5, 0.2, 0.15, 0.1, 0.05])

KINDS = {
    "iid": {},
    "dirichlet": {"alpha": 0.5},
    "shards": {"classes_per_worker": 2},
}


def _assert_partition(parts: list[np.ndarray], n_samples: int, n: int, dropped: int = 0) -> None:
    assert len(parts) == n
    for p in parts:
        assert p.dtype == np.int64 and p.ndim == 1
        assert np.all(np.diff(p) > 0)  # sorted, no repeats within a worker
    flat = np.concatenate(parts)
    assert len(np.unique(flat)) == len(flat)  # disjoint
    assert flat.min() >= 0 and flat.max() < n_samples
    assert len(flat) == n_samples - dropped  # covering (up to the shards remainder)


# Kinds that need the data set's client ids are tested in tests/test_formats.py.
CLIENT_KINDS = {"natural"}


def test_all_kinds_are_tested() -> None:
    assert set(PARTITIONS.names()) == set(KINDS) | CLIENT_KINDS


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("labels", [BALANCED, SKEWED], ids=["balanced", "skewed"])
@pytest.mark.parametrize("n", [1, 7, 10])
def test_partition_is_disjoint_and_covering(kind: str, labels: np.ndarray, n: int) -> None:
    params = KINDS[kind]
    parts = partition(labels, n, kind, seed=3, **params)
    dropped = len(labels) % (n * params["classes_per_worker"]) if kind == "shards" else 0
    _assert_partition(parts, len(labels), n, dropped)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_partition_is_seeded(kind: str) -> None:
    a = partition(BALANCED, 10, kind, seed=5, **KINDS[kind])
    b = partition(BALANCED, 10, kind, seed=5, **KINDS[kind])
    c = partition(BALANCED, 10, kind, seed=6, **KINDS[kind])
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_partition_accepts_torch_labels() -> None:
    a = partition(torch.from_numpy(BALANCED), 4, "dirichlet", seed=0, alpha=1.0)
    b = partition(BALANCED, 4, "dirichlet", seed=0, alpha=1.0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_iid_sizes_are_near_equal() -> None:
    sizes = [len(p) for p in partition(SKEWED, 7, "iid", seed=0)]
    assert max(sizes) - min(sizes) <= 1


def _mean_max_class_share(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    hist = label_histogram(labels, parts, int(labels.max()) + 1)
    return float((hist.max(axis=1) / hist.sum(axis=1)).mean())


def test_dirichlet_small_alpha_is_more_skewed() -> None:
    skewed = partition(BALANCED, 10, "dirichlet", seed=0, alpha=0.1)
    near_iid = partition(BALANCED, 10, "dirichlet", seed=0, alpha=100.0)
    s, u = _mean_max_class_share(BALANCED, skewed), _mean_max_class_share(BALANCED, near_iid)
    assert s > 0.5 and u < 0.2 and s > u


def test_dirichlet_min_size() -> None:
    parts = partition(BALANCED, 10, "dirichlet", seed=0, alpha=0.3, min_size=30)
    assert min(len(p) for p in parts) >= 30
    _assert_partition(parts, len(BALANCED), 10)


def test_dirichlet_impossible_raises() -> None:
    with pytest.raises(ConfigError) as e:
        partition(np.arange(10) % 2, 20, "dirichlet", seed=0, alpha=1.0)
    assert e.value.field == "data.partition.alpha" and "min_size" in e.value.message
    with pytest.raises(ConfigError) as e:  # possible in principle, but never drawn
        partition(BALANCED, 10, "dirichlet", seed=0, alpha=0.01, min_size=95)
    assert e.value.field == "data.partition.alpha"


@pytest.mark.parametrize("alpha", [0, -1.0, "big", None])
def test_dirichlet_bad_alpha(alpha: object) -> None:
    with pytest.raises(ConfigError) as e:
        partition(BALANCED, 4, "dirichlet", seed=0, alpha=alpha)
    assert e.value.field == "data.partition.alpha"


@pytest.mark.parametrize("n, cpw", [(10, 2), (5, 2), (20, 1), (25, 2), (4, 3)])
def test_shards_give_at_most_cpw_classes(n: int, cpw: int) -> None:
    parts = partition(BALANCED, n, "shards", seed=1, classes_per_worker=cpw)
    hist = label_histogram(BALANCED, parts, 10)
    aligned = 100 % (len(BALANCED) // (n * cpw)) == 0  # shards don't straddle classes
    # otherwise (4 x 3 shards of 83) a shard may span two classes, as documented
    assert ((hist > 0).sum(axis=1) <= (cpw if aligned else 2 * cpw)).all()
    sizes = {len(p) for p in parts}
    assert sizes == {cpw * (len(BALANCED) // (n * cpw))}


def test_shards_drop_only_the_remainder() -> None:
    parts = partition(SKEWED, 7, "shards", seed=0, classes_per_worker=2)
    _assert_partition(parts, len(SKEWED), 7, dropped=1003 % 14)
    kept = np.concatenate(parts)
    dropped = np.setdiff1d(np.arange(len(SKEWED)), kept)
    assert (SKEWED[dropped] == SKEWED.max()).all()  # from the end of the label-sorted order


@pytest.mark.parametrize("cpw", [0, 1.5, True, "2"])
def test_shards_bad_classes_per_worker(cpw: object) -> None:
    with pytest.raises(ConfigError) as e:
        partition(BALANCED, 4, "shards", seed=0, classes_per_worker=cpw)
    assert e.value.field == "data.partition.classes_per_worker"


def test_shards_too_many_shards() -> None:
    with pytest.raises(ConfigError):
        partition(np.arange(10) % 2, 6, "shards", seed=0, classes_per_worker=2)


def test_partition_bad_kind_params_and_n() -> None:
    with pytest.raises(ConfigError) as e:
        partition(BALANCED, 4, "zipf", seed=0)
    assert e.value.field == "data.partition.kind" and "dirichlet" in e.value.message
    with pytest.raises(ConfigError) as e:
        partition(BALANCED, 4, "iid", seed=0, alpha=1.0)
    assert e.value.field == "data.partition.alpha"
    with pytest.raises(ConfigError):
        partition(BALANCED, 0, "iid", seed=0)
    with pytest.raises(ConfigError):
        partition(np.arange(3), 4, "iid", seed=0)


@settings(max_examples=40, deadline=None)
@given(
    n_samples=st.integers(1, 300),
    n_classes=st.integers(1, 12),
    n=st.integers(1, 16),
    seed=st.integers(0, 2**32 - 1),
    alpha=st.floats(0.05, 50.0),
)
def test_partition_properties(n_samples: int, n_classes: int, n: int, seed: int, alpha: float) -> None:
    labels = np.random.default_rng(seed).integers(0, n_classes, n_samples)
    if n <= n_samples:
        _assert_partition(partition(labels, n, "iid", seed=seed), n_samples, n)
    try:
        parts = partition(labels, n, "dirichlet", seed=seed, alpha=alpha)
    except ConfigError as e:  # some draws are legitimately hopeless (tiny alpha, few samples)
        assert e.field == "data.partition.alpha"
    else:
        assert n <= n_samples
        _assert_partition(parts, n_samples, n)
    cpw = 1 + seed % 3
    if n * cpw <= n_samples:
        parts = partition(labels, n, "shards", seed=seed, classes_per_worker=cpw)
        _assert_partition(parts, n_samples, n, dropped=n_samples % (n * cpw))


# --------------------------------------------------------------------------- #
# Shard layout and histograms
# --------------------------------------------------------------------------- #


def test_make_shards_layout() -> None:
    parts = [np.array([3, 5, 9]), np.array([1]), np.array([0, 2])]
    s = make_shards(parts)
    assert isinstance(s, Shards) and s.n == 3
    assert s.index.dtype == torch.int64 and s.size.dtype == torch.int64
    assert s.index.tolist() == [[3, 5, 9], [1, 1, 1], [0, 2, 0]]
    assert s.size.tolist() == [3, 1, 2]
    moved = s.to("cpu")
    assert torch.equal(moved.index, s.index) and torch.equal(moved.size, s.size)


def test_make_shards_from_partition() -> None:
    parts = partition(SKEWED, 6, "dirichlet", seed=2, alpha=0.5)
    s = make_shards(parts)
    assert s.index.shape == (6, max(len(p) for p in parts))
    for i, p in enumerate(parts):
        assert s.index[i, : len(p)].tolist() == p.tolist()
        assert (s.index[i, len(p):] == int(p[0])).all()


def test_make_shards_rejects_empty() -> None:
    with pytest.raises(ValueError):
        make_shards([np.array([1, 2]), np.array([], dtype=np.int64)])
    with pytest.raises(ValueError):
        make_shards([])


def test_label_histogram() -> None:
    labels = np.array([0, 1, 1, 2, 2, 2])
    hist = label_histogram(labels, [np.array([0, 1]), np.array([2, 3, 4, 5])], 4)
    assert hist.dtype == np.int64
    assert hist.tolist() == [[1, 1, 0, 0], [0, 1, 3, 0]]
