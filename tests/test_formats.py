"""The field's data formats (sim/learn/formats.py) and the natural partition.

Every format is read from a small file that the test writes: Hugging Face
``save_to_disk`` folders (written with ``datasets`` when it is installed, else
with pyarrow in the same layout), parquet files, LEAF's JSON (FEMNIST,
Shakespeare).  The optional cross-check against Flower Datasets' partitioners
runs only where ``flwr-datasets`` is installed (docs/scenarios.md, "Data sets
from files", says what it checks and why the partitions cannot match for a
shared seed).
"""
from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sim.errors import ConfigError, DataError
from sim.learn import formats
from sim.learn.data import (
    DATASETS, MNIST_MEAN, MNIST_STD, label_histogram, load_dataset, partition, partition_dirichlet,
    partition_shards,
)
from tests.test_cli import cli

HAVE_DATASETS = importlib.util.find_spec("datasets") is not None
HAVE_PYARROW = importlib.util.find_spec("pyarrow") is not None
HAVE_FLWR_DATASETS = importlib.util.find_spec("flwr_datasets") is not None
needs_pyarrow = pytest.mark.skipif(not HAVE_PYARROW, reason="pyarrow is not installed (pip install 'commsim[hf]')")
needs_datasets = pytest.mark.skipif(not HAVE_DATASETS, reason="datasets is not installed (pip install 'commsim[hf]')")
needs_flwr = pytest.mark.skipif(not HAVE_FLWR_DATASETS,
                                reason="flwr-datasets is not installed (optional cross-check, pip install flwr-datasets)")


# --------------------------------------------------------------------------- #
# Small data sets written by the tests
# --------------------------------------------------------------------------- #

