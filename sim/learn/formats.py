"""Data sets in the file formats the field uses, read offline from ``data.root``.

* ``hf_disk`` -- a Hugging Face ``datasets`` folder written by
  ``Dataset.save_to_disk`` (arrow files, ``state.json``, ``dataset_info.json``)
  or ``DatasetDict.save_to_disk`` (``dataset_dict.json`` and one such folder
  per split).  Read with ``datasets.load_from_disk`` when ``datasets`` is
  installed, else with ``pyarrow`` directly (the arrow files are Arrow IPC
  streams; the features come from ``dataset_info.json``); the two give the
  same arrays.
* ``parquet`` -- one ``.parquet`` file, or a folder of them (``pyarrow``):
  split files ``<split>.parquet``, ``<split>-*.parquet`` or ``<split>/*.parquet``
  (also under ``data/``, the Hub's layout); a folder with none of those is one
  data set without splits.
* ``femnist``, ``shakespeare`` -- LEAF's JSON (Caldas et al. 2018,
  github.com/TalwalkarLab/leaf): ``train/*.json`` and ``test/*.json``, each
  ``{"users": [...], "num_samples": [...], "user_data": {user: {"x": [...],
  "y": [...]}}}``, with the users as client ids (the ``natural`` partition).

The columns of ``hf_disk`` and ``parquet`` are named in the scenario
(``data.image_column``, ``label_column``, ``client_column``; ``split``,
``test_split``, ``test_fraction``, ``shape``: sim/study/config.py DataSpec).
How values become tensors, the same for both:

* inputs: an HF ``Image`` feature (struct of ``bytes``/``path``) or a binary
  column of encoded images is decoded with Pillow to ``[C, H, W]`` (C = 1 when
  every image is grayscale, else 3, RGB), uint8 pixels; numeric (nested)
  lists and HF ``ArrayND`` columns are read as arrays (a 2-D sample is
  ``[1, H, W]``; a 3-D one whose last axis is 1, 3 or 4 and first is not is
  taken as ``[H, W, C]`` and transposed; ``shape`` instead reshapes each
  sample, row-major).  uint8 values are pixels and are scaled to [0, 1]; then
  every input is standardised with the *training* split's mean and std per
  channel (axis 0 of a sample of 2 or more axes) or per feature (a 1-D
  sample), a zero std taken as 1 -- the mnist and cifar constants are exactly
  such training-set statistics, so a saved MNIST reads as ``mnist`` does up
  to float rounding.
* labels: an HF ``ClassLabel`` (K = its number of names), integers 0..K-1
  (K = the largest label of both splits + 1) or strings (classes in sorted
  order); a negative label (HF's -1, "no label") is refused.
* client ids: any scalar column; clients are numbered in order of first
  appearance in the training split.

No function here touches a global RNG; ``seed`` only draws a held-out test
set (``test_fraction``).  Faults exit 2 with one message, nothing written: a
file that is missing or malformed is a DataError (field ``data.root``; what
``validate`` reports as a note, the data not being on this machine); a column,
split or shape that does not fit the data is a ConfigError naming that
``data.*`` field, as is a missing package (naming the extra to install).
"""
from __future__ import annotations

import importlib
import importlib.util
import io
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from sim.errors import ConfigError, DataError
from sim.learn.data import DATASETS, Dataset, _missing_files_error, _require_root, _stratified_split

HF_EXTRA = "pip install 'commsim[hf]'"
DEFAULT_TEST_FRACTION = 0.2   # held out when the data have no test split (as mnist5k and digits)


# --------------------------------------------------------------------------- #
# Optional packages
# --------------------------------------------------------------------------- #

