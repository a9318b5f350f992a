"""Gradient benchmark (issue 2): how close the batched per-worker gradient is
to the cost floor, and how much of a simulated round is spent elsewhere.

Part 1, one gradient call for the MLP 784-512-10 (d = 407,050) on mnist5k,
n workers x b samples each:

  vmap   GradFn(model, "vmap")(theta, x[n, b], y[n, b]) -> [n, d]
  loop   GradFn(model, "loop"), the per-worker Python loop -> [n, d]
  floor  torch.func.grad(model.loss)(theta, x[n*b], y[n*b]) -> [d]: one fused
         forward/backward over all n*b samples, what a data-parallel framework
         computes when it does not need per-worker gradients
  vmap_slices  for comparison, GradFn's vmap as it was before commit 0887257
         (theta sliced per layer instead of split)

They are timed interleaved (one call of each per repeat, in rotating order),
after warm-up, so that load from other processes hits all of them alike; the
median and the minimum over repeats are reported, and how many CPUs other
processes kept busy meanwhile (the machine may be shared).

Part 2, the share of a round spent outside gradient computation:
``sim.engine.run_algorithm`` on scenarios/quickstart.yaml with workers = n,
batch_size = b, a fixed number of rounds, evaluation only at the first and
last round.  Host time is accumulated inside GradFn.__call__, evaluate(),
the algorithm's worker_encode (compression, error feedback) and
server_update (aggregation, optimizer), and every method of the classes in
sim.net.network and sim.net.protocols (the simulated network and the round protocol:
sends, rate recomputation, wake-ups, the per-worker SimPy processes); the rest
("other") is minibatch sampling, dropout masks, finiteness checks,
straggler draws, buffer merging and the SimPy event loop itself.

    .venv/bin/python bench/bench_gradients.py [--workers 32 --batch 32
        --repeats 20 --rounds 60 --device cpu|cuda|auto --json OUT]
        [--malloc-reuse]   # experiment: reuse freed [n, d] blocks (see malloc_reuse)
"""
from __future__ import annotations

from _machine import cpu_model  # bench/_machine.py (scripts run from bench/)

import argparse
import dataclasses
import functools
import inspect
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch

import _report  # bench/_report.py (scripts run from bench/)

import algorithms  # noqa: F401  (its classes are timed)
import sim.net.network  # noqa: F401  (its classes are timed)
from sim import engine
from sim.study.config import load_scenario
from sim.learn.data import load_dataset
from sim.learn.grads import GradFn
from sim.learn.models import MlpConfig, build_model

SCENARIO = ROOT / "scenarios" / "quickstart.yaml"