def _png(a: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _pixels(n: int, seed: int, shape=(6, 5)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


TRAIN_N, TEST_N = 24, 9
TRAIN_X, TEST_X = _pixels(TRAIN_N, 1), _pixels(TEST_N, 2)
TRAIN_Y, TEST_Y = np.arange(TRAIN_N) % 3, (np.arange(TEST_N) + 1) % 3
# clients in order of first appearance: c, a, b, d (6 samples each)
TRAIN_CLIENTS = ["c"] * 6 + ["a"] * 6 + ["b"] * 6 + ["d"] * 6
NAMES = ["cat", "dog", "emu"]


def _arrow_tables():
    import pyarrow as pa
    img = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

    def table(x, y, clients):
        cols = {"img": pa.array([{"bytes": _png(a), "path": None} for a in x], type=img),
                "label": pa.array(y, type=pa.int64())}
        if clients is not None:
            cols["cid"] = pa.array(clients, type=pa.string())
        return pa.table(cols)
    return table(TRAIN_X, TRAIN_Y, TRAIN_CLIENTS), table(TEST_X, TEST_Y, None)


FEATURES = {"img": {"_type": "Image"}, "label": {"names": NAMES, "_type": "ClassLabel"},
            "cid": {"dtype": "string", "_type": "Value"}}


def _write_hf_folder_with_pyarrow(folder: Path, table) -> None:
    """The layout Dataset.save_to_disk writes: an Arrow IPC stream, state.json, dataset_info.json."""
    import pyarrow as pa
    folder.mkdir(parents=True)
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    feats = {k: v for k, v in FEATURES.items() if k in table.column_names}
    (folder / "dataset_info.json").write_text(json.dumps({"features": feats}))


def write_hf_dict(root: Path) -> Path:
    """A DatasetDict (train, test) saved to disk: with datasets if installed, else pyarrow."""
    train, test = _arrow_tables()
    if HAVE_DATASETS:
        import datasets
        feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=NAMES),
                                   "cid": datasets.Value("string")})
        tr = datasets.Dataset.from_dict({"img": [{"bytes": _png(a), "path": None} for a in TRAIN_X],
                                         "label": TRAIN_Y.tolist(), "cid": TRAIN_CLIENTS}, features=feats)
        te = datasets.Dataset.from_dict({"img": [{"bytes": _png(a), "path": None} for a in TEST_X],
                                         "label": TEST_Y.tolist(), "cid": ["z"] * TEST_N}, features=feats)
        datasets.utils.disable_progress_bars()
        datasets.DatasetDict({"train": tr, "test": te}).save_to_disk(str(root))
        datasets.utils.enable_progress_bars()
    else:
        _write_hf_folder_with_pyarrow(root / "train", train)
        _write_hf_folder_with_pyarrow(root / "test", test)
        (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    return root


def expected_images(x: np.ndarray, train: np.ndarray) -> torch.Tensor:
    """The documented normalisation: /255, then the training pixels' mean and std."""
    t = train.astype(np.float32) / np.float32(255)
    mean = np.float32(t.mean(dtype=np.float64))
    std = np.float32(t.std(dtype=np.float64))
    return torch.from_numpy(((x.astype(np.float32) / np.float32(255) - mean) / std)[:, None])


# --------------------------------------------------------------------------- #
# Hugging Face save_to_disk
# --------------------------------------------------------------------------- #

@needs_pyarrow
def test_hf_disk_reads_images_labels_and_clients(tmp_path: Path) -> None:
    root = write_hf_dict(tmp_path / "hf")
    d = load_dataset("hf_disk", str(root), image_column="img", client_column="cid")
    assert d.input_shape == (1, 6, 5) and d.num_classes == 3
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert torch.allclose(d.x_train, expected_images(TRAIN_X, TRAIN_X), atol=1e-6)
    assert torch.allclose(d.x_test, expected_images(TEST_X, TRAIN_X), atol=1e-6)
    assert d.y_train.tolist() == TRAIN_Y.tolist() and d.y_test.tolist() == TEST_Y.tolist()
    assert d.clients == ("c", "a", "b", "d")
    assert d.client_ids.tolist() == [0] * 6 + [1] * 6 + [2] * 6 + [3] * 6
    mean = d.x_train.mean().item()
    assert abs(mean) < 1e-5 and abs(d.x_train.std(unbiased=False).item() - 1) < 1e-5


@needs_datasets
def test_hf_disk_pyarrow_path_reads_what_datasets_reads(tmp_path: Path, monkeypatch) -> None:
    root = write_hf_dict(tmp_path / "hf")
    a = load_dataset("hf_disk", str(root), image_column="img", client_column="cid")
    monkeypatch.setattr(formats, "_available", lambda pkg: pkg != "datasets")
    b = load_dataset("hf_disk", str(root), image_column="img", client_column="cid")
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert np.array_equal(a.client_ids, b.client_ids) and a.clients == b.clients
    assert (a.input_shape, a.num_classes) == (b.input_shape, b.num_classes)


@needs_datasets
def test_hf_disk_single_dataset_holds_out_a_stratified_test_set(tmp_path: Path) -> None:
    import datasets
    x = np.random.default_rng(3).normal(size=(40, 4)).astype(np.float32)
    y = np.arange(40) % 4
    datasets.utils.disable_progress_bars()
    datasets.Dataset.from_dict({"feat": x.tolist(), "y": y.tolist()}).save_to_disk(str(tmp_path / "one"))
    d = load_dataset("hf_disk", str(tmp_path / "one"), image_column="feat", label_column="y", test_fraction=0.3)
    assert d.num_train == 28 and d.num_test == 12 and d.input_shape == (4,) and d.num_classes == 4
    assert np.bincount(d.y_test.numpy()).tolist() == [3, 3, 3, 3]      # round(0.3 * 10) of every class
    # per-feature standardisation with the training statistics
    assert torch.allclose(d.x_train.mean(0), torch.zeros(4), atol=1e-5)
    assert torch.allclose(d.x_train.std(0, unbiased=False), torch.ones(4), atol=1e-5)
    # default 0.2; split/test_split do not apply to data without splits
    assert load_dataset("hf_disk", str(tmp_path / "one"), image_column="feat", label_column="y").num_test == 8
    with pytest.raises(ConfigError) as e:
        load_dataset("hf_disk", str(tmp_path / "one"), image_column="feat", label_column="y", split="train")
    assert e.value.field == "data.split" and "no splits" in e.value.message


@needs_pyarrow
def test_numeric_arrays_layout_and_shape_option(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    hwc = np.random.default_rng(4).integers(0, 256, (10, 5, 6, 3), dtype=np.uint8)
    pq.write_table(pa.table({"image": pa.array(hwc.tolist(), type=pa.list_(pa.list_(pa.list_(pa.uint8())))),
                             "label": np.arange(10) % 2}), str(tmp_path / "hwc.parquet"))
    d = load_dataset("parquet", str(tmp_path / "hwc.parquet"), test_fraction=0.2)
    assert d.input_shape == (3, 5, 6)                # [H, W, C] -> [C, H, W]
    flat = np.random.default_rng(5).normal(size=(10, 12))
    pq.write_table(pa.table({"image": pa.array(flat.tolist()), "label": np.arange(10) % 2}),
                   str(tmp_path / "flat.parquet"))
    d = load_dataset("parquet", str(tmp_path / "flat.parquet"), shape=[1, 3, 4])
    assert d.input_shape == (1, 3, 4)
    with pytest.raises(ConfigError) as e:
        load_dataset("parquet", str(tmp_path / "flat.parquet"), shape=[5, 5])
    assert e.value.field == "data.shape" and "12 values" in e.value.message


# --------------------------------------------------------------------------- #
# Parquet
# --------------------------------------------------------------------------- #

@needs_pyarrow
@pytest.mark.parametrize("layout", ["split-files", "split-folders", "hub-data-folder"])
def test_parquet_folder_with_splits(tmp_path: Path, layout: str) -> None:
    import pyarrow.parquet as pq
    train, test = _arrow_tables()
    root = tmp_path / "pq"
    where = {"split-files": (root / "train-00000-of-00001.parquet", root / "test-00000-of-00001.parquet"),
             "split-folders": (root / "train" / "0000.parquet", root / "test" / "0000.parquet"),
             "hub-data-folder": (root / "data" / "train.parquet", root / "data" / "test.parquet")}[layout]
    for path, table in zip(where, (train, test)):
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, str(path))
    d = load_dataset("parquet", str(root), image_column="img", client_column="cid")
    assert torch.allclose(d.x_train, expected_images(TRAIN_X, TRAIN_X), atol=1e-6)
    assert d.y_test.tolist() == TEST_Y.tolist() and d.num_classes == 3
    assert d.clients == ("c", "a", "b", "d")


@needs_pyarrow
def test_parquet_string_labels_are_sorted_classes(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    (tmp_path / "p").mkdir()
    pq.write_table(pa.table({"v": [[1.0, 2.0]] * 4, "label": ["b", "c", "b", "a"]}), str(tmp_path / "p" / "train.parquet"))
    pq.write_table(pa.table({"v": [[1.0, 0.0]] * 2, "label": ["c", "d"]}), str(tmp_path / "p" / "test.parquet"))
    d = load_dataset("parquet", str(tmp_path / "p"), image_column="v")
    assert d.y_train.tolist() == [1, 2, 1, 0] and d.y_test.tolist() == [2, 3] and d.num_classes == 4


@needs_pyarrow
@pytest.mark.parametrize("options, field, text", [
    ({"image_column": "pixels"}, "data.image_column", "no column 'pixels'; its columns: img, label, cid"),
    ({"image_column": "img", "split": "dev"}, "data.split", "no split 'dev'; its splits: train, test"),
    ({"image_column": "img", "test_split": "valid"}, "data.test_split", "no split 'valid'"),
    ({"image_column": "img", "test_split": "train"}, "data.test_split", "is the training split"),
    ({"image_column": "label"}, "data.image_column", None),       # shape mismatch is fine: labels are (N,) numbers
    ({"image_column": "cid"}, "data.image_column", "holds string values"),
])
def test_table_faults_name_the_field(tmp_path: Path, options: dict, field: str, text: str | None) -> None:
    root = write_hf_dict(tmp_path / "hf")
    if text is None:      # a scalar numeric column is one feature per sample
        assert load_dataset("hf_disk", str(root), **options).input_shape == (1,)
        return
    with pytest.raises(ConfigError) as e:
        load_dataset("hf_disk", str(root), **options)
    assert e.value.field == field and text in e.value.message
    assert not isinstance(e.value, DataError)      # the data are there: validate fails on it (not a note)


@needs_pyarrow
def test_string_client_column_as_labels_and_a_folder_that_is_no_dataset(tmp_path: Path) -> None:
    root = write_hf_dict(tmp_path / "hf")
    d = load_dataset("hf_disk", str(root), image_column="img", label_column="cid")
    if HAVE_DATASETS:     # the test split's clients are "z"
        assert d.num_classes == 5 and d.y_test.tolist() == [4] * TEST_N
    with pytest.raises(DataError) as e:
        load_dataset("hf_disk", str(tmp_path))
    assert "not a folder written by save_to_disk" in e.value.message and e.value.field == "data.root"


def test_missing_packages_name_the_extra(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(formats, "_available", lambda pkg: False)
    with pytest.raises(ConfigError) as e:
        load_dataset("hf_disk", str(tmp_path))
    assert e.value.field == "data.dataset" and "'datasets'" in e.value.message
    assert "pip install 'commsim[hf]'" in e.value.message and not isinstance(e.value, DataError)
    with pytest.raises(ConfigError) as e:
        load_dataset("parquet", str(tmp_path))
    assert "'pyarrow'" in e.value.message and "commsim[hf]" in e.value.message


def test_missing_package_is_exit_2_and_writes_nothing(tmp_path: Path, monkeypatch, tiny_dict, write_scenario) -> None:
    monkeypatch.setattr(formats, "_available", lambda pkg: False)
    tiny_dict["data"] = {"dataset": "hf_disk", "root": str(tmp_path), "image_column": "img"}
    out = tmp_path / "out"
    rc, _, err = cli("run", write_scenario(tiny_dict), "--out", out, "--quiet")
    assert rc == 2 and "commsim[hf]" in err and "Traceback" not in err
    assert not out.exists()


# --------------------------------------------------------------------------- #
# LEAF
# --------------------------------------------------------------------------- #

def _leaf_file(path: Path, users: dict[str, tuple[list, list]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"users": list(users), "num_samples": [len(x) for x, _ in users.values()],
                                "user_data": {u: {"x": x, "y": y} for u, (x, y) in users.items()}}))


def write_femnist(root: Path, sizes=(5, 3, 4, 6, 2)) -> dict:
    rng = np.random.default_rng(9)
    users = {f"f{i:04d}_{k}": ([rng.random(784).round(3).tolist() for _ in range(n)],
                               [int(c) for c in rng.integers(0, 62, n)]) for k, (i, n) in
             enumerate(zip([7, 3, 9, 1, 5], sizes))}
    names = list(users)
    _leaf_file(root / "train" / "all_data_0_niid_0_keep_0_train_9.json", {u: users[u] for u in names[:3]})
    _leaf_file(root / "train" / "all_data_1_niid_0_keep_0_train_9.json", {u: users[u] for u in names[3:]})
    _leaf_file(root / "test" / "all_data_0_niid_0_keep_0_test_9.json",
               {u: ([rng.random(784).tolist()], [1]) for u in names})
    return users


def test_femnist_reads_leaf_json_with_users_in_file_order(tmp_path: Path) -> None:
    users = write_femnist(tmp_path / "femnist")
    d = load_dataset("femnist", str(tmp_path / "femnist"))
    assert d.input_shape == (1, 28, 28) and d.num_classes == 62 and d.num_train == 20 and d.num_test == 5
    assert d.clients == tuple(users)                     # file order, then each file's user order
    assert d.client_ids.tolist() == [0] * 5 + [1] * 3 + [2] * 4 + [3] * 6 + [4] * 2
    assert d.y_train.tolist() == [y for _, ys in users.values() for y in ys]
    raw = np.asarray([x for xs, _ in users.values() for x in xs], dtype=np.float32)
    mean, std = raw.mean(dtype=np.float64), raw.std(dtype=np.float64)
    want = (raw - np.float32(mean)) / np.float32(std)
    assert torch.allclose(d.x_train.reshape(20, -1), torch.from_numpy(want), atol=1e-5)
    # LEAF's data/<name>/data layout is found too
    (tmp_path / "nested").mkdir()
    (tmp_path / "femnist").rename(tmp_path / "nested" / "data")
    assert load_dataset("femnist", str(tmp_path / "nested")).num_train == 20


def test_shakespeare_maps_characters_to_leaf_vocabulary(tmp_path: Path) -> None:
    letters = formats.LEAF_LETTERS
    assert len(letters) == 80 and letters[0] == "\n" and letters[-1] == "}"
    miranda, hamlet = "If by your art, my dearest father", "To be, or not to be: that is the question"
    lines = {"THE_TEMPEST_MIRANDA": ([miranda[:22], miranda[1:23]], [miranda[22], miranda[23]]),
             "HAMLET_HAMLET": ([hamlet[:22], hamlet[2:24]], [hamlet[22], hamlet[24]])}
    _leaf_file(tmp_path / "sh" / "train" / "train.json", lines)
    _leaf_file(tmp_path / "sh" / "test" / "test.json", {"HAMLET_HAMLET": (["Whether 'tis nobler in"], [" "])})
    d = load_dataset("shakespeare", str(tmp_path / "sh"))
    assert d.input_shape == (22,) and d.num_classes == 80 and d.vocab == 80
    assert d.x_train.dtype == torch.int64
    assert d.x_train[0].tolist() == [letters.index(c) + 1 for c in miranda[:22]]
    assert d.y_train.tolist() == [letters.index(c) for c in "reht"] and d.y_test.tolist() == [1]
    assert d.clients == ("THE_TEMPEST_MIRANDA", "HAMLET_HAMLET") and d.client_ids.tolist() == [0, 0, 1, 1]
    _leaf_file(tmp_path / "bad" / "train" / "a.json", {"ROMEO": (["caf\u00e9 au lait, mon ami"], ["x"])})
    _leaf_file(tmp_path / "bad" / "test" / "a.json", {"ROMEO": (["abc"], ["x"])})
    with pytest.raises(DataError) as e:
        load_dataset("shakespeare", str(tmp_path / "bad"))
    assert "a.json" in e.value.message and "'ROMEO'" in e.value.message and "\u00e9" in e.value.message


@pytest.mark.parametrize("mutate, text", [
    (lambda o: o.pop("users"), "is not a LEAF file"),
    (lambda o: o["num_samples"].__setitem__(0, 99), "num_samples says 99"),
    (lambda o: o["user_data"]["u1"]["y"].pop(), "of one length"),
])
def test_leaf_faults_name_the_file_and_user(tmp_path: Path, mutate, text: str) -> None:
    obj = {"users": ["u1"], "num_samples": [2], "user_data": {"u1": {"x": [[0.0] * 784] * 2, "y": [1, 2]}}}
    mutate(obj)
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    (tmp_path / "train" / "t.json").write_text(json.dumps(obj))
    (tmp_path / "test" / "t.json").write_text(json.dumps(obj))
    with pytest.raises(DataError) as e:
        load_dataset("femnist", str(tmp_path))
    assert "t.json" in e.value.message and text in e.value.message and e.value.field == "data.root"
    with pytest.raises(DataError) as e:
        load_dataset("femnist", str(tmp_path / "nowhere"))
    assert "train/*.json" in e.value.message


# --------------------------------------------------------------------------- #
# The natural partition
# --------------------------------------------------------------------------- #

def test_natural_gives_whole_clients_in_contiguous_groups() -> None:
    ids = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4, 1])          # 5 clients (client 1 not contiguous in the file)
    labels = np.zeros(len(ids), dtype=np.int64)
    parts = partition(labels, 5, "natural", seed=0, client_ids=ids)
    assert [p.tolist() for p in parts] == [[0, 1], [2, 9], [3, 4, 5], [6], [7, 8]]
    parts = partition(labels, 2, "natural", seed=0, client_ids=ids)      # 5 clients -> groups of 3 and 2
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3, 4, 5, 9], [6, 7, 8]]
    parts3 = partition(labels, 3, "natural", seed=7, client_ids=ids)     # 2, 2, 1 clients; the seed is unused
    assert [p.tolist() for p in parts3] == [[0, 1, 2, 9], [3, 4, 5, 6], [7, 8]]
    assert [p.tolist() for p in partition(labels, 3, "natural", seed=1, client_ids=ids)] == \
        [p.tolist() for p in parts3]