def _available(package: str) -> bool:
    """Whether ``package`` can be imported (tests replace this to hide one)."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def _missing(dataset: str, packages: str, pip_name: str) -> ConfigError:
    return ConfigError(
        f"dataset {dataset!r} needs the Python package {packages}, which is not installed here; "
        f"install the extra: {HF_EXTRA} (or pip install {pip_name})",
        field="data.dataset",
    )


def _pyarrow(dataset: str):
    if not _available("pyarrow"):
        raise _missing(dataset, "'pyarrow'", "pyarrow")
    import pyarrow as pa
    return pa


# --------------------------------------------------------------------------- #
# Tables: a split is read lazily into (pyarrow table, HF features dict or None)
# --------------------------------------------------------------------------- #

Reader = Callable[[], tuple[Any, dict | None]]


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {what} {path}: {e}", field="data.root") from e


def _hf_features_from_schema(schema: Any) -> dict | None:
    """The features ``datasets`` writes into an arrow or parquet schema (key b"huggingface")."""
    meta = schema.metadata or {}
    raw = meta.get(b"huggingface")
    if not raw:
        return None
    try:
        return json.loads(raw)["info"]["features"]
    except (ValueError, KeyError, TypeError):
        return None


def _hf_dataset_folder(folder: Path, dataset: str) -> Reader:
    """One ``Dataset.save_to_disk`` folder."""
    def read() -> tuple[Any, dict | None]:
        if _available("datasets"):
            return _read_with_datasets(folder)
        return _read_with_pyarrow(folder, dataset)
    return read


def _read_with_datasets(folder: Path) -> tuple[Any, dict | None]:
    import datasets
    bars = not datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()      # no "Loading dataset from disk" bar on stderr
    try:
        ds = datasets.load_from_disk(str(folder))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"cannot read the Hugging Face data set {folder}: {e}", field="data.root") from e
    finally:
        if bars:
            datasets.utils.enable_progress_bars()
    if not isinstance(ds, datasets.Dataset):
        raise DataError(f"{folder} holds a DatasetDict inside a split folder", field="data.root")
    return ds.with_format("arrow")[:], ds.features.to_dict()


def _read_with_pyarrow(folder: Path, dataset: str) -> tuple[Any, dict | None]:
    """What ``load_from_disk`` reads, without ``datasets``: the arrow files
    listed in state.json (Arrow IPC streams), the features of dataset_info.json."""
    pa = _pyarrow(dataset)
    state = _read_json(folder / "state.json", "the Hugging Face state file")
    try:
        files = [folder / f["filename"] for f in state["_data_files"]]
    except (KeyError, TypeError) as e:
        raise DataError(f"{folder / 'state.json'} lists no _data_files [{{filename: ...}}] ({e})",
                        field="data.root") from None
    tables = []
    for path in files:
        try:
            with pa.memory_map(str(path)) as source:
                tables.append(pa.ipc.open_stream(source).read_all())
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"cannot read arrow file {path}: {e}", field="data.root") from e
    if not tables:
        raise DataError(f"{folder / 'state.json'} lists no arrow files", field="data.root")
    features = None
    info = folder / "dataset_info.json"
    if info.is_file():
        features = (_read_json(info, "the Hugging Face info file") or {}).get("features")
    if features is None:
        features = _hf_features_from_schema(tables[0].schema)
    try:
        return pa.concat_tables(tables), features
    except pa.ArrowException as e:
        raise DataError(f"the arrow files of {folder} do not share one schema: {e}", field="data.root") from e


def _hf_disk_splits(base: Path, dataset: str) -> tuple[dict[str, Reader] | None, Reader | None]:
    """(named splits, None) for a DatasetDict folder, (None, reader) for a Dataset folder."""
    if not (_available("datasets") or _available("pyarrow")):
        raise _missing(dataset, "'datasets' (or at least 'pyarrow')", "datasets")
    if (base / "dataset_dict.json").is_file():
        splits = _read_json(base / "dataset_dict.json", "the Hugging Face split list").get("splits")
        if not isinstance(splits, list) or not all(isinstance(s, str) for s in splits):
            raise DataError(f"{base / 'dataset_dict.json'} has no list of split names", field="data.root")
        return {s: _hf_dataset_folder(base / s, dataset) for s in splits}, None
    if (base / "state.json").is_file():
        return None, _hf_dataset_folder(base, dataset)
    if not base.exists():
        raise DataError(f"dataset {dataset!r}: {base} does not exist", field="data.root")
    raise DataError(
        f"dataset {dataset!r}: {base} is not a folder written by save_to_disk: no dataset_dict.json "
        "(a DatasetDict) and no state.json with dataset_info.json (a Dataset)",
        field="data.root",
    )


def _parquet_reader(files: Sequence[Path], dataset: str) -> Reader:
    def read() -> tuple[Any, dict | None]:
        pa = _pyarrow(dataset)
        import pyarrow.parquet as pq
        tables = []
        for path in files:
            try:
                tables.append(pq.read_table(str(path)))
            except (OSError, pa.ArrowException) as e:
                raise DataError(f"cannot read parquet file {path}: {e}", field="data.root") from e
        try:
            table = pa.concat_tables(tables)
        except pa.ArrowException as e:
            raise DataError(f"the parquet files {', '.join(map(str, files))} do not share one schema: {e}",
                            field="data.root") from e
        return table, _hf_features_from_schema(tables[0].schema)
    return read


def _parquet_splits(base: Path, dataset: str) -> tuple[dict[str, Reader] | None, Reader | None]:
    _pyarrow(dataset)
    if base.is_file():
        return None, _parquet_reader([base], dataset)
    if not base.is_dir():
        raise DataError(f"dataset {dataset!r}: {base} does not exist", field="data.root")
    for folder in (base, base / "data"):
        found: dict[str, list[Path]] = {}
        for f in sorted(folder.glob("*.parquet")):
            found.setdefault(f.stem.split("-", 1)[0], []).append(f)
        subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and p != base / "data") \
            if folder.is_dir() else []
        for sub in subfolders:             # base/data is searched next (the Hub's layout)
            files = sorted(sub.glob("*.parquet"))
            if files:
                found.setdefault(sub.name, []).extend(files)
        if found:
            named = {k: v for k, v in found.items() if k in _SPLIT_NAMES}
            if named:
                return {k: _parquet_reader(v, dataset) for k, v in found.items()}, None
            return None, _parquet_reader([f for v in found.values() for f in v], dataset)
    raise _missing_files_error(dataset, [base, base / "data"], ["*.parquet"])


# The names a parquet folder's files are grouped by: a folder whose files (or
# subfolders) carry none of them holds one data set without splits.
_SPLIT_NAMES = ("train", "test", "validation", "valid", "val", "dev", "eval")


# --------------------------------------------------------------------------- #
# Columns -> arrays
# --------------------------------------------------------------------------- #

def _column(table: Any, name: str, field: str, where: str) -> Any:
    if name not in table.column_names:
        raise ConfigError(f"{where} has no column {name!r}; its columns: {', '.join(table.column_names)}",
                        field=field)
    col = table.column(name)
    if col.null_count:
        raise ConfigError(f"{where}: column {name!r} has {col.null_count} missing value(s)", field=field)
    return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)


def _storage(arr: Any) -> Any:
    import pyarrow as pa
    while isinstance(arr, pa.ExtensionArray):
        arr = arr.storage
    return arr


def _numbers(arr: Any, name: str, field: str, where: str) -> np.ndarray:
    """A (nested) list column of numbers -> ndarray [N, *shape]; refuses ragged rows."""
    import pyarrow as pa
    import pyarrow.compute as pc
    arr = _storage(arr)
    n, shape = len(arr), []
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        if arr.null_count:
            raise ConfigError(f"{where}: column {name!r} has missing values", field=field)
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != lengths[0]).any():
            i = int(np.flatnonzero(lengths != lengths[0])[0])
            raise ConfigError(f"{where}: column {name!r} has rows of different lengths ({int(lengths[0])} and "
                            f"{int(lengths[i])}, in the same axis); allowed: one shape for every sample", field=field)
        shape.append(int(lengths[0]) if len(lengths) else 0)
        arr = _storage(arr.flatten())
    if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_boolean(arr.type)):
        raise ConfigError(f"{where}: column {name!r} holds {arr.type} values; allowed: an Image feature, encoded "
                        "image bytes, or (nested lists or arrays of) numbers", field=field)
    if arr.null_count:
        raise ConfigError(f"{where}: column {name!r} has missing values", field=field)
    return np.asarray(arr.to_numpy(zero_copy_only=False)).reshape(n, *shape)


def _decode_images(blobs: Sequence[tuple[bytes | None, str | None]], base: Path, name: str, field: str,
                   where: str) -> np.ndarray:
    """Encoded images -> uint8 [N, C, H, W] (C = 1 if all are grayscale, else 3)."""
    from PIL import Image, UnidentifiedImageError
    images = []
    for i, (data, path) in enumerate(blobs):
        try:
            if data is not None:
                img = Image.open(io.BytesIO(data))
            elif path:
                p = Path(path)
                img = Image.open(p if p.is_absolute() else base / p)
            else:
                raise ConfigError(f"{where}: column {name!r} row {i} has neither image bytes nor a path", field=field)
            img.load()
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise ConfigError(f"{where}: column {name!r} row {i} is not a readable image: {e}", field=field) from e
        images.append(img)
    gray = all(img.mode in ("1", "L", "LA", "I", "I;16", "F") for img in images)
    arrays = []
    for i, img in enumerate(images):
        a = np.asarray(img.convert("L" if gray else "RGB"), dtype=np.uint8)
        if arrays and a.shape != arrays[0].shape:
            raise ConfigError(f"{where}: column {name!r} row {i} is a {a.shape[1]}x{a.shape[0]} image, row 0 a "
                            f"{arrays[0].shape[1]}x{arrays[0].shape[0]} one; allowed: one size for every image",
                            field=field)
        arrays.append(a)
    x = np.stack(arrays) if arrays else np.zeros((0, 1, 1), np.uint8)
    return x[:, None] if gray else x.transpose(0, 3, 1, 2)


def _inputs(table: Any, name: str, base: Path, where: str) -> tuple[np.ndarray, bool, bool]:
    """(values [N, *sample], pixels: uint8 values to scale by 1/255, decoded: images already [C, H, W])."""
    import pyarrow as pa
    field = "data.image_column"
    arr = _storage(_column(table, name, field, where))
    if pa.types.is_struct(arr.type) and arr.type.get_field_index("bytes") >= 0:    # HF's Image feature
        paths = (arr.field("path").to_pylist() if arr.type.get_field_index("path") >= 0 else [None] * len(arr))
        blobs = list(zip(arr.field("bytes").to_pylist(), paths))
        return _decode_images(blobs, base, name, field, where), True, True
    if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):         # encoded images
        return _decode_images([(b, None) for b in arr.to_pylist()], base, name, field, where), True, True
    x = _numbers(arr, name, field, where)
    return x, x.dtype == np.uint8, False


def _layout(x: np.ndarray, shape: Sequence[int] | None, decoded: bool, where: str) -> np.ndarray:
    """Samples as [N, F] or [N, C, H, W...] (see the module docstring)."""
    n, sample = x.shape[0], x.shape[1:]
    if shape:
        if int(np.prod(sample)) != int(np.prod(shape)):
            raise ConfigError(f"{where}: a sample has {int(np.prod(sample))} values {tuple(sample)}; data.shape "
                            f"{list(shape)} needs {int(np.prod(shape))}", field="data.shape")
        return x.reshape(n, *shape)
    if decoded:
        return x
    if len(sample) == 0:
        return x.reshape(n, 1)
    if len(sample) == 2:
        return x[:, None]
    if len(sample) == 3 and sample[-1] in (1, 3, 4) and sample[0] not in (1, 3, 4):
        return x.transpose(0, 3, 1, 2)
    return x


def _standardise(train: np.ndarray, test: np.ndarray, pixels: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scale pixels to [0, 1]; standardise per channel (or per feature) with the training statistics."""
    xs = []
    for a in (train, test):
        a = a.astype(np.float32)
        xs.append(a / np.float32(255.0) if pixels else a)
    axes = (0,) if train.ndim == 2 else (0, *range(2, train.ndim))
    mean = xs[0].mean(axis=axes, keepdims=True, dtype=np.float64).astype(np.float32)
    std = xs[0].std(axis=axes, keepdims=True, dtype=np.float64).astype(np.float32)
    std[std == 0] = 1.0
    return (xs[0] - mean) / std, (xs[1] - mean) / std


