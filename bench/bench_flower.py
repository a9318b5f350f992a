"""Flower head to head (issue 15, goal 4): host time per round of the same
dense-SGD round through Flower's simulation, through commsim with its network
model, and through a plain single-process torch loop.

The round, the same in every way: N clients, each holding an iid shard of
MNIST-5k (4000 training images; tiled k = ceil(32 N / 4000) times when N b
exceeds it, so that at N = 1000 each client still holds b = 32 samples of
its own), the scenario model of scenarios/quickstart.yaml (MLP 784-512-10,
d = 407,050) from its seeded initialisation, and its ``sgd`` (lr = 0.1).  In
round t (0-based) client i draws b = 32 samples of its shard with commsim's
counter-based stream (``WorkerStreams.randint(TAG_BATCH, t, ...)``, row i),
takes one gradient of the mean cross-entropy, and the server applies
theta <- theta - lr mean_i g_i.

  flower   ``flwr.simulation.run_simulation`` (Ray backend) with a ServerApp
           running ``flwr.serverapp.strategy.FedAvg(fraction_train=1.0,
           fraction_evaluate=0.0)`` and a ClientApp whose ``@app.train()``
           loads the arrays into the torch module, takes one SGD step
           (torch.optim.SGD, lr) on its b = 32 batch and returns the module's
           parameters with num-examples = b: FedAvg's weighted mean of
           theta - lr g_i is theta - lr mean_i g_i (bench/_flower_app.py).
           Each run is a fresh process (``--one-flower``), so Ray starts and
           stops outside the other ways' measurements.
  commsim  ``sim.engine.run_algorithm`` on scenarios/quickstart.yaml with
           workers = N, batch_size = 32, data.partition iid, its 1 Gbps star
           network model and FLOP compute model, algorithm ``sgd``; no
           evaluation except the engine's first and last.
  plain    a plain torch loop: one nn.Module, and per round for each client
           a forward and ``(loss / N).backward()`` on its batch (the
           gradients accumulate into .grad: their mean), then
           ``torch.optim.SGD.step()``.
  plain_vmap  for reference, not a goal: the same round with the per-client
           gradients from one ``torch.func.vmap(grad(loss))`` call over
           [N, b], their mean, and the step (the batched math commsim does,
           without the simulator around it).

Host time per round: time.perf_counter() at the end of every round (commsim:
its on_round callback; Flower: the strategy's evaluate_fn, which FedAvg
calls after every round), differences of successive stamps, so round 1 (start-up:
Ray actors, first trace) and everything before it are left out.
Repetitions are interleaved (flower, commsim, plain, plain_vmap, flower,
...) so that load drifts hit every way alike; the median over all timed
rounds of all repetitions is reported, with the load average before and
after.  Check: after one round the commsim, plain-loop, plain_vmap and
Flower parameters agree (max |difference| reported, a few 1e-9 here;
commsim against the plain loop must be below 1e-6 or the bench stops).
After R rounds commsim and the plain loop may differ by ~1e-5: their float32
sums differ in the last bit, and once that moves one ReLU input across zero
for one sample the 784 input weights of that hidden unit differ (commsim and
plain_vmap, which sum in the same order, stay at ~1e-8).

    python bench/bench_flower.py [--quick] [--sizes 10 32 100 1000]
        [--rounds 20] [--flower-rounds 6] [--rounds-1000 3] [--repeats 3]
        [--json bench/results/flower.json]

``flwr`` is the optional ``bench`` extra (``make bench-flower`` installs it
into a venv of its own); without it Flower is reported as unavailable.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(HERE), str(ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)

import numpy as np
import torch
import torch.nn.functional as F

from _machine import cpu_model  # bench/_machine.py
import _report  # bench/_report.py

import algorithms  # noqa: F401  (registers the algorithms)
from sim.engine import build_world, run_algorithm
from sim.learn.data import Dataset, load_dataset, make_shards, partition
from sim.learn.models import MlpConfig
from sim.learn.rng import TAG_BATCH, WorkerStreams
from sim.study.config import load_scenario

SCENARIO = ROOT / "scenarios" / "quickstart.yaml"
BATCH = 32
SEED = 0
SIZES = (10, 32, 100, 1000)
QUICK_SIZES = (10, 32)
WAYS = ("flower", "commsim", "plain", "plain_vmap")
AGREE_TOL = 1e-6           # commsim vs plain loop after one round (float32 sums in another order)
FLOWER_TOL = 1e-5          # commsim vs Flower after one round (reported in "errors" when above)
# Flower's telemetry and Ray's usage statistics would try the network: off.  Ray binds its
# services to the machine's network address on Linux unless told it is not a cluster (the
# variable's name says Windows/OSX, but ray_constants reads it on every platform): loopback only.
QUIET_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0",
             "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


# --- the shared round -----------------------------------------------------------
def tiles(n: int, b: int = BATCH, num_train: int = 4000) -> int:
    """How many copies of the training set give every one of n iid shards b samples."""
    return max(1, math.ceil(n * b / num_train))


def bench_dataset(n: int, b: int = BATCH) -> Dataset:
    """MNIST-5k, its training set tiled so that n iid shards hold >= b samples each."""
    ds = load_dataset("mnist5k")
    k = tiles(n, b, ds.num_train)
    if k == 1:
        return ds
    return dataclasses.replace(ds, name=f"mnist5k x{k}",
                               x_train=ds.x_train.repeat(k, *([1] * (ds.x_train.dim() - 1))),
                               y_train=ds.y_train.repeat(k))


def scenario(n: int, rounds: int, device: str = "cpu", b: int = BATCH):
    return load_scenario(SCENARIO, [
        f"workers={n}", f"batch_size={b}", f"device={device}", "model.hidden=[512]",
        "data.partition={kind: iid}", f"stop.max_rounds={rounds}", f"eval_every={rounds}",
        "stop.on_target=false", "stop.max_sim_time=null"])


def sgd_config(scn):
    """The scenario's ``sgd`` entry (lr 0.1 in quickstart.yaml)."""
    return next(a for a in scn.algorithms if a.kind == "sgd")