def test_natural_refuses_data_without_clients_and_too_many_workers() -> None:
    with pytest.raises(ConfigError) as e:
        partition(np.zeros(10), 2, "natural", seed=0)
    assert e.value.field == "data.partition.kind" and "client ids" in e.value.message
    assert "dirichlet" in e.value.message
    with pytest.raises(ConfigError) as e:
        partition(np.zeros(4), 3, "natural", seed=0, client_ids=np.array([0, 0, 1, 1]))
    assert e.value.field == "workers" and "2 clients" in e.value.message and "1 .. 2" in e.value.message


def _femnist_scenario(root: Path, workers: int, **data) -> dict:
    return {"name": "femnist", "workers": workers, "batch_size": 2, "device": "cpu",
            "data": {"dataset": "femnist", "root": str(root), "partition": {"kind": "natural"}, **data},
            "model": {"kind": "mlp", "hidden": [16]}, "stop": {"max_rounds": 4, "target_accuracy": 0.99},
            "eval_every": 2, "algorithms": [{"name": "sgd", "kind": "sgd", "lr": 0.1}]}


def test_femnist_natural_runs_end_to_end(tmp_path: Path, write_scenario) -> None:
    write_femnist(tmp_path / "femnist")
    out = tmp_path / "out"
    rc, _, err = cli("run", write_scenario(_femnist_scenario(tmp_path / "femnist", 5)), "--out", out, "--quiet")
    assert rc == 0, err
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("algorithm,seed,round") and len(rows) == 1 + 3      # rounds 0, 2, 4
    dumped = yaml.safe_load((out / "scenario.yaml").read_text())
    assert dumped["data"]["partition"] == {"kind": "natural"} and "image_column" not in dumped["data"]