def _label_values(table: Any, name: str, where: str) -> np.ndarray:
    import pyarrow as pa
    arr = _storage(_column(table, name, "data.label_column", where))
    t = arr.type
    if pa.types.is_dictionary(t):
        arr, t = arr.cast(t.value_type), t.value_type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return np.asarray(arr.to_pylist(), dtype=object)
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return np.asarray(arr.to_numpy(zero_copy_only=False)).astype(np.int64)
    if pa.types.is_floating(t):
        v = np.asarray(arr.to_numpy(zero_copy_only=False))
        if not np.all(np.isfinite(v)) or not np.array_equal(v, np.round(v)):
            raise ConfigError(f"{where}: column {name!r} holds non-integer numbers; allowed: class labels "
                            "(ClassLabel, integers 0..K-1 or strings)", field="data.label_column")
        return v.astype(np.int64)
    raise ConfigError(f"{where}: column {name!r} holds {t} values; allowed: class labels (ClassLabel, integers "
                    "0..K-1 or strings)", field="data.label_column")


def _encode_labels(train: np.ndarray, test: np.ndarray, names: Sequence[str] | None,
                   where: str) -> tuple[np.ndarray, np.ndarray, int]:
    if train.dtype == object or test.dtype == object:
        if train.dtype != test.dtype:
            raise ConfigError(f"{where}: the label column holds strings in one split and numbers in the other",
                            field="data.label_column")
        classes = sorted(set(train.tolist()) | set(test.tolist()))
        ids = {c: i for i, c in enumerate(classes)}
        return (np.asarray([ids[c] for c in train], np.int64), np.asarray([ids[c] for c in test], np.int64),
                len(classes))
    both = np.concatenate([train, test])
    if len(both) and both.min() < 0:
        raise ConfigError(f"{where}: label {int(both.min())} (negative: Hugging Face's -1 means no label); "
                        "allowed: labelled samples, 0..K-1", field="data.label_column")
    k = len(names) if names else int(both.max()) + 1 if len(both) else 0
    if len(both) and both.max() >= k:
        raise ConfigError(f"{where}: label {int(both.max())} but the ClassLabel has {k} names", field="data.label_column")
    return train, test, k