@dataclass
class Setup:
    """One N: the commsim world and what the plain loops need."""
    n: int
    b: int
    world: object
    lr: float
    theta0: torch.Tensor      # [d]

    @property
    def d(self) -> int:
        return self.world.model.d


def make_setup(n: int, rounds: int, device: str = "cpu", b: int = BATCH, seed: int = SEED) -> Setup:
    scn = scenario(n, rounds, device, b)
    world = build_world(scn, seed, bench_dataset(n, b))
    return Setup(n, b, world, float(sgd_config(scn).lr), world.model.init_params(seed, world.device))


def batches(world, streams: WorkerStreams, t: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Round t's minibatches, x [n, b, ...] and y [n, b]: what commsim's Trainer.plan draws."""
    local = streams.randint(TAG_BATCH, t, world.shards.size, b)
    idx = torch.gather(world.shards.index, 1, local)
    return world.x_train[idx], world.y_train[idx]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_round(stamps: list[float]) -> list[float]:
    """Seconds per round from end-of-round stamps: rounds 2.. (round 1 is start-up)."""
    return [b - a for a, b in zip(stamps, stamps[1:])]


# --- (b) commsim ------------------------------------------------------------------
def run_commsim(setup: Setup, rounds: int) -> tuple[list[float], torch.Tensor]:
    """R rounds of the real engine; (seconds per round for rounds 2..R, theta after R)."""
    world = setup.world
    if world.scenario.stop.max_rounds != rounds:
        world = dataclasses.replace(world, scenario=scenario(setup.n, rounds, world.scenario.device, setup.b))
    stamps: list[float] = []
    trainer = {}

    def on_round(r: int, sim_s: float) -> None:
        sync(world.device)
        stamps.append(time.perf_counter())

    def keep(source):                 # run_algorithm's trace hook: keep the trainer, change nothing
        trainer["t"] = source
        return source

    res = run_algorithm(world, sgd_config(world.scenario), on_round=on_round, record=keep)
    if res.diverged or res.stalled or len(stamps) != rounds:
        raise RuntimeError(f"commsim run did not do {rounds} rounds: {res.diverged_why or res.stalled}")
    return per_round(stamps), trainer["t"].theta.detach().clone()


# --- (c) the plain torch loop --------------------------------------------------------
def plain_module(setup: Setup) -> torch.nn.Module:
    """A fresh nn.Module of the scenario's MLP holding theta0."""
    world = setup.world
    module = MlpConfig(hidden=[512]).build(world.data.input_shape, world.data.num_classes).to(world.device)
    module.load_state_dict(world.model.unflatten(setup.theta0.clone()))
    return module


def flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def run_plain(setup: Setup, rounds: int) -> tuple[list[float], torch.Tensor]:
    """A plain torch loop: per round, per client forward + (loss / N).backward(), one SGD step."""
    world, n, b = setup.world, setup.n, setup.b
    streams = WorkerStreams(world.seed, n, world.device)
    module = plain_module(setup)
    opt = torch.optim.SGD(module.parameters(), lr=setup.lr)
    stamps: list[float] = []
    for t in range(rounds):
        x, y = batches(world, streams, t, b)
        opt.zero_grad()
        for i in range(n):
            (F.cross_entropy(module(x[i]), y[i]) / n).backward()
        opt.step()
        sync(world.device)
        stamps.append(time.perf_counter())
    return per_round(stamps), flat(module)


def run_plain_vmap(setup: Setup, rounds: int) -> tuple[list[float], torch.Tensor]:
    """The same round with one vmap'ed per-client gradient call, mean, step."""
    world, n, b = setup.world, setup.n, setup.b
    streams = WorkerStreams(world.seed, n, world.device)
    module = plain_module(setup)
    names = [name for name, _ in module.named_parameters()]
    params = {name: p.detach().clone() for name, p in module.named_parameters()}

    def loss(ps, x, y):
        return F.cross_entropy(torch.func.functional_call(module, ps, (x,)), y)

    grads_fn = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))
    stamps: list[float] = []
    for t in range(rounds):
        x, y = batches(world, streams, t, b)
        grads = grads_fn(params, x, y)                  # name -> [n, ...]
        params = {k: params[k] - setup.lr * grads[k].mean(0) for k in names}
        sync(world.device)
        stamps.append(time.perf_counter())
    return per_round(stamps), torch.cat([params[k].reshape(-1) for k in names])