def test_natural_faults_are_exit_2_with_one_message(tmp_path: Path, write_scenario, tiny_dict) -> None:
    write_femnist(tmp_path / "femnist")
    rc, _, err = cli("validate", write_scenario(_femnist_scenario(tmp_path / "femnist", 6)))
    assert rc == 2 and "workers: partition 'natural': 6 workers but the data set has 5 clients" in err
    tiny_dict["data"]["partition"] = {"kind": "natural"}
    rc, _, err = cli("run", write_scenario(tiny_dict), "--out", tmp_path / "o", "--quiet")
    assert rc == 2 and "data.partition.kind: partition 'natural' needs a data set with client ids" in err
    assert not (tmp_path / "o").exists() and "Traceback" not in err


@pytest.mark.parametrize("data, field, text", [
    ({"dataset": "digits", "image_column": "img"}, "data.image_column", "dataset 'digits' takes no image_column"),
    ({"dataset": "hf_disk", "root": "x", "partition": {"kind": "natural"}}, "data.partition.kind",
     "natural needs data.client_column"),
    ({"dataset": "parquet", "root": "x", "test_split": "t", "test_fraction": 0.1}, "data.test_fraction",
     "not both"),
    ({"dataset": "parquet", "root": "x", "test_fraction": 1.5}, "data.test_fraction", "less than 1"),
    ({"dataset": "parquet", "root": "x", "columns": "x"}, "data.columns", "unknown key"),
    ({"dataset": "femnist", "root": "x", "split": "train"}, "data.split", "takes no split"),
])
def test_data_fields_are_validated(data, field, text, tiny_dict, write_scenario) -> None:
    tiny_dict["data"] = data
    rc, _, err = cli("validate", write_scenario(tiny_dict))
    assert rc == 2 and f"{field}: " in err and text in err, err