def _client_ids(table: Any, name: str, where: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Each sample's client as 0..U-1, numbered in order of first appearance."""
    values = _column(table, name, "data.client_column", where).to_pylist()
    order: dict[Any, int] = {}
    ids = np.fromiter((order.setdefault(v, len(order)) for v in values), dtype=np.int64, count=len(values))
    return ids, tuple(str(v) for v in order)


# --------------------------------------------------------------------------- #
# hf_disk and parquet
# --------------------------------------------------------------------------- #

def _load_table_dataset(
    name: str, base: Path, splits: dict[str, Reader] | None, single: Reader | None, seed: int, *,
    image_column: str | None, label_column: str | None, client_column: str | None, split: str | None,
    test_split: str | None, test_fraction: float | None, shape: Sequence[int] | None,
) -> Dataset:
    image_column = image_column or "image"
    label_column = label_column or "label"
    if test_split is not None and test_fraction is not None:
        raise ConfigError("give test_split or test_fraction, not both", field="data.test_fraction")
    if splits is None:
        for opt, value in (("split", split), ("test_split", test_split)):
            if value is not None:
                raise ConfigError(f"{base} has no splits (one data set), so data.{opt} does not apply; "
                                "the test set is a held-out data.test_fraction of it", field=f"data.{opt}")
        train_read, test_read = single, None
        test_fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
        train_where = str(base)
    else:
        split = split or "train"
        if split not in splits:
            raise ConfigError(f"{base} has no split {split!r}; its splits: {', '.join(splits)}", field="data.split")
        train_read, train_where = splits[split], f"{base} split {split!r}"
        test_read = None
        if test_fraction is None:
            test_split = test_split or "test"
            if test_split not in splits:
                raise ConfigError(f"{base} has no split {test_split!r}; its splits: {', '.join(splits)} (or hold "
                                "out part of the training split with data.test_fraction)", field="data.test_split")
            if test_split == split:
                raise ConfigError(f"data.test_split is the training split {split!r}; allowed: another split, or "
                                "data.test_fraction", field="data.test_split")
            test_read = splits[test_split]
    assert train_read is not None
    table, features = train_read()
    features = features or {}
    if table.num_rows == 0:
        raise DataError(f"{train_where} has no rows", field="data.root")
    x, pixels, decoded = _inputs(table, image_column, base, train_where)
    y = _label_values(table, label_column, train_where)
    clients: tuple[str, ...] = ()
    cids = None
    if client_column is not None:
        cids, clients = _client_ids(table, client_column, train_where)
    if test_read is not None:
        test_where = f"{base} split {test_split!r}"
        t_table, _ = test_read()
        if t_table.num_rows == 0:
            raise DataError(f"{test_where} has no rows", field="data.root")
        tx, t_pixels, _ = _inputs(t_table, image_column, base, test_where)
        ty = _label_values(t_table, label_column, test_where)
        if tx.shape[1:] != x.shape[1:] or t_pixels != pixels:
            raise ConfigError(f"{test_where}: inputs of shape {tx.shape[1:]} ({tx.dtype}), the training split's "
                            f"{x.shape[1:]} ({x.dtype}); allowed: the same in both", field="data.image_column")
    else:
        train_idx, test_idx = _stratified_split(y, float(test_fraction), np.random.default_rng(seed))
        train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)   # file order (client groups stay whole)
        x, tx, y, ty = x[train_idx], x[test_idx], y[train_idx], y[test_idx]
        if cids is not None:
            cids, clients = _renumber(cids[train_idx], clients)
        if len(x) == 0 or len(tx) == 0:
            raise ConfigError(f"{train_where}: {len(y) + len(ty)} samples are too few to hold out "
                            f"test_fraction={test_fraction}", field="data.test_fraction")
    label_feature = features.get(label_column)
    names = label_feature.get("names") if isinstance(label_feature, dict) and \
        label_feature.get("_type") == "ClassLabel" else None
    y, ty, k = _encode_labels(y, ty, names, train_where)
    x, tx = _layout(x, shape, decoded, train_where), _layout(tx, shape, decoded, train_where)
    x, tx = _standardise(x, tx, pixels)
    return Dataset(name=name, x_train=torch.from_numpy(np.ascontiguousarray(x)), y_train=torch.from_numpy(y),
                   x_test=torch.from_numpy(np.ascontiguousarray(tx)), y_test=torch.from_numpy(ty),
                   input_shape=tuple(int(s) for s in x.shape[1:]), num_classes=k,
                   client_ids=cids, clients=clients)