# --- (a) Flower ----------------------------------------------------------------------
def flower_available() -> tuple[bool, str]:
    try:
        import flwr  # noqa: F401
        import ray  # noqa: F401
        from flwr.simulation import run_simulation  # noqa: F401
    except ImportError as exc:
        return False, (f"flwr[simulation] is not importable in {sys.executable} ({exc}); "
                       "install the bench extra (make bench-flower does, into a venv of its own)")
    return True, ""


def run_flower_here(n: int, rounds: int, client_cpus: float, reference: str | None = None) -> dict:
    """One Flower simulation of ``rounds`` rounds in this process (``--one-flower``)."""
    os.environ.update(QUIET_ENV)
    import _flower_app
    out = _flower_app.simulate(n, rounds, seed=SEED, batch=BATCH, client_cpus=client_cpus)
    row = {"per_round_s": per_round(out["stamps"][1:]),   # stamps[0]: before round 1 (evaluate_fn(0))
           "client_cpus": client_cpus, "actors": out["actors"]}
    if reference is not None:
        ref = torch.from_numpy(np.load(reference))
        row["round1_max_abs_diff_vs_commsim"] = float((out["theta1"] - ref).abs().max())
    return row


def run_flower(n: int, rounds: int, client_cpus: float, reference: Path, timeout_s: float) -> dict:
    """run_flower_here in a fresh process; {"error": why} when it fails."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one-flower", str(n), str(rounds),
           "--client-cpus", str(client_cpus), "--reference", str(reference)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE, timeout=timeout_s,
                              env={**os.environ, **QUIET_ENV})
    except subprocess.TimeoutExpired:
        return {"error": f"the Flower run (N = {n}, {rounds} rounds) took more than {timeout_s:g} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-8:]
        return {"error": f"Flower run exited with {proc.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1])


# --- the benchmark ---------------------------------------------------------------------
def round1_check(setup: Setup) -> dict:
    """Parameters after one round: commsim, the plain loop and plain_vmap, same seed."""
    _, c = run_commsim(setup, 1)
    _, p = run_plain(setup, 1)
    _, v = run_plain_vmap(setup, 1)
    return {"commsim": c, "plain": p, "plain_vmap": v,
            "max_abs_diff_commsim_plain": float((c - p).abs().max()),
            "max_abs_diff_commsim_plain_vmap": float((c - v).abs().max()),
            "max_abs_step": float((c - setup.theta0).abs().max())}


def median_row(samples: list[float]) -> dict:
    return {"median_s": statistics.median(samples), "min_s": min(samples), "rounds_timed": len(samples),
            "samples_s": samples}


def machine(device: torch.device) -> dict:
    def version(pkg: str) -> str | None:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "flwr": version("flwr"), "ray": version("ray"), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def bench(sizes: list[int], rounds: int, flower_rounds: int, rounds_1000: int, repeats: int,
          client_cpus: float, device: str, flower_timeout_s: float, log=print) -> dict:
    ok, why = flower_available()
    ways = [w for w in WAYS if ok or w != "flower"]
    load_before = list(os.getloadavg())
    out = {"config": {"sizes": sizes, "batch": BATCH, "seed": SEED, "repeats": repeats, "rounds": rounds,
                      "flower_rounds": flower_rounds, "rounds_at_1000": rounds_1000,
                      "flower_client_cpus": client_cpus, "scenario": str(SCENARIO.relative_to(ROOT)),
                      "plain": "per-client loop: forward, (loss / N).backward(), one torch.optim.SGD step",
                      "plain_vmap": "torch.func.vmap(grad(loss)) over [N, b], mean, step (reference)"},
           "flower_available": ok, "flower_unavailable_why": why, "sizes": []}
    tmp = Path(tempfile.mkdtemp(prefix="bench_flower_"))
    for n in sizes:
        r = rounds if n < 1000 else min(rounds, rounds_1000)
        fr = min(flower_rounds, r) if n < 1000 else min(flower_rounds, rounds_1000)
        setup = make_setup(n, r, device)
        check = round1_check(setup)
        if check["max_abs_diff_commsim_plain"] > AGREE_TOL:
            raise SystemExit(f"N={n}: commsim and the plain loop disagree after one round by "
                             f"{check['max_abs_diff_commsim_plain']:.3g} (> {AGREE_TOL:g}): not the same math")
        ref = tmp / f"theta1_n{n}.npy"
        np.save(ref, check["commsim"].cpu().numpy())
        samples: dict[str, list[float]] = {w: [] for w in ways}
        finals: dict[str, torch.Tensor] = {}
        errors: dict[str, str] = {}
        flower_rows: list[dict] = []
        for rep in range(repeats):
            for way in ways:
                if way == "flower":
                    if "flower" in errors:
                        continue
                    row = run_flower(n, fr, client_cpus, ref, flower_timeout_s)
                    if "error" in row:
                        errors["flower"] = row["error"]
                        log(f"N={n}: Flower unavailable: {row['error']}")
                        continue
                    flower_rows.append(row)
                    samples["flower"] += row["per_round_s"]
                    continue
                fn = {"commsim": run_commsim, "plain": run_plain, "plain_vmap": run_plain_vmap}[way]
                secs, theta = fn(setup, r)
                samples[way] += secs
                finals[way] = theta
            log(f"N={n} repetition {rep + 1}/{repeats}, median per round so far: " + ", ".join(
                f"{w} {1e3 * statistics.median(s):.1f} ms" for w, s in samples.items() if s))
        stats = {w: median_row(s) for w, s in samples.items() if s}
        med = {w: v["median_s"] for w, v in stats.items()}
        ratios = {"commsim/plain": med["commsim"] / med["plain"],
                  "commsim/plain_vmap": med["commsim"] / med["plain_vmap"]}
        if "flower" in med:
            ratios["commsim/flower"] = med["commsim"] / med["flower"]
            ratios["flower/commsim"] = med["flower"] / med["commsim"]
        agree = {"round1_max_abs_diff_commsim_plain": check["max_abs_diff_commsim_plain"],
                 "round1_max_abs_diff_commsim_plain_vmap": check["max_abs_diff_commsim_plain_vmap"],
                 "round1_max_abs_step": check["max_abs_step"],
                 f"round{r}_max_abs_diff_commsim_plain": float((finals["commsim"] - finals["plain"]).abs().max())}
        if flower_rows:
            agree["round1_max_abs_diff_commsim_flower"] = diff = max(
                row["round1_max_abs_diff_vs_commsim"] for row in flower_rows)
            if diff > FLOWER_TOL:    # FedAvg sums N float32 products theta_i / N: a little looser
                errors["flower_agreement"] = (f"Flower's parameters after round 1 differ from commsim's by "
                                              f"{diff:.3g} (> {FLOWER_TOL:g}): not the same round")
        out["sizes"].append({"n": n, "d": setup.d, "train_samples": setup.world.data.num_train,
                             "dataset": setup.world.data.name, "rounds": r,
                             "flower_rounds": fr if "flower" in ways else None,
                             "per_round": stats, "ratios": ratios, "agreement": agree,
                             "flower_actors": flower_rows[0]["actors"] if flower_rows else None,
                             "errors": errors})
    shutil.rmtree(tmp, ignore_errors=True)
    out["goals"] = goals(out["sizes"])
    out["machine"] = {**machine(torch.device(device)), "load_before": load_before,
                      "load_after": list(os.getloadavg())}
    return out


def goals(rows: list[dict]) -> dict:
    """Issue 15 goal 4: at N = 100, Flower / commsim >= 20 and commsim / plain <= 1.3."""
    at = next((r for r in rows if r["n"] == 100), None)
    if at is None:
        return {"measured": False, "why": "N = 100 was not run"}
    fc = at["ratios"].get("flower/commsim")
    cp = at["ratios"]["commsim/plain"]
    return {"measured": True, "n": 100,
            "flower_over_commsim": fc, "flower_over_commsim_goal": 20.0,
            "flower_met": None if fc is None else fc >= 20.0,
            "commsim_over_plain": cp, "commsim_over_plain_goal": 1.3, "plain_met": cp <= 1.3}


def table(result: dict) -> str:
    lines = ["| N | d | flower ms/round | commsim ms/round | plain ms/round | plain_vmap ms/round | "
             "commsim/flower | commsim/plain | commsim/plain_vmap | flower/commsim |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def ms(row, w):
        return f"{1e3 * row['per_round'][w]['median_s']:.1f}" if w in row["per_round"] else "n/a"

    def x(row, k):
        return f"{row['ratios'][k]:.3g}x" if k in row["ratios"] else "n/a"
    for row in result["sizes"]:
        lines.append(f"| {row['n']} | {row['d']:,} | {ms(row, 'flower')} | {ms(row, 'commsim')} | "
                     f"{ms(row, 'plain')} | {ms(row, 'plain_vmap')} | {x(row, 'commsim/flower')} | "
                     f"{x(row, 'commsim/plain')} | {x(row, 'commsim/plain_vmap')} | {x(row, 'flower/commsim')} |")
    g = result["goals"]
    if g["measured"]:
        fc = "Flower not measured" if g["flower_over_commsim"] is None else \
            f"{g['flower_over_commsim']:.3g}x faster than Flower (goal >= 20x: " \
            f"{'met' if g['flower_met'] else 'not met'})"
        lines.append(f"\nAt N = 100 commsim is {fc}, and {g['commsim_over_plain']:.3g}x the plain loop "
                     f"(goal <= 1.3x: {'met' if g['plain_met'] else 'not met'}).")
    else:
        lines.append(f"\nGoals not evaluated: {g['why']}.")
    if not result["flower_available"]:
        lines.append(f"Flower unavailable: {result['flower_unavailable_why']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="N = 10, 32; 5 rounds (Flower 3), 2 repetitions")
    p.add_argument("--sizes", type=int, nargs="+", help=f"client counts N (default {' '.join(map(str, SIZES))})")
    p.add_argument("--rounds", type=int, default=20, help="rounds per commsim / plain run (N < 1000)")
    p.add_argument("--flower-rounds", type=int, default=6, help="rounds per Flower run (N < 1000)")
    p.add_argument("--rounds-1000", type=int, default=3, help="rounds per run of every way at N >= 1000")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--client-cpus", type=float, default=1.0,
                   help="Flower client_resources num_cpus (1: one Ray actor per core)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="commsim and the plain loops")
    p.add_argument("--flower-timeout", type=float, default=3600.0, help="seconds per Flower run")
    p.add_argument("--json", default=str(HERE / "results" / "flower.json"))
    p.add_argument("--one-flower", nargs=2, type=int, metavar=("N", "ROUNDS"), help=argparse.SUPPRESS)
    p.add_argument("--reference", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one_flower:
        print(json.dumps(run_flower_here(a.one_flower[0], a.one_flower[1], a.client_cpus, a.reference)))
        return
    for name in ("rounds", "flower_rounds", "rounds_1000", "repeats"):
        if getattr(a, name) < (2 if name != "repeats" else 1):
            p.error(f"--{name.replace('_', '-')} must be >= {2 if name != 'repeats' else 1} "
                    "(round 1 is start-up and not timed)")
    if a.quick:
        sizes, a.rounds, a.flower_rounds, a.repeats = list(a.sizes or QUICK_SIZES), 5, 3, 2
    else:
        sizes = list(a.sizes or SIZES)
    from sim.alloc import reuse_freed_memory
    reuse_freed_memory()          # as run_sim.py does for every command
    result = bench(sizes, a.rounds, a.flower_rounds, a.rounds_1000, a.repeats, a.client_cpus, a.device,
                   a.flower_timeout, log=lambda s: print(s, file=sys.stderr, flush=True))
    result["config"]["quick"] = a.quick
    text = table(result)
    print(text)
    write_report(result, a, sizes)
    print(f"\nwrote {a.json}", file=sys.stderr)


def write_report(result: dict, a, sizes: list[int]) -> None:
    """bench/results/flower.json with its report block (bench/_report.py)."""
    def ms(row, w):
        return f"{1e3 * row['per_round'][w]['median_s']:.1f}" if w in row["per_round"] else "n/a"

    def x(row, k):
        return f"{row['ratios'][k]:.3g}x" if k in row["ratios"] else "n/a"
    rows = [[row["n"], f"{row['d']:,}", ms(row, "flower"), ms(row, "commsim"), ms(row, "plain"), ms(row, "plain_vmap"),
             x(row, "flower/commsim"), x(row, "commsim/plain"), x(row, "commsim/plain_vmap")]
            for row in result["sizes"]]
    g = result["goals"]
    goals = []
    if g["measured"] and g["flower_over_commsim"] is not None:
        goals.append(_report.goal("N = 100: Flower / commsim host time per round", g["flower_over_commsim"], ">=", 20))
    if g["measured"]:
        goals.append(_report.goal("N = 100: commsim / plain torch loop", g["commsim_over_plain"], "<=", 1.3))
    notes = [f"Flower unavailable: {result['flower_unavailable_why']}"] if not result["flower_available"] else []
    notes += [f"N = {row['n']}: {k}: {v}" for row in result["sizes"] for k, v in row["errors"].items()]
    notes.append("After one round the parameters agree: commsim against the plain loop within "
                 + ", ".join(f"{row['agreement']['round1_max_abs_diff_commsim_plain']:.1g} (N = {row['n']})"
                             for row in result["sizes"])
                 + (", against Flower within " + ", ".join(
                     f"{row['agreement']['round1_max_abs_diff_commsim_flower']:.1g} (N = {row['n']})"
                     for row in result["sizes"] if "round1_max_abs_diff_commsim_flower" in row["agreement"])
                    if any("round1_max_abs_diff_commsim_flower" in row["agreement"] for row in result["sizes"])
                    else "") + ".")
    cfg = result["config"]
    _report.write("flower", result, path=a.json, load_before=tuple(result["machine"]["load_before"]),
                  title="Flower, head to head (issue 15, goal 4)",
                  command=("cd bench && ../.venv-flower/bin/python bench_flower.py "
                           + ("--quick " if a.quick else "") + f"--sizes {' '.join(map(str, sizes))} --rounds "
                           f"{a.rounds} --flower-rounds {a.flower_rounds} --rounds-1000 {a.rounds_1000} --repeats "
                           f"{a.repeats} --json results/flower.json   # make bench-flower creates .venv-flower"),
                  about="Host time per round of the same dense-SGD round (N clients, MNIST-5k iid shards, tiled "
                        "when N b exceeds the 4,000 training images; the quickstart's MLP 784-512-10, b = 32, one "
                        "SGD step of lr 0.1 per client, the mean) through Flower's `run_simulation` (Ray backend, "
                        f"FedAvg with fraction_train = 1, {cfg['flower_client_cpus']:g} CPU per client), through "
                        "commsim with its network model (1 Gbps star, FLOP compute model), through a plain "
                        "single-process torch loop (per client a forward and backward, one optimizer step) and, "
                        "for reference only, the same math with one vmap call (plain_vmap). Per-round times are "
                        "differences of end-of-round stamps, so start-up and round 1 are left out; repetitions "
                        "interleaved; medians over every timed round.",
                  tables=[_report.table("", ["N", "d", "flower ms / round", "commsim ms / round",
                                             "plain ms / round", "plain_vmap ms / round", "flower / commsim",
                                             "commsim / plain", "commsim / plain_vmap"], rows)],
                  goals=goals, notes=notes)


if __name__ == "__main__":
    main()