def test_shakespeare_with_the_lstm(tmp_path: Path, write_scenario) -> None:
    rng = np.random.default_rng(0)
    letters = formats.LEAF_LETTERS[1:60]
    roles = {f"ROLE_{k}": (["".join(rng.choice(list(letters), 80)) for _ in range(4)],
                           [str(rng.choice(list(letters))) for _ in range(4)]) for k in range(3)}
    _leaf_file(tmp_path / "sh" / "train" / "a.json", roles)
    _leaf_file(tmp_path / "sh" / "test" / "a.json", {"ROLE_0": roles["ROLE_0"]})
    scn = {"name": "sh", "workers": 3, "batch_size": 2, "device": "cpu",
           "data": {"dataset": "shakespeare", "root": str(tmp_path / "sh"), "partition": {"kind": "natural"}},
           "model": {"kind": "lstm_imdb", "vocab": 80, "embed_dim": 8, "hidden": 16, "fc_hidden": 16},
           "stop": {"max_rounds": 2}, "eval_every": 1, "algorithms": [{"name": "sgd", "kind": "sgd", "lr": 0.5}]}
    rc, _, err = cli("run", write_scenario(scn), "--out", tmp_path / "out", "--quiet")
    assert rc == 0, err
    scn["model"]["vocab"] = 60
    rc, _, err = cli("validate", write_scenario(scn))
    assert rc == 2 and "model.vocab: shakespeare has token ids 1..80; allowed: vocab >= 80" in err
    scn["model"] = {"kind": "mlp", "hidden": [8]}
    rc, _, err = cli("validate", write_scenario(scn))
    assert rc == 2 and "model.kind: mlp reads numbers (float32) but shakespeare's inputs are token ids" in err