def _renumber(ids: np.ndarray, names: tuple[str, ...]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Client ids renumbered 0..U'-1 in order of first appearance (after samples were removed)."""
    order: dict[int, int] = {}
    new = np.fromiter((order.setdefault(int(i), len(order)) for i in ids), dtype=np.int64, count=len(ids))
    return new, tuple(names[i] for i in order)


_TABLE_HINT = {
    "hf_disk": "the folder written by Dataset.save_to_disk or DatasetDict.save_to_disk",
    "parquet": "a .parquet file or a folder of them (<split>.parquet, <split>-*.parquet, <split>/*.parquet)",
}


@DATASETS.register("hf_disk")
def load_hf_disk(root: str | None, seed: int, *, image_column: str | None = None, label_column: str | None = None,
                 client_column: str | None = None, split: str | None = None, test_split: str | None = None,
                 test_fraction: float | None = None, shape: Sequence[int] | None = None) -> Dataset:
    """A Hugging Face ``datasets`` folder written by ``save_to_disk`` (module docstring)."""
    base = _require_root("hf_disk", root, _TABLE_HINT["hf_disk"])
    splits, single = _hf_disk_splits(base, "hf_disk")
    return _load_table_dataset("hf_disk", base, splits, single, seed, image_column=image_column,
                               label_column=label_column, client_column=client_column, split=split,
                               test_split=test_split, test_fraction=test_fraction, shape=shape)


@DATASETS.register("parquet")
def load_parquet(root: str | None, seed: int, *, image_column: str | None = None, label_column: str | None = None,
                 client_column: str | None = None, split: str | None = None, test_split: str | None = None,
                 test_fraction: float | None = None, shape: Sequence[int] | None = None) -> Dataset:
    """Parquet files, e.g. a data set from the Hugging Face Hub (module docstring)."""
    base = _require_root("parquet", root, _TABLE_HINT["parquet"])
    splits, single = _parquet_splits(base, "parquet")
    return _load_table_dataset("parquet", base, splits, single, seed, image_column=image_column,
                               label_column=label_column, client_column=client_column, split=split,
                               test_split=test_split, test_fraction=test_fraction, shape=shape)


# --------------------------------------------------------------------------- #
# LEAF (FEMNIST, Shakespeare)
# --------------------------------------------------------------------------- #

# LEAF's character vocabulary for Shakespeare (models/utils/language_utils.py,
# ALL_LETTERS; 80 characters): a character's class is its index here.
LEAF_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
LEAF_VOCAB = len(LEAF_LETTERS)   # 80
_LETTER = {c: i for i, c in enumerate(LEAF_LETTERS)}
FEMNIST_CLASSES = 62             # 10 digits, 26 upper-case, 26 lower-case letters
FEMNIST_PIXELS = 28 * 28


def _leaf_folders(base: Path, name: str) -> tuple[Path, Path]:
    """``base/{train,test}`` or ``base/data/{train,test}`` (LEAF's ``data/<name>/data``)."""
    for folder in (base, base / "data"):
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            return folder / "train", folder / "test"
    raise _missing_files_error(name, [base, base / "data"], ["train/*.json", "test/*.json"])


def _read_leaf(folder: Path, name: str, convert_x: Callable[[list], Any],
               convert_y: Callable[[list], Any]) -> tuple[list, list, np.ndarray, tuple[str, ...]]:
    """Every ``*.json`` of ``folder`` in name order, users in each file's order:
    (x per user, y per user, client id per sample, user names)."""
    files = sorted(folder.glob("*.json"))
    if not files:
        raise _missing_files_error(name, [folder], ["*.json"])
    xs, ys, sizes, users, seen = [], [], [], [], {}
    for f in files:
        obj = _read_json(f, "LEAF file")
        if not isinstance(obj, dict) or not isinstance(obj.get("users"), list) or \
                not isinstance(obj.get("user_data"), dict):
            raise DataError(f"{f} is not a LEAF file: needs \"users\" (a list) and \"user_data\" (a mapping)",
                            field="data.root")
        counts = obj.get("num_samples")
        if counts is not None and (not isinstance(counts, list) or len(counts) != len(obj["users"])):
            raise DataError(f"{f}: \"num_samples\" must list one count per user ({len(obj['users'])})",
                            field="data.root")
        for i, user in enumerate(obj["users"]):
            if user in seen:
                raise DataError(f"{f}: user {user!r} is also in {seen[user]}", field="data.root")
            seen[user] = f.name
            data = obj["user_data"].get(user)
            if not isinstance(data, dict) or not isinstance(data.get("x"), list) or \
                    not isinstance(data.get("y"), list) or len(data["x"]) != len(data["y"]):
                raise DataError(f"{f}: user {user!r} needs user_data {{x: [...], y: [...]}} of one length",
                                field="data.root")
            if counts is not None and counts[i] != len(data["x"]):
                raise DataError(f"{f}: user {user!r} has {len(data['x'])} samples, num_samples says {counts[i]}",
                                field="data.root")
            if not data["x"]:
                continue                 # a user without samples here is no client of this split
            try:
                xs.append(convert_x(data["x"]))
                ys.append(convert_y(data["y"]))
            except (ValueError, TypeError, KeyError) as e:
                raise DataError(f"{f}: user {user!r}: {e}", field="data.root") from None
            sizes.append(len(data["x"]))
            users.append(str(user))
    if not sizes:
        raise DataError(f"dataset {name!r}: the files in {folder} hold no samples", field="data.root")
    return xs, ys, np.repeat(np.arange(len(users), dtype=np.int64), sizes), tuple(users)


def _femnist_x(rows: list) -> np.ndarray:
    x = np.asarray(rows, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != FEMNIST_PIXELS:
        raise ValueError(f"x must be lists of {FEMNIST_PIXELS} pixel values (28x28), got shape {x.shape}")
    return x


def _class_ids(rows: list, k: int) -> np.ndarray:
    y = np.asarray(rows)
    if y.dtype.kind not in "iu" or (len(y) and (y.min() < 0 or y.max() >= k)):
        raise ValueError(f"y must be integer classes 0..{k - 1}")
    return y.astype(np.int64)


def _letters(text: str, what: str) -> list[int]:
    if not isinstance(text, str):
        raise ValueError(f"{what} must be strings, got {type(text).__name__}")
    bad = sorted({c for c in text if c not in _LETTER})
    if bad:
        raise ValueError(f"{what} has character(s) {bad!r} outside LEAF's {LEAF_VOCAB}-character vocabulary")
    return [_LETTER[c] for c in text]


def _shakespeare_x(rows: list) -> np.ndarray:
    seqs = [_letters(s, "x") for s in rows]
    lengths = {len(s) for s in seqs}
    if len(lengths) > 1:
        raise ValueError(f"x strings of lengths {sorted(lengths)}; allowed: one length (LEAF's is 80)")
    return np.asarray(seqs, dtype=np.int64).reshape(len(seqs), -1) + 1   # 1..80; 0 stays padding


def _shakespeare_y(rows: list) -> np.ndarray:
    ids = []
    for c in rows:
        if not isinstance(c, str) or len(c) != 1:
            raise ValueError(f"y must be single characters, got {c!r}")
        ids.extend(_letters(c, "y"))
    return np.asarray(ids, dtype=np.int64)


def _leaf_splits(name: str, root: str | None, convert_x, convert_y):
    base = _require_root(name, root, f"LEAF's data folder for {name}: train/*.json and test/*.json "
                                     f"(as LEAF's preprocess writes data/{name}/data/)")
    train_dir, test_dir = _leaf_folders(base, name)
    train = _read_leaf(train_dir, name, convert_x, convert_y)
    test = _read_leaf(test_dir, name, convert_x, convert_y)
    return train, test


@DATASETS.register("femnist")
def load_femnist(root: str | None, seed: int) -> Dataset:
    """LEAF's FEMNIST (Caldas et al. 2018): 28x28 handwritten characters of
    62 classes by writer, the writers as client ids (``natural`` partition).

    ``x`` is 784 pixel values as LEAF stores them (floats in [0, 1]),
    reshaped to [1, 28, 28] and standardised with the training pixels' mean
    and std (the mnist loaders' normalisation, with FEMNIST's statistics);
    ``y`` is 0..61 (digits, upper case, lower case).  The test set is every
    user's test samples; the split is LEAF's, so ``seed`` is unused.
    Models: the image models (``cnn_mnist``, ``mlp``, ``logreg``, ...).
    """
    (xs, ys, cids, users), (txs, tys, _, _) = _leaf_splits(
        "femnist", root, _femnist_x, lambda y: _class_ids(y, FEMNIST_CLASSES))
    x, tx = _standardise(np.concatenate(xs).reshape(-1, 1, 28, 28), np.concatenate(txs).reshape(-1, 1, 28, 28),
                         pixels=False)
    return Dataset(name="femnist", x_train=torch.from_numpy(x), y_train=torch.from_numpy(np.concatenate(ys)),
                   x_test=torch.from_numpy(tx), y_test=torch.from_numpy(np.concatenate(tys)),
                   input_shape=(1, 28, 28), num_classes=FEMNIST_CLASSES, client_ids=cids, clients=users)


@DATASETS.register("shakespeare")
def load_shakespeare(root: str | None, seed: int) -> Dataset:
    """LEAF's Shakespeare (Caldas et al. 2018): next-character prediction,
    one client per speaking role, the roles as client ids (``natural``).

    ``x`` is 80 characters, ``y`` the next one.  Characters map to LEAF's
    80-character vocabulary (``LEAF_LETTERS``, LEAF's ``ALL_LETTERS``):
    ``y`` is the index 0..79 (80 classes) and ``x`` the indices + 1, int64
    [N, 80], so that 0 stays the padding id of the ``lstm_imdb`` model, the
    one that reads these (``model: {kind: lstm_imdb, vocab: 80}``: an
    embedding, one LSTM, the last state into two FC layers; LEAF's own is a
    two-layer LSTM of 256 cells).  A character outside the vocabulary is
    refused, naming the file and the user.  The split is LEAF's; ``seed`` is
    unused.
    """
    (xs, ys, cids, users), (txs, tys, _, _) = _leaf_splits("shakespeare", root, _shakespeare_x, _shakespeare_y)
    lengths = sorted({a.shape[1] for a in xs + txs})
    if len(lengths) > 1:
        raise DataError(f"dataset 'shakespeare': sequences of {lengths} characters; allowed: one length for every "
                        "user and split (LEAF's is 80)", field="data.root")
    x, tx = np.concatenate(xs), np.concatenate(txs)
    return Dataset(name="shakespeare", x_train=torch.from_numpy(x), y_train=torch.from_numpy(np.concatenate(ys)),
                   x_test=torch.from_numpy(tx), y_test=torch.from_numpy(np.concatenate(tys)),
                   input_shape=(int(x.shape[1]),), num_classes=LEAF_VOCAB, client_ids=cids, clients=users,
                   vocab=LEAF_VOCAB)