# --- machine -----------------------------------------------------------------
def machine_info(device: torch.device) -> dict:
    cpu = cpu_model()
    os_name = platform.platform()
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = f"{line.split('=', 1)[1].strip(chr(34))} ({platform.system()} {platform.release()})"
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "os": os_name,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def malloc_reuse() -> bool:
    """glibc only: keep freed memory in the heap for reuse instead of handing
    every large block back to the kernel.  By default glibc serves blocks
    above its mmap threshold (at most 32 MiB; a [32, d] float32 tensor is
    52 MB) with a fresh mmap and unmaps them on free, so each new [n, d]
    tensor is zero-filled by the kernel one 4 KiB page fault at a time.
    M_MMAP_MAX = 0 serves every block from the heap; M_TRIM_THRESHOLD = 1 GiB
    keeps up to that much free memory there.  Call before allocating."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_trim_threshold, 1 << 30)) and bool(libc.mallopt(m_mmap_max, 0))
    except (OSError, AttributeError):
        return False


def minor_faults() -> int | None:
    """Minor page faults of this process so far (None off Unix)."""
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    except (ImportError, OSError):
        return None


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


class ForeignLoad:
    """CPUs kept busy by *other* processes while a measurement ran: busy time
    of the whole machine (/proc/stat) minus this process's own CPU time,
    divided by the wall time.  0 means the machine was ours; 1 on a 2-CPU
    machine means another process held a whole core and the figures are
    inflated.  None where /proc/stat is unavailable."""

    def __init__(self) -> None:
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()

    @staticmethod
    def _busy() -> float | None:
        try:
            f = [float(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError, IndexError):
            return None
        idle = f[3] + (f[4] if len(f) > 4 else 0.0)           # idle + iowait
        busy = sum(f[:8]) - idle                                # user .. steal (guest is inside user)
        return busy / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system

    def cpus(self) -> float | None:
        busy = self._busy()
        if busy is None or self.busy0 is None:
            return None
        wall = time.perf_counter() - self.t0
        return max(0.0, (busy - self.busy0) - (self._own() - self.own0)) / wall if wall > 0 else None


# --- part 1: one gradient call ------------------------------------------------
def sliced_vmap(model) -> Callable:
    """For comparison, not the engine's code: GradFn's vmap as it was before
    commit 0887257, with theta cut into layers by one slice per layer
    (``theta[start:stop].view(shape)``) instead of one ``split``.  Under vmap
    the backward of every slice writes its block into a zero-filled [n, d]
    tensor and the blocks are summed; ``split``'s backward is one ``cat``.
    Same gradients.  No dropout masks or BatchNorm (the MLP has neither)."""
    def loss(theta, x, y):
        params = {blk.name: theta[blk.start:blk.stop].view(blk.shape) for blk in model.blocks}
        logits = torch.func.functional_call(model.module, params, (x,))
        return torch.nn.functional.cross_entropy(logits, y)

    return torch.func.vmap(torch.func.grad_and_value(loss), in_dims=(None, 0, 0))


def gradient_calls(n: int, b: int, repeats: int, warmup: int, device: torch.device) -> dict:
    ds = load_dataset("mnist5k")
    model = build_model(MlpConfig(hidden=[512]), ds.input_shape, ds.num_classes).to(device)
    theta = model.init_params(0, device)
    if n * b > len(ds.y_train):
        raise SystemExit(f"n * b = {n * b} exceeds the {len(ds.y_train)} training samples of mnist5k")
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(ds.y_train), generator=g)[: n * b]
    x = ds.x_train[idx].reshape(n, b, *ds.input_shape).to(device)
    y = ds.y_train[idx].reshape(n, b).to(device)
    x_flat, y_flat = x.reshape(n * b, *ds.input_shape), y.reshape(-1)

    vmap, loop = GradFn(model, "vmap"), GradFn(model, "loop")
    floor = torch.func.grad(model.loss)
    sliced = sliced_vmap(model)
    calls: dict[str, Callable[[], object]] = {
        "vmap": lambda: vmap(theta, x, y),
        "loop": lambda: loop(theta, x, y),
        "floor": lambda: floor(theta, x_flat, y_flat),
        "vmap_slices": lambda: sliced(theta, x, y),
    }

    # Sanity: the mean of the per-worker gradients is the fused gradient
    # (equal batch sizes), and vmap agrees with the loop.
    gv, _ = calls["vmap"]()
    gl, _ = calls["loop"]()
    gf = calls["floor"]()
    gb, _ = calls["vmap_slices"]()
    check = {
        "max_abs_diff_vmap_loop": float((gv - gl).abs().max()),
        "max_abs_diff_vmap_slices": float((gv - gb).abs().max()),
        "max_abs_diff_mean_vmap_floor": float((gv.mean(0) - gf).abs().max()),
        "max_abs_floor": float(gf.abs().max()),
    }
    del gv, gl, gf, gb

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    faults: dict[str, list[int]] = {name: [] for name in calls}

    def timed(fn, name=None) -> float:
        sync()
        f0 = minor_faults()
        t0 = time.perf_counter()
        fn()
        sync()
        ms = (time.perf_counter() - t0) * 1e3
        if name is not None and f0 is not None:
            faults[name].append(minor_faults() - f0)
        return ms

    names = list(calls)
    for _ in range(warmup):
        for name in names:
            timed(calls[name])
    samples: dict[str, list[float]] = {name: [] for name in names}
    foreign = ForeignLoad()
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            samples[name].append(timed(calls[name], name))

    stats = {name: {"median_ms": statistics.median(v), "min_ms": min(v), "samples_ms": v,
                    "page_faults_per_call": statistics.median(faults[name]) if faults[name] else None}
             for name, v in samples.items()}
    med = {k: v["median_ms"] for k, v in stats.items()}
    mn = {k: v["min_ms"] for k, v in stats.items()}
    return {
        "n": n, "b": b, "d": model.d, "repeats": repeats, "warmup": warmup,
        "calls": stats,
        "ratios_median": {"vmap/floor": med["vmap"] / med["floor"], "loop/vmap": med["loop"] / med["vmap"],
                          "loop/floor": med["loop"] / med["floor"],
                          "vmap_slices/vmap": med["vmap_slices"] / med["vmap"]},
        "ratios_min": {"vmap/floor": mn["vmap"] / mn["floor"], "loop/vmap": mn["loop"] / mn["vmap"],
                       "loop/floor": mn["loop"] / mn["floor"],
                       "vmap_slices/vmap": mn["vmap_slices"] / mn["vmap"]},
        "check": check,
        "foreign_cpus": foreign.cpus(),
    }


# --- part 2: a round of run_algorithm ----------------------------------------
class Timers:
    """Host seconds accumulated per category.  Only the outermost timed call
    counts: a timed call made inside another (e.g. Network.send calling
    Network._advance) is charged to the outer one, so nothing is counted twice."""

    def __init__(self, device: torch.device) -> None:
        self.s: dict[str, float] = {}
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self._active = False

    def reset(self) -> None:
        self.s = {}

    def _start(self) -> float | None:
        if self._active:
            return None
        self._active = True
        self.sync()
        return time.perf_counter()

    def _stop(self, category: str, t0: float | None) -> None:
        if t0 is None:
            return
        self.sync()
        self.s[category] = self.s.get(category, 0.0) + time.perf_counter() - t0
        self._active = False

    def wrap(self, category: str, fn: Callable) -> Callable:
        if inspect.isgeneratorfunction(fn):
            return self._wrap_generator(category, fn)

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            t0 = self._start()
            try:
                return fn(*args, **kwargs)
            finally:
                self._stop(category, t0)
        return timed

    def _wrap_generator(self, category: str, fn: Callable) -> Callable:
        """A SimPy process: time each resumption of the generator."""
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            gen = fn(*args, **kwargs)
            resume, value = gen.send, None
            while True:
                t0 = self._start()
                try:
                    target = resume(value)
                except StopIteration as stop:
                    return stop.value
                finally:
                    self._stop(category, t0)
                try:
                    value, resume = (yield target), gen.send
                except GeneratorExit:
                    gen.close()
                    raise
                except Exception as exc:  # noqa: BLE001  SimPy throws failed events and interrupts in: pass them on
                    value, resume = exc, gen.throw
        return timed


def _patch(saved: list, owner, name: str, value) -> None:
    saved.append((owner, name, owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)))
    setattr(owner, name, value)


def _classes_defining(module_prefixes: tuple[str, ...], names: tuple[str, ...] | None) -> list[type]:
    """Classes defined in the loaded modules under ``module_prefixes`` that
    define (in their own body) any of ``names``, or any method when None."""
    out = []
    for mod_name, mod in sorted(sys.modules.items()):
        if mod is None or not mod_name.startswith(module_prefixes):
            continue
        for obj in vars(mod).values():
            if not (isinstance(obj, type) and obj.__module__ == mod_name) or obj in out \
                    or getattr(obj, "_is_protocol", False):      # typing.Protocol: an interface
                continue
            own = vars(obj)
            if names is None and any(inspect.isfunction(v) for v in own.values()) or \
                    names is not None and any(inspect.isfunction(own.get(k)) for k in names):
                out.append(obj)
    return out


def install_timers(timers: Timers) -> tuple[Callable[[], None], list[str]]:
    """Monkeypatch the engine's hot-path calls; returns (undo, what was wrapped).

    Found by name rather than listed, so that it keeps working while the
    engine grows: worker_encode / server_update of every class in the
    ``algorithms`` package; every method of every class in sim.net.network and
    sim.net.protocols (SimPy processes included: each resumption is timed)."""
    saved: list = []
    wrapped: list[str] = []

    class TimedGradFn(engine.GradFn):  # type: ignore[misc, valid-type]
        pass
    TimedGradFn.__call__ = timers.wrap("gradients", engine.GradFn.__call__)  # type: ignore[method-assign]
    _patch(saved, engine, "GradFn", TimedGradFn)
    wrapped.append("sim.engine.GradFn.__call__ -> gradients")
    _patch(saved, engine, "evaluate", timers.wrap("evaluation", engine.evaluate))
    wrapped.append("sim.engine.evaluate -> evaluation")
    for cls in _classes_defining(("algorithms",), ("worker_encode", "server_update")):
        for name, category in (("worker_encode", "encode"), ("server_update", "server_update")):
            if inspect.isfunction(vars(cls).get(name)):
                _patch(saved, cls, name, timers.wrap(category, vars(cls)[name]))
                wrapped.append(f"{cls.__module__}.{cls.__qualname__}.{name} -> {category}")
    for cls in _classes_defining(("sim.net.network", "sim.net.protocols"), None):
        for name, fn in list(vars(cls).items()):
            if inspect.isfunction(fn) and not (name.startswith("__") and name.endswith("__")):
                _patch(saved, cls, name, timers.wrap("network", fn))
                wrapped.append(f"{cls.__module__}.{cls.__qualname__}.{name} -> network")

    def undo() -> None:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)
    return undo, wrapped


def rounds_share(n: int, b: int, rounds: int, kinds: list[str], device: torch.device,
                 warmup_rounds: int = 3) -> dict:
    def scenario(max_rounds: int):
        return load_scenario(SCENARIO, overrides=[
            f"workers={n}", f"batch_size={b}", f"device={device.type}",
            # quickstart's Dirichlet(0.5) split can leave a worker with fewer than b
            # samples at n = 32; redraw until every shard holds a full batch.
            f"data.partition.min_size={b}",
            f"stop.max_rounds={max_rounds}", "stop.on_target=false", "stop.max_sim_time=null",
            f"eval_every={max_rounds + 1000}",
        ])

    scn = scenario(rounds)
    overrides_used = ["workers", "batch_size", "device", "data.partition.min_size",
                      "stop.max_rounds", "stop.on_target", "stop.max_sim_time", "eval_every"]
    world = engine.build_world(scn, scn.seed)
    warm_world = dataclasses.replace(world, scenario=scenario(warmup_rounds))
    timers = Timers(device)
    undo, wrapped = install_timers(timers)
    out = {"rounds": rounds, "warmup_rounds": warmup_rounds, "scenario": str(SCENARIO.relative_to(ROOT)),
           "overrides": overrides_used, "timed_calls": wrapped, "algorithms": []}
    try:
        for cfg in scn.algorithms:
            if cfg.kind not in kinds:
                continue
            engine.run_algorithm(warm_world, cfg)                   # warm-up (allocator, first calls)
            timers.reset()
            timers.sync()
            foreign = ForeignLoad()
            f0 = minor_faults()
            t0 = time.perf_counter()
            result = engine.run_algorithm(world, cfg)
            timers.sync()
            total = time.perf_counter() - t0
            f1 = minor_faults()
            s = dict(timers.s)
            done = result.rows[-1]["round"] if result.rows else 0
            ev = s.get("evaluation", 0.0)
            grad = s.get("gradients", 0.0)
            round_s = total - ev                                    # host time of the rounds themselves
            named = sum(s.get(k, 0.0) for k in ("gradients", "encode", "server_update", "network"))
            per_round = {k: 1e3 * s.get(k, 0.0) / max(done, 1)
                         for k in ("gradients", "encode", "server_update", "network")}
            per_round["other"] = 1e3 * (round_s - named) / max(done, 1)
            out["algorithms"].append({
                "name": cfg.label, "kind": cfg.kind, "rounds_done": done, "diverged": result.diverged,
                "final_test_acc": result.rows[-1]["test_acc"] if result.rows else None,
                "total_s": total, "evaluation_s": ev, "gradients_s": grad,
                "host_ms_per_round": 1e3 * round_s / max(done, 1),
                "gradient_ms_per_round": 1e3 * grad / max(done, 1),
                "share_outside_gradients": (round_s - grad) / round_s if round_s > 0 else float("nan"),
                "breakdown_ms_per_round": per_round,
                "foreign_cpus": foreign.cpus(),
                "page_faults_per_round": (f1 - f0) / max(done, 1) if f0 is not None else None,
            })
    finally:
        undo()
    return out


# --- report ---------------------------------------------------------------------
def _fmt_int(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def _fmt_cpus(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def markdown(res: dict) -> str:
    m, g = res["machine"], res["gradient_calls"]
    lines = [
        f"Machine: {m['cpu']}, {m['nproc']} CPUs, torch {m['torch']} ({m['torch_threads']} threads), "
        f"Python {m['python']}, {m['os']}; device {m['device']}" + (f" ({m['gpu']})" if "gpu" in m else "")
        + ("; glibc malloc set to reuse freed blocks (--malloc-reuse)" if res.get("malloc_reuse") else ""),
        f"Load average (1, 5, 15 min) before: {res['load_before']}, after: {res['load_after']}",
        "",
        (f"### One gradient call: MLP 784-512-10 (d = {g['d']:,}), n = {g['n']} workers x b = {g['b']} "
        f"({g['repeats']} interleaved repeats after {g['warmup']} warm-up)"),
        "",
        "| call | output | median ms | min ms | median / floor | page faults / call |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    floor_med = g["calls"]["floor"]["median_ms"]
    shapes = {"vmap": f"[{g['n']}, d]", "loop": f"[{g['n']}, d]", "floor": "[d]",
              "vmap_slices": f"[{g['n']}, d]"}
    labels = {"vmap": "GradFn vmap (batched per-worker)", "loop": "GradFn loop (per-worker loop)",
              "floor": f"floor: one fused fwd/bwd over {g['n'] * g['b']} samples",
              "vmap_slices": "for comparison: vmap, theta sliced per layer (before 0887257)"}
    for name in ("vmap", "loop", "floor", "vmap_slices"):
        c = g["calls"][name]
        lines.append(f"| {labels[name]} | {shapes[name]} | {c['median_ms']:.1f} | {c['min_ms']:.1f} | "
                     f"{c['median_ms'] / floor_med:.1f}x | {_fmt_int(c['page_faults_per_call'])} |")
    rm, rn = g["ratios_median"], g["ratios_min"]
    lines += [
        "",
        f"CPUs busy with other processes during these repeats: {_fmt_cpus(g['foreign_cpus'])}",
        (f"vmap/floor = {rm['vmap/floor']:.1f} (min-based {rn['vmap/floor']:.1f}); "
        f"loop/vmap = {rm['loop/vmap']:.2f} (min-based {rn['loop/vmap']:.2f}); "
        f"vmap_slices/vmap = {rm['vmap_slices/vmap']:.2f} (min-based {rn['vmap_slices/vmap']:.2f})"),
        (f"check: max |vmap - loop| = {g['check']['max_abs_diff_vmap_loop']:.2e}, "
        f"max |vmap - vmap_slices| = {g['check']['max_abs_diff_vmap_slices']:.2e}, "
        f"max |mean_i vmap_i - floor| = {g['check']['max_abs_diff_mean_vmap_floor']:.2e} "
        f"(max |floor| = {g['check']['max_abs_floor']:.2e})"),
    ]
    r = res.get("rounds")
    if r and r["algorithms"]:
        lines += [
            "",
            (f"### Host time of a round: {r['scenario']}, n = {g['n']}, b = {g['b']}, {r['rounds']} rounds, "
            "evaluation only at the first and last round (excluded below)"),
            "",
            ("| algorithm | host ms / round | gradients ms | encode ms | server update ms | network + protocol ms | "
            "other ms | share outside gradients | page faults / round | other processes (CPUs) |"),
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for a in r["algorithms"]:
            bd = a["breakdown_ms_per_round"]
            lines.append(
                f"| {a['name']} ({a['kind']}) | {a['host_ms_per_round']:.1f} | {bd['gradients']:.1f} | "
                f"{bd['encode']:.1f} | {bd['server_update']:.1f} | {bd['network']:.1f} | {bd['other']:.1f} | "
                f"{100 * a['share_outside_gradients']:.0f}% | {_fmt_int(a['page_faults_per_round'])} | "
                f"{_fmt_cpus(a['foreign_cpus'])} |")
        lines += ["", "evaluation (2 calls) per run: " + ", ".join(
            f"{a['name']} {a['evaluation_s'] * 1e3:.0f} ms" for a in r["algorithms"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=32, help="n (default 32)")
    p.add_argument("--batch", type=int, default=32, help="b, samples per worker (default 32)")
    p.add_argument("--repeats", type=int, default=20, help="timed calls of each gradient variant (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls of each variant first (default 5)")
    p.add_argument("--rounds", type=int, default=60,
                   help="rounds of run_algorithm per algorithm for the share (default 60; 0 skips part 2)")
    p.add_argument("--algorithms", default="sgd,topk_ef_sgd,comp_ams",
                   help="comma-separated algorithm kinds of the quickstart scenario to run")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--malloc-reuse", action="store_true",
                   help="experiment: glibc mallopt so freed [n, d] tensors are reused, not unmapped "
                        "(see malloc_reuse); the engine does not do this")
    p.add_argument("--json", type=Path, default=None, help="also write all figures (and raw samples) here")
    args = p.parse_args(argv)

    reuse = malloc_reuse() if args.malloc_reuse else False
    if args.malloc_reuse and not reuse:
        print("--malloc-reuse: mallopt is not available here (not glibc?); running without it", file=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = engine.pick_device(args.device)
    res: dict = {"machine": machine_info(device), "malloc_reuse": reuse, "load_before": load_average(),
                 "command": " ".join([Path(sys.executable).name, *sys.argv])}
    t0 = time.perf_counter()
    res["gradient_calls"] = gradient_calls(args.workers, args.batch, args.repeats, args.warmup, device)
    if args.rounds > 0:
        kinds = [k.strip() for k in args.algorithms.split(",") if k.strip()]
        res["rounds"] = rounds_share(args.workers, args.batch, args.rounds, kinds, device)
    res["load_after"] = load_average()
    res["bench_wall_s"] = time.perf_counter() - t0
    print(markdown(res))
    print(f"\n(benchmark wall time {res['bench_wall_s']:.0f} s)")
    if args.json:
        write_report(res, args)
    return 0


def write_report(res: dict, args) -> None:
    """bench/results/gradients.json with its report block (bench/_report.py)."""
    g = res["gradient_calls"]
    floor_med = g["calls"]["floor"]["median_ms"]
    labels = {"vmap": ("GradFn vmap (batched per-worker)", f"[{g['n']}, d]"),
              "loop": ("GradFn loop (per-worker loop)", f"[{g['n']}, d]"),
              "floor": (f"floor: one fused fwd/bwd over {g['n'] * g['b']} samples", "[d]"),
              "vmap_slices": ("for comparison: vmap, theta sliced per layer (before 0887257)", f"[{g['n']}, d]")}
    tables = [_report.table(
        f"One gradient call: MLP 784-512-10 (d = {g['d']:,}), n = {g['n']} workers x b = {g['b']} ({g['repeats']} "
        f"interleaved repeats after {g['warmup']} warm-up); CPUs busy with other processes meanwhile: "
        f"{_fmt_cpus(g['foreign_cpus'])}.",
        ["call", "output", "median ms", "min ms", "median / floor", "page faults / call"],
        [[labels[k][0], labels[k][1], f"{c['median_ms']:.1f}", f"{c['min_ms']:.1f}",
          f"{c['median_ms'] / floor_med:.1f}x", _fmt_int(c["page_faults_per_call"])]
         for k, c in ((k, g["calls"][k]) for k in ("vmap", "loop", "floor", "vmap_slices"))])]
    r = res.get("rounds")
    if r and r["algorithms"]:
        tables.append(_report.table(
            f"Host time of a round: {r['scenario']}, n = {g['n']}, b = {g['b']}, {r['rounds']} rounds, evaluation "
            "only at the first and last round (excluded).",
            ["algorithm", "host ms / round", "gradients ms", "encode ms", "server update ms",
             "network + protocol ms", "other ms", "share outside gradients", "page faults / round",
             "other processes (CPUs)"],
            [[f"{a['name']} ({a['kind']})", f"{a['host_ms_per_round']:.1f}",
              *(f"{a['breakdown_ms_per_round'][k]:.1f}" for k in ("gradients", "encode", "server_update", "network",
                                                                   "other")),
              f"{100 * a['share_outside_gradients']:.0f}%", _fmt_int(a["page_faults_per_round"]),
              _fmt_cpus(a["foreign_cpus"])] for a in r["algorithms"]]))
    chk = g["check"]
    cmd = " ".join(["cd bench && ../.venv/bin/python bench_gradients.py", *sys.argv[1:]])
    _report.write("gradients", res, path=args.json, load_before=tuple(res["load_before"]),
                  title="Gradients (issue 2)", command=cmd.replace(str(args.json), "results/gradients.json"),
                  about="One batched per-worker gradient call (torch.func vmap, sim/learn/grads.py GradFn) "
                        "against a per-worker loop and against the floor, one fused forward/backward over all "
                        "n b samples (the same FLOPs in one call; no per-worker gradients), then where the host "
                        "time of a whole round goes for three algorithms of the quickstart scenario. "
                        + ("Freed memory is reused (glibc mallopt, sim/alloc.py), as run_sim.py sets it. "
                           if res.get("malloc_reuse") else "Without the allocator setting run_sim.py uses. "),
                  tables=tables,
                  notes=[f"Checks: max |vmap - loop| = {chk['max_abs_diff_vmap_loop']:.2e}, max |vmap - vmap_slices| "
                         f"= {chk['max_abs_diff_vmap_slices']:.2e}, max |mean_i vmap_i - floor| = "
                         f"{chk['max_abs_diff_mean_vmap_floor']:.2e} (max |floor| = {chk['max_abs_floor']:.2e})."])


if __name__ == "__main__":
    raise SystemExit(main())