def test_the_format_loaders_are_registered() -> None:
    assert {"hf_disk", "parquet", "femnist", "shakespeare"} <= set(DATASETS.names())
    assert MNIST_MEAN and MNIST_STD       # the constants the normalisation rule generalises


# --------------------------------------------------------------------------- #
# Optional cross-check: Flower Datasets' partitioners (docs/scenarios.md)
# --------------------------------------------------------------------------- #

class _Streams:
    """A numpy Generator stand-in for commsim's partitioners that takes the
    draws Flower's partitioner also makes from ``default_rng(seed)`` and the
    draws only commsim makes (its within-class shuffles, its tie-breaking
    permutation) from a second generator.  ``main_calls``: which
    ``permutation`` calls (0-based) are Flower's."""

    def __init__(self, seed: int, main_permutations: tuple[int, ...] = ()) -> None:
        self.main = np.random.default_rng(seed)
        self.side = np.random.default_rng(2 ** 31 - 1)
        self.main_permutations, self.calls = main_permutations, 0

    def dirichlet(self, alpha):
        return self.main.dirichlet(alpha)

    def permutation(self, x):
        rng = self.main if self.calls in self.main_permutations else self.side
        self.calls += 1
        return rng.permutation(x)


def _flower_histograms(partitioner, labels: np.ndarray, k: int) -> np.ndarray:
    import datasets
    partitioner.dataset = datasets.Dataset.from_dict({"label": labels.tolist()})
    parts = [np.asarray(partitioner.load_partition(i)["label"]) for i in range(partitioner.num_partitions)]
    return np.stack([np.bincount(p, minlength=k) for p in parts])


