"""Units parse and print back exactly; the counter-based worker streams."""
from __future__ import annotations

import random

import pytest
import torch

from sim import units
from sim.learn.rng import WorkerStreams, hash32


@pytest.mark.parametrize("text,kind,value", [
    ("1 Gbps", "bandwidth", 1e9), ("100 Mbps", "bandwidth", 1e8), ("10Gbit/s", "bandwidth", 1e10),
    ("1 MB/s", "bandwidth", 8e6), (1e9, "bandwidth", 1e9), ("5 ms", "time", 0.005),
    ("10 min", "time", 600.0), ("250us", "time", 250e-6), ("2 h", "time", 7200.0),
    ("1.5 MB", "size", 1.5e6), ("1 KiB", "size", 1024.0)])
def test_parse(text, kind, value):
    assert units.parse(text, kind) == pytest.approx(value, rel=1e-15)


@pytest.mark.parametrize("text", ["1 Gbbps", "fast", "", "1 Gbps 2", True, None, "nan Gbps"])
def test_parse_rejects(text):
    with pytest.raises(ValueError):
        units.parse(text, "bandwidth")


@pytest.mark.parametrize("value,kind", [(1e9, "bandwidth"), (1.25e8, "bandwidth"), (12345.678, "bandwidth"),
                                        (0.005, "time"), (600.0, "time"), (1e-4, "time"), (0.0, "time"),
                                        (0.1 + 0.2, "time")])
def test_format_round_trips_exactly(value, kind):
    assert units.parse(units.format(value, kind), kind) == value


def test_hash32_matches_reference_lowbias32():
    def ref(v):
        v &= 0xFFFFFFFF
        v ^= v >> 16; v = (v * 0x7FEB352D) & 0xFFFFFFFF
        v ^= v >> 15; v = (v * 0x846CA68B) & 0xFFFFFFFF
        return v ^ (v >> 16)
    rnd = random.Random(0)
    xs = [rnd.getrandbits(32) for _ in range(2000)] + [0, 1, 0xFFFFFFFF]
    assert hash32(torch.tensor(xs)).tolist() == [ref(v) for v in xs]


def test_streams_are_deterministic_independent_and_uniform():
    s = WorkerStreams(3, 5)
    u = s.uniform(1, 0, (20000,))
    assert u.shape == (5, 20000) and float(u.min()) >= 0 and float(u.max()) < 1
    assert torch.equal(u, WorkerStreams(3, 5).uniform(1, 0, (20000,)))
    assert (u.mean(1) - 0.5).abs().max() < 0.01
    assert not torch.equal(u[0], u[1])
    assert not torch.equal(u, WorkerStreams(4, 5).uniform(1, 0, (20000,)))
    assert not torch.equal(u, s.uniform(1, 1, (20000,)))
    # worker i's stream does not depend on how many workers there are
    assert torch.equal(WorkerStreams(3, 2).uniform(1, 0, (100,)), u[:2, :100])


def test_randint_ranges_and_coverage():
    high = torch.tensor([1, 2, 7, 1000])
    r = WorkerStreams(0, 4).randint(1, 0, high, 5000)
    assert r.shape == (4, 5000)
    for i, h in enumerate(high.tolist()):
        assert int(r[i].min()) >= 0 and int(r[i].max()) < h
    assert set(r[2].tolist()) == set(range(7))