LABELS = np.random.default_rng(11).choice(6, size=600, p=[0.3, 0.25, 0.2, 0.1, 0.1, 0.05])


@needs_flwr
@pytest.mark.parametrize("seed, alpha, n", [(0, 0.5, 8), (42, 0.3, 5), (7, 5.0, 12)])
def test_dirichlet_is_flowers_algorithm_drawn_in_another_order(seed: int, alpha: float, n: int) -> None:
    from flwr_datasets.partitioner import DirichletPartitioner
    flower = _flower_histograms(DirichletPartitioner(num_partitions=n, partition_by="label", alpha=alpha,
                                                     min_partition_size=10, self_balancing=False, shuffle=False,
                                                     seed=seed), LABELS, 6)
    same_draws = partition_dirichlet(LABELS, n, _Streams(seed), alpha=alpha, min_size=10)
    assert np.array_equal(label_histogram(LABELS, same_draws, 6), flower)
    # With the shared seed alone they differ: commsim shuffles each class (a draw) before its Dirichlet draw.
    plain = partition(LABELS, n, "dirichlet", seed=seed, alpha=alpha, min_size=10)
    assert not np.array_equal(label_histogram(LABELS, plain, 6), flower)


@needs_flwr
@pytest.mark.parametrize("seed, n, cpw", [(0, 10, 2), (3, 6, 5), (42, 4, 3)])
def test_shards_are_flowers_shard_partitioner_drawn_in_another_order(seed: int, n: int, cpw: int) -> None:
    import inspect

    from flwr_datasets.partitioner import ShardPartitioner
    per = "num_shards_per_partition" if "num_shards_per_partition" in \
        inspect.signature(ShardPartitioner).parameters else "num_shards_per_node"     # renamed in 0.3
    flower = _flower_histograms(ShardPartitioner(num_partitions=n, partition_by="label", **{per: cpw},
                                                 shuffle=False, seed=seed), LABELS, 6)
    assert len(LABELS) % (n * cpw) == 0     # else Flower keeps a random subset of floor(N / size) shards
    same_draws = partition_shards(LABELS, n, _Streams(seed, main_permutations=(1,)), classes_per_worker=cpw)
    assert np.array_equal(label_histogram(LABELS, same_draws, 6), flower)
    plain = partition(LABELS, n, "shards", seed=seed, classes_per_worker=cpw)
    assert not np.array_equal(label_histogram(LABELS, plain, 6), flower)


@needs_flwr
def test_pathological_partitioner_is_another_algorithm() -> None:
    """Flower's PathologicalPartitioner picks each partition's classes first and
    splits every class evenly among the partitions that picked it; commsim's
    shards (McMahan et al.) deals label-sorted shards.  They agree only when
    every worker's shard is one whole class: then the histograms are the same
    up to the order of the workers."""
    from flwr_datasets.partitioner import PathologicalPartitioner
    labels = np.repeat(np.arange(6), 50)
    flower = _flower_histograms(PathologicalPartitioner(num_partitions=6, partition_by="label",
                                                        num_classes_per_partition=1,
                                                        class_assignment_mode="deterministic", shuffle=False,
                                                        seed=0), labels, 6)
    ours = label_histogram(labels, partition(labels, 6, "shards", seed=0, classes_per_worker=1), 6)
    assert sorted(map(tuple, ours)) == sorted(map(tuple, flower))
    flower2 = _flower_histograms(PathologicalPartitioner(num_partitions=6, partition_by="label",
                                                         num_classes_per_partition=2, seed=0), LABELS, 6)
    ours2 = label_histogram(LABELS, partition(LABELS, 6, "shards", seed=0, classes_per_worker=2), 6)
    assert set((flower2 > 0).sum(1)) == {2}                     # exactly two classes each, sizes vary
    assert len(set(ours2.sum(1))) == 1                          # equal sizes, classes vary
