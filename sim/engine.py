"""The co-simulation: real gradients on real data, simulated time on a SimPy network.

One :class:`World` (data on the device, worker shards, model template,
topology, compute times) is built per scenario and seed; :func:`run_algorithm`
trains one algorithm in it.  The math of round t is computed batched over the
n workers; the SimPy processes then decide *when* each message arrives:

    worker i:  wait for round t's broadcast -> compute (step_s[i]) -> upload
    server:    wait for every upload -> aggregate and update -> broadcast

The synchronous trajectory does not depend on timing, so computing round t's
math when the server starts the round is exact.  Simulated time comes only
from the network and compute models, never from the host clock.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable

import networkx as nx
import numpy as np
import simpy
import torch

import algorithms
from algorithms.base import Context, Payload
from algorithms.ps import update_bytes

from sim.study.config import Scenario
from sim.learn.data import Dataset, Shards, load_dataset, make_shards, partition
from sim.errors import ConfigError
from sim.learn.chunked import ChunkedRound, plan_round
from sim.learn.grads import GradFn, dropout_masks, masks_at
from sim.learn.memory import allocation_failed, check_fits
from sim.learn.models import FlatModel, build_model, merge_buffers
from sim.net.network import Network
from sim.net.protocols import Failures, ParameterServer, Ring
from sim.learn.rng import TAG_BATCH, TAG_LOCAL, TAG_STRAGGLER, WorkerStreams

EVAL_CHUNK = 2048          # samples per evaluation forward pass
TRAIN_EVAL_SAMPLES = 2048  # train loss is measured on this fixed subset of the training set


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but torch.cuda.is_available() is False; "
                          "allowed here: auto, cpu", field="device")
    return torch.device(name)


@dataclass
class World:
    """Everything about a scenario and seed that does not depend on the algorithm."""

    scenario: Scenario
    seed: int
    device: torch.device
    data: Dataset
    shards: Shards               # on device
    x_train: torch.Tensor        # on device
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    train_eval_idx: torch.Tensor
    model: FlatModel
    step_s: list[float]          # [n] seconds per local step (before stragglers)
    graph: nx.DiGraph            # the topology, per-worker draws made

    @property
    def n(self) -> int:
        return self.scenario.workers


def build_world(scn: Scenario, seed: int, dataset: Dataset | None = None) -> World:
    """Load data, partition it, build the model; raises ConfigError for
    settings that are only checkable against the data (batch > shard)."""
    device = pick_device(scn.device)
    data = dataset or load_dataset(scn.data.dataset, scn.data.root, **scn.data.loader_options())
    part = scn.data.partition
    params = part.model_dump(exclude={"kind"})
    labels = data.y_train.numpy()
    if scn.workers > len(labels):
        raise ConfigError(f"{scn.workers} workers but the training set has only {len(labels)} samples; "
                          f"allowed: 1 .. {len(labels)}", field="workers")
    vocab = getattr(scn.model, "vocab", None)
    if data.vocab is not None and vocab is not None and vocab < data.vocab:
        raise ConfigError(f"{scn.data.dataset} has token ids 1..{data.vocab}; allowed: vocab >= {data.vocab}",
                          field="model.vocab")
    parts = partition(labels, scn.workers, part.kind, seed, client_ids=data.client_ids, **params)
    smallest = min(len(p) for p in parts)
    if scn.batch_size > smallest:
        raise ConfigError(f"{scn.batch_size} is larger than the smallest worker shard "
                          f"({smallest} samples under partition {part.kind!r}); allowed: 1 .. {smallest}",
                          field="batch_size")
    if scn.compute.memory_budget is None:      # with a budget the round's plan checks it (sim/learn/chunked.py)
        check_fits(scn.model, data.input_shape, data.num_classes, scn.workers, device)   # before allocating
    try:
        model = build_model(scn.model, data.input_shape, data.num_classes).to(device)
    except Exception as exc:  # noqa: BLE001 - only the allocator's failure is turned into a message
        if not allocation_failed(exc):
            raise
        raise ConfigError(f"{scn.model.kind}: the model does not fit in memory ({str(exc).splitlines()[0]})",
                          field="model") from None
    if model.input_dtype != data.x_train.dtype:     # token ids (imdb, shakespeare) need an embedding model
        what = {torch.int64: "token ids (int64)", torch.float32: "numbers (float32)"}
        raise ConfigError(f"{scn.model.kind} reads {what.get(model.input_dtype, model.input_dtype)} but "
                          f"{scn.data.dataset}'s inputs are {what.get(data.x_train.dtype, data.x_train.dtype)}; "
                          "allowed: lstm_imdb for token ids, the other models for numbers", field="model.kind")
    g = torch.Generator().manual_seed(seed)
    n_eval = min(TRAIN_EVAL_SAMPLES, len(labels))
    train_eval_idx = torch.randperm(len(labels), generator=g)[:n_eval].sort().values
    graph = build_graph(scn, seed)
    try:
        step_s = scn.compute.step_times(model, scn.batch_size, scn.workers, network_rng(seed + 1))
    except ValueError as exc:
        raise ConfigError(str(exc), field="compute.speed") from None
    return World(scn, seed, device, data, make_shards(parts).to(device),
                 data.x_train.to(device), data.y_train.to(device),
                 data.x_test.to(device), data.y_test.to(device),
                 train_eval_idx.to(device), model, step_s, graph)


def network_rng(seed: int) -> np.random.Generator:
    """The generator for per-worker network and compute draws of a seed (its
    own stream, so adding a dataset or algorithm never changes the network)."""
    return np.random.default_rng([seed, 0x6E6574])


def build_graph(scn: Scenario, seed: int) -> nx.DiGraph:
    net = scn.network
    try:
        return net.topology.build(net, scn.workers, network_rng(seed))
    except ValueError as exc:
        raise ConfigError(str(exc), field="network") from None


def failures_of(scn: Scenario) -> Failures:
    out = Failures()
    for f in scn.failures:
        out.intervals.setdefault(f.worker, []).append(
            (f.crash_at, f.rejoin_at if f.rejoin_at is not None else math.inf))
    return out


@torch.no_grad()
def evaluate(world: World, theta: torch.Tensor, buffers: dict | None = None) -> dict[str, float]:
    """Test loss/accuracy on the whole test set; train loss on a fixed subset.
    BatchNorm models normalise with the server's running statistics ``buffers``."""
    def over(x, y):
        loss_sum, correct = 0.0, 0
        for s in range(0, len(y), EVAL_CHUNK):
            logits = world.model.forward(theta, x[s:s + EVAL_CHUNK], buffers=buffers)
            loss_sum += float(torch.nn.functional.cross_entropy(logits, y[s:s + EVAL_CHUNK], reduction="sum"))
            correct += int((logits.argmax(1) == y[s:s + EVAL_CHUNK]).sum())
        return loss_sum / len(y), correct / len(y)

    test_loss, test_acc = over(world.x_test, world.y_test)
    idx = world.train_eval_idx
    train_loss, _ = over(world.x_train[idx], world.y_train[idx])
    return {"train_loss": train_loss, "test_loss": test_loss, "test_acc": test_acc}


@dataclass
class Counters:
    round: int = 0
    uploads: int = 0       # messages carrying gradient information (worker -> server, or ring steps)
    bytes_up: int = 0      # all bytes sent by workers, headers included
    bytes_down: int = 0    # all bytes sent by servers, headers included


@dataclass
class RunResult:
    algorithm: str
    seed: int
    rows: list[dict] = field(default_factory=list)
    diverged: bool = False
    stalled: str = ""          # why the run could not go on (nothing delivered), or ""
    diverged_why: str = ""     # at which round and how it diverged, or ""
    model_params: int = 0
    links: list[dict] = field(default_factory=list)
    skipped_fraction: float = 0.0   # worker-rounds without a gradient upload (skip rules)
    server_state_bytes: int = 0     # server memory for stored worker messages (skip rules)
    compression_rate: float | str = ""   # the paper's formula, for algorithms that define one (sketching)
    mean_batch: float = 0.0         # event-driven runs: mean width of the batched gradient calls
    ring_batches: int = 0           # event-driven runs: batches whose snapshots were a version-ring slice
    ring_evacuated: int = 0         # event-driven runs: long-held versions copied out of the ring
    spectral_gap: float | str = ""  # decentralized runs: 1 - |lambda_2| of the mixing matrix (sim/gossip.py)


MAX_EMPTY_ROUNDS = 10  # consecutive rounds in which no upload arrives before the run is declared stalled


def straggler_times(world: World, streams: WorkerStreams, t: int) -> list[float]:
    """This round's compute time per worker: base time, times the slowdown for
    workers that straggle this step (drawn from each worker's stream)."""
    spec = world.scenario.compute.stragglers
    if spec is None or spec.probability == 0:
        return world.step_s
    u = streams.uniform(TAG_STRAGGLER, t, ()).view(-1).tolist()
    return [s * (spec.slowdown if u[i] < spec.probability else 1.0) for i, s in enumerate(world.step_s)]


class Trainer:
    """The math of one algorithm in one world: real gradients, real updates.

    :func:`simulate` asks it, in order, for what the network must carry; every
    answer is plain data (lists, numbers), so a :class:`sim.study.trace.Recorder`
    can write it down and a :class:`sim.study.trace.Replayer` can give it back
    without computing anything (exact trace replay).

        evaluate(t)              -> {"train_loss", "test_loss", "test_acc"}
        plan(t, active)          -> {"sizes" [n][m] bytes, "sending" [n], "carries" [n],
                                     "step_s" [n] seconds} | None (diverged: a non-finite loss, or
                                     the mean loss above stop.divergence_factor x round 0's)
        second_round(t, arrived) -> [request_bytes, reply_bytes] | None
        update(t, arrived)       -> {"down": [S] bytes, "finite": bool[, "diag": {quantity: number}]}
        stats()                  -> summary fields of the algorithm
    """

    def __init__(self, world: World, cfg: algorithms.AlgorithmConfig) -> None:
        scn, dev = world.scenario, world.device
        self.world, self.cfg = world, cfg
        self.proto = None   # set by run_algorithm once the protocol exists (it slices payloads)
        self.alg = cfg.build(Context(d=world.model.d, n=world.n, blocks=world.model.blocks, device=dev,
                                     shard_sizes=tuple(int(s) for s in world.shards.size.tolist())))
        if cfg.late == "apply":            # keep last round's uploads (algorithms/ps.py)
            self.alg = dataclasses.replace(self.alg, keep_late=True)
        self.streams = WorkerStreams(world.seed, world.n, dev)
        self.grad_fn = GradFn(world.model, scn.gradients)
        self.theta = world.model.init_params(world.seed, dev)                   # [d]
        self.buffers = world.model.buffers0(dev)   # BatchNorm running statistics kept by the server ({} if none)
        # compute.memory_budget / state_dtype (issue 15): the round in chunks of workers, or None
        plan, _ = plan_round(world, self.alg, self.theta)
        self.chunked = None if plan.rows is None and scn.compute.state_dtype == "float32" and \
            plan.store == "device" else ChunkedRound(self.alg, self.theta, world.n, plan.rows,
                                                     scn.compute.state_dtype, plan.store, scn.compute.state_dir,
                                                     plan.trim_above)
        self.state = self.alg.init(self.theta) if self.chunked is None else self.chunked.state
        self.upload = None
        self.new_buffers = None
        self.loss0: float | None = None   # the workers' mean minibatch loss in the first round (divergence)

    # properties simulate() needs before the first round
    @property
    def has_second_round(self) -> bool:
        return hasattr(self.alg, "second_round")

    @property
    def summable(self) -> bool:
        return self.alg.summable

    @property
    def updates_without_uploads(self) -> bool:
        """Skip rules: a round in which every worker skips still steps with stored messages."""
        return bool(getattr(self.alg, "updates_without_uploads", False))

    def evaluate(self, t: int) -> dict[str, float]:
        return evaluate(self.world, self.theta, self.buffers)

    def plan(self, t: int, active: list[bool]) -> dict | None:
        world, scn = self.world, self.world.scenario
        local = self.streams.randint(TAG_BATCH, t, world.shards.size, scn.batch_size)      # [n, b]
        idx = torch.gather(world.shards.index, 1, local)                                  # [n, b]
        x, y = world.x_train[idx], world.y_train[idx]                                     # [n, b, ...], [n, b]
        masks = dropout_masks(world.model, self.streams, t, scn.batch_size)
        act = torch.tensor(active, dtype=torch.bool)
        if self.chunked is not None:
            return self._plan_chunks(t, x, y, masks, act)
        grads, losses, self.new_buffers = self.grad_fn(self.theta, x, y, masks, self.buffers)  # [n, d], [n]
        if not self._loss_ok(losses):
            return None
        aux = lambda thetas: self.grad_fn.at(thetas, x, y, masks)  # noqa: E731 (same minibatch)
        kw = {"local": LocalSteps(self, t)} if getattr(self.alg, "wants_local_steps", False) else {}
        self.upload, self.state = self.alg.worker_encode(self.state, grads, t, self.streams, act, aux_grad=aux,
                                                         **kw)
        return self._planned(t, active, self.proto.sizes(self.upload.payload))

    def _loss_ok(self, losses: torch.Tensor) -> bool:
        """False when the run diverged: a non-finite loss, or the mean loss above
        stop.divergence_factor x round 0's (docs/model.md, Divergence)."""
        if not bool(torch.isfinite(losses).all()):
            return False
        mean_loss = float(losses.mean())
        if self.loss0 is None:
            self.loss0 = mean_loss
        return not mean_loss > self.world.scenario.stop.divergence_factor * self.loss0

    def _plan_chunks(self, t: int, x, y, masks, act: torch.Tensor) -> dict | None:
        """plan() of a round in chunks of workers (sim/learn/chunked.py): per
        chunk one batched gradient call and the chunk's worker_encode; the
        uploads are kept for update()."""
        ch, losses, sizes, carries, sends, news, nbytes = self.chunked, [], [], [], [], [], []
        ch.begin()
        for a, b in ch.chunks():
            g, loss, nb = self.grad_fn(self.theta, x[a:b], y[a:b], {k: m[a:b] for k, m in masks.items()},
                                       self.buffers)                                        # [c, d], [c]
            losses.append(loss)
            news.append(nb)
            up = ch.encode(a, b, g, t, self.streams, act)
            del g
            sizes += self.proto.sizes(up.payload)
            nbytes.append(up.payload.nbytes)
            carries.append(up.carries_gradient)
            sends.append(up.sends if up.sends is not None else torch.ones(b - a, dtype=torch.bool))
        if not self._loss_ok(torch.cat(losses)):
            return None
        self.new_buffers = {k: torch.cat([nb[k] for nb in news]) for k in news[0]} if news and news[0] else {}
        # the round's Upload: every worker's size and flags; the tensors stay with their chunks (ch.payloads)
        self.upload = dataclasses.replace(up, payload=Payload({}, torch.cat(nbytes)), carries_gradient=torch.cat(carries),
                                          sends=torch.cat(sends), compute_factor=None)
        self.state = ch.state
        return self._planned(t, act.tolist(), sizes)

    def _planned(self, t: int, active: list[bool], sizes: list[list[int]]) -> dict:
        world = self.world
        step_s = straggler_times(world, self.streams, t)
        if self.upload.compute_factor is not None:      # auxiliary gradients, or nothing computed
            step_s = [s * f for s, f in zip(step_s, self.upload.compute_factor.tolist())]
        sending = active if self.upload.sends is None else \
            [a and bool(b) for a, b in zip(active, self.upload.sends.tolist())]
        return {"sizes": sizes, "sending": sending,
                "carries": [bool(c) for c in self.upload.carries_gradient.tolist()], "step_s": step_s}

    def second_round(self, t: int, arrived: list[bool]) -> list[int] | None:
        ask, self.state = self.alg.second_round(self.state, torch.tensor(arrived, dtype=torch.bool), t)
        return None if ask is None else [int(ask[0]), int(ask[1])]

    def update(self, t: int, arrived: list[bool], late: list[bool] | None = None) -> dict:
        arr = torch.tensor(arrived, dtype=torch.bool)
        kw = {} if late is None else {"late": torch.tensor(late, dtype=torch.bool)}
        if self.chunked is not None:                      # the mean folded chunk by chunk (sim/learn/chunked.py)
            self.theta, down = self.chunked.aggregate(self.theta, arr, t)
            self.state = self.chunked.state
        else:
            self.theta, down, self.state = self.alg.server_update(self.state, self.theta, self.upload, arr, t, **kw)
        self.buffers = merge_buffers(self.buffers, self.new_buffers, arr)
        bounds = getattr(self.proto, "bounds", [(0, self.world.model.d)])
        out = {"down": [int(b) for b in down.slice_bytes(bounds, update_bytes)],
               "finite": bool(torch.isfinite(self.theta).all())}
        if hasattr(self.alg, "diagnostics"):          # read-only: the math is already done
            out["diag"] = {k: float(v) for k, v in self.alg.diagnostics(self.state).items()}
        if late is not None:                           # late: apply, how many stale uploads joined this round
            out["diag"] = {**out.get("diag", {}), "late_applied": float(sum(late))}
        return out

    def stats(self) -> dict:
        alg, d = self.alg, self.world.model.d
        return {"skipped_fraction": alg.skipped_fraction(self.state) if hasattr(alg, "skipped_fraction") else 0.0,
                "server_state_bytes": alg.server_state_bytes(self.state) if hasattr(alg, "server_state_bytes") else 0,
                "compression_rate": alg.compression_rate(d) if hasattr(alg, "compression_rate") else ""}


def grads_at(world: World, grad_fn: GradFn, streams: WorkerStreams, thetas: torch.Tensor,
             workers: torch.Tensor, rounds: torch.Tensor, h: int = 0) -> torch.Tensor:
    """Gradients of rows of (worker, round, local step h) at their own parameters,
    thetas [m, d] -> [m, d], one batched call.  The minibatch and dropout keys:
    h = 0 draws what round ``rounds[r]`` of the synchronous engine draws
    (TAG_BATCH, the round); h >= 1 draws (TAG_LOCAL, the round, h).  The
    synchronous local steps (LocalSteps) and the event-driven jobs
    (sim/eventsim.py) share these keys, which is what makes FedBuff with
    K = C = n equal FedAvg."""
    b = world.scenario.batch_size
    tag, sub = (TAG_BATCH, None) if h == 0 else (TAG_LOCAL, h)
    local = streams.randint_at(tag, workers, rounds, world.shards.size[workers], b, sub=sub)   # [m, b]
    idx = torch.gather(world.shards.index[workers], 1, local)
    masks = masks_at(world.model, streams, workers, rounds, b, sub=sub, tag_offset=0 if h == 0 else TAG_LOCAL)
    return grad_fn.at(thetas, world.x_train[idx], world.y_train[idx], masks)


class LocalSteps:
    """What an algorithm with local steps (algorithms/federated.py) needs in
    round t: the round's parameters and, for local step h >= 1, the gradients
    of some workers at their own parameters on their minibatch (t, h), drawn
    from each worker's stream (tag TAG_LOCAL, keyed by round and step): one
    batched call per step."""

    def __init__(self, trainer: "Trainer", t: int) -> None:
        self.trainer, self.t = trainer, t
        self.theta = trainer.theta                                         # [d]

    def grad(self, h: int, thetas: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """thetas [m, d] of workers ``rows`` [m] -> gradients [m, d] (h >= 1)."""
        tr = self.trainer
        return grads_at(tr.world, tr.grad_fn, tr.streams, thetas, rows, torch.full_like(rows, self.t), h)


def make_protocol(scn: Scenario, env: simpy.Environment, net: Network, d: int, summable: bool):
    n, header, topo = scn.workers, scn.network.header_bytes, scn.network.topology
    if topo.collective == "ring":
        return Ring(env, net, n, d, header, summable)
    return ParameterServer(env, net, n, topo.server_names(), d, header, failures_of(scn))


def run_algorithm(world: World, cfg: algorithms.AlgorithmConfig,
                  on_row: Callable[[dict], None] = lambda row: None,
                  on_round: Callable[[int, float], None] = lambda r, t: None,
                  on_phase: Callable[[dict], None] = lambda row: None,
                  record=None, on_diag: Callable[[dict], None] = lambda row: None,
                  on_update: Callable[[dict], None] = lambda row: None) -> RunResult:
    """Train one algorithm in ``world`` until a stop rule fires.

    ``on_row`` gets every evaluation row as soon as it exists (the caller
    appends it to metrics.csv); ``on_phase`` gets each round's time breakdown;
    ``on_diag`` each round's diagnostics rows (diagnostics.csv); ``on_update``
    each applied gradient of an event-driven algorithm (updates.csv);
    ``on_round(round, sim_time_s)`` drives progress.  ``record``: a callable
    wrapping the trainer (``sim.study.trace.Recorder``) to write the run's trace.
    """
    comp = world.scenario.compute
    if (getattr(cfg, "decentralized", False) or getattr(cfg, "event_driven", False)) and \
            (comp.memory_budget is not None or comp.state_dtype != "float32" or comp.state_store != "auto"):
        raise ConfigError(f"algorithm {cfg.label!r} runs on the {'gossip' if getattr(cfg, 'decentralized', False) else 'event-driven'} "
                          "engine, which does not process workers in chunks; compute.memory_budget, "
                          "compute.state_dtype and compute.state_store apply to the synchronous round only; "
                          "allowed: leave them unset (state_dtype: float32, state_store: auto) for this algorithm",
                          field="compute.memory_budget")
    if getattr(cfg, "decentralized", False):         # gossip over a communication graph: sim/gossip.py
        from sim.gossip import run_gossip
        return run_gossip(world, cfg, on_row=on_row, on_round=on_round, on_phase=on_phase, on_update=on_update)
    if getattr(cfg, "event_driven", False):          # timing decides the math: sim/eventsim.py
        from sim.eventsim import run_event_driven
        return run_event_driven(world, cfg, on_row=on_row, on_round=on_round, on_update=on_update)
    env = simpy.Environment()
    net = Network(env, world.graph, world.scenario.network.sharing)
    trainer = source = Trainer(world, cfg)
    try:
        proto = source.proto = make_protocol(world.scenario, env, net, world.model.d, source.summable)
        if record is not None:
            source = record(source)
        return simulate(world.scenario, env, net, proto, source, cfg.label, world.seed, world.model.d,
                        on_row, on_round, on_phase, on_diag, wait_for=cfg.wait_for, keep_late=cfg.late == "apply")
    finally:
        if trainer.chunked is not None:     # a disk store's folder goes now, not when the trainer is collected
            trainer.chunked.close()


def simulate(scn: Scenario, env: simpy.Environment, net: Network, proto, source, label: str, seed: int,
             d: int, on_row: Callable[[dict], None] = lambda row: None,
             on_round: Callable[[int, float], None] = lambda r, t: None,
             on_phase: Callable[[dict], None] = lambda row: None,
             on_diag: Callable[[dict], None] = lambda row: None, wait_for: int | None = None,
             keep_late: bool = False) -> RunResult:
    """The SimPy side of a run: rounds, evaluations and stop rules, asking
    ``source`` (a :class:`Trainer`, or a replayed trace) for the math.

        worker i:  wait for round t's broadcast -> compute (step_s[i]) -> upload
        server:    wait for every upload -> aggregate and update -> broadcast
    """
    if isinstance(proto, Ring) and source.has_second_round and not source.summable:
        raise ConfigError(f"{label}: a second round of messages on a ring needs messages that can be summed; "
                          "allowed topologies: star, hierarchical, graph", field="network.topology")
    result = RunResult(label, seed, model_params=d)
    c = Counters()
    stop = scn.stop

    def record() -> dict:
        ev = source.evaluate(c.round)
        row = {"algorithm": label, "seed": seed, "round": c.round, "sim_time_s": env.now,
               "uploads": c.uploads, "bytes_up": c.bytes_up, "bytes_down": c.bytes_down, **ev}
        result.rows.append(row)
        on_row(row)
        return row

    def server():
        record()
        empty = 0
        while True:
            t = c.round
            active = proto.begin(t)                                      # [n] who takes part
            if not any(active):       # every worker is down (parameter server only: a ring has no failures)
                if (yield from proto.wait_for_rejoin()):
                    continue
                result.stalled = (f"at simulated time {env.now:.6g} s, round {t + 1}: every worker is down "
                                  "and none rejoins (failures)")
                record()
                return
            plan = source.plan(t, active)                                # the math of round t, batched
            if plan is None:                                             # diverged (docs/model.md)
                result.diverged = True
                result.diverged_why = (f"diverged in round {t + 1}: a minibatch loss is not finite or the mean "
                                       f"is above stop.divergence_factor = {stop.divergence_factor:g} times "
                                       "its round-0 value")
                record()
                return
            timing = yield from proto.round(t, plan["sizes"], plan["sending"], plan["step_s"],
                                            scn.round_timeout, carries=plan["carries"], wait_for=wait_for,
                                            keep_late=keep_late)
            arrived = timing.arrived
            c.round += 1
            c.uploads += timing.uploads
            c.bytes_up += timing.bytes_up
            expected = any(plan["sending"])
            finite = True
            if any(arrived) or (not expected and source.updates_without_uploads):
                empty = 0
                if source.has_second_round:     # sketched methods: candidates, then exact values
                    ask = source.second_round(t, arrived)
                    if ask is not None:
                        t0 = env.now
                        ex = yield from proto.exchange(t, ask[0], ask[1], arrived)
                        c.uploads += ex["messages_up"]
                        c.bytes_up += ex["bytes_up"]
                        timing.phase["exchange_s"] = env.now - t0
                        timing.phase["end_s"] = env.now
                upd = source.update(t, arrived) if timing.late is None else source.update(t, arrived, timing.late)
                finite = upd["finite"]
                for quantity, value in upd.get("diag", {}).items():
                    on_diag({"algorithm": label, "seed": seed, "round": t, "quantity": quantity, "value": value})
                proto.finish(t, upd["down"])
            else:
                empty += 1 if expected else 0
                proto.finish(t, None)     # nothing to apply: a header-only "no update"
            c.bytes_down = proto.bytes_down
            on_phase({"algorithm": label, "seed": seed, "round": t, **timing.phase, "arrived": sum(arrived)})
            on_round(c.round, env.now)
            if not finite:
                result.diverged = True
                result.diverged_why = f"diverged in round {t + 1}: a parameter is not finite after the update"
                record()
                return
            if empty >= MAX_EMPTY_ROUNDS:
                rounds = f"rounds {t - MAX_EMPTY_ROUNDS + 2}..{t + 1}"
                why = timeout_explanation(scn, net, proto, plan) if scn.round_timeout is not None else ""
                result.stalled = (f"no upload arrived in {MAX_EMPTY_ROUNDS} consecutive rounds ({rounds}): "
                                  + (why or "workers crashed or links down"))
                record()
                return
            last = c.round >= stop.max_rounds or (stop.max_sim_time is not None and env.now >= stop.max_sim_time)
            if c.round % scn.eval_every == 0 or last:
                row = record()
                if not (math.isfinite(row["train_loss"]) and math.isfinite(row["test_loss"])):
                    result.diverged = True
                    result.diverged_why = f"diverged by round {c.round}: the evaluated loss is not finite"
                    return
                if stop.on_target and row["test_acc"] >= stop.target_accuracy:
                    return
            if last:
                return

    if not run_until(env, env.process(server())):
        result.stalled = (f"at simulated time {env.now:.6g} s, round {c.round + 1}: no message can ever "
                          f"be delivered (a link down for good, or every worker crashed) and no "
                          f"round_timeout is set")
        record()
    result.links = link_rows(net, label, seed, env.now)
    stats = source.stats()
    result.skipped_fraction = stats["skipped_fraction"]
    result.server_state_bytes = stats["server_state_bytes"]
    result.compression_rate = stats["compression_rate"]
    return result


def version_stop(stop, m: int, every: int, last_m: int, now_s: float, record: Callable[[], dict],
                 version: int) -> str | None:
    """The stop rules of an event-driven run after its m-th processed message
    (sim/eventsim.py, sim/gossip.py ad_psgd): evaluate every ``every`` messages
    and at the last one (``last_m`` messages, or stop.max_sim_time).  None: go
    on; "": stop (target reached, or the last message); else why it diverged."""
    last = m >= last_m or (stop.max_sim_time is not None and now_s >= stop.max_sim_time)
    if m % every == 0 or last:
        row = record()
        if not (math.isfinite(row["train_loss"]) and math.isfinite(row["test_loss"])):
            return f"diverged by version {version}: the evaluated loss is not finite"
        if stop.on_target and row["test_acc"] >= stop.target_accuracy:
            return ""
    return "" if last else None


def drive(env: simpy.Environment, done: simpy.Event, net: Network, result: RunResult,
          record: Callable[[], dict], where: Callable[[], str]) -> None:
    """Run an event-driven simulation until ``done``; when no event is left before that, the
    run is stalled ("at simulated time T s, <where()>: ...") and a last row recorded.  Then
    the per-link accounting."""
    if not run_until(env, done):
        result.stalled = f"at simulated time {env.now:.6g} s, {where()}: no message can ever be delivered"
        record()
    result.links = link_rows(net, result.algorithm, result.seed, env.now)


def run_until(env: simpy.Environment, until) -> bool:
    """Run the simulation until ``until`` fires; False when no event is left
    before that (nothing can ever be delivered: the run is stalled)."""
    try:
        env.run(until=until)
    except RuntimeError as exc:
        if "No scheduled events left" not in str(exc):
            raise
        return False
    return True


def _lone_transfer_s(net: Network, src: str, dst: str, nbytes: int) -> tuple[float, float]:
    """(seconds, path latency) for one message alone on its path:
    latency + 8 * bytes / bottleneck (sim/net/network.py's closed form)."""
    path = net.route(src, dst)
    lat = sum(link.latency_s for link in path)
    bw = min(link.bandwidth_bps for link in path)
    return lat + (8 * nbytes / bw if bw > 0 else math.inf), lat


def _seconds(v: float) -> str:
    """A duration with 4 significant digits in s, ms, us or ns."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(v) >= scale:
            return f"{v / scale:.4g} {unit}"
    return f"{v / 1e-9:.4g} ns" if v else "0 s"


def timeout_explanation(scn: Scenario, net: Network, proto, plan: dict) -> str:
    """Why round_timeout let no upload in: the quickest worker's compute time and
    transfer times (each message alone on its links, so a lower bound) against
    the timeout, which counts from the server's broadcast."""
    timeout = scn.round_timeout
    header = scn.network.header_bytes
    servers = getattr(proto, "servers", None)
    if not servers or plan is None:
        return ""
    best = None
    for i, sending in enumerate(plan["sending"]):
        if not sending:
            continue
        w = f"w{i}"
        down = max(_lone_transfer_s(net, s, w, header)[1] for s in servers)     # at least the path latency
        ups = [_lone_transfer_s(net, w, s, plan["sizes"][i][j] + header) for j, s in enumerate(servers)]
        up = max(u[0] for u in ups)
        total = down + plan["step_s"][i] + up
        if best is None or total < best[0]:
            best = (total, w, down, plan["step_s"][i], up, sum(plan["sizes"][i]) + header * len(servers))
    if best is None:
        return ""
    total, w, down, comp, up, nbytes = best
    t = _seconds
    if total > timeout:
        return (f"round_timeout = {t(timeout)} is shorter than any worker's round: the quickest, {w}, "
                f"needs at least {t(total)} after the broadcast (download latency {t(down)} + compute {t(comp)} "
                f"+ upload {t(up)} for {nbytes:,} bytes, alone on its links); allowed: a round_timeout above that")
    return (f"round_timeout = {t(timeout)}: alone on its links the quickest worker, {w}, would need "
            f"{t(total)} (download latency {t(down)} + compute {t(comp)} + upload {t(up)}), so the uploads were "
            "late because the workers share links (contention) or links were down")


def link_rows(net: Network, label: str, seed: int, end_s: float) -> list[dict]:
    """Per-link accounting for links.csv."""
    rows = []
    for (u, v), link in net.links.items():
        if link.active:   # still busy at the end of the run: close the interval
            link.busy_s += end_s - link._busy_since
            link._busy_since = end_s
        rows.append({"algorithm": label, "seed": seed, "link": link.name, "src": u, "dst": v,
                     "bandwidth_bps": net.graph.edges[u, v]["bandwidth_bps"],
                     "latency_s": link.latency_s, "messages": link.messages,
                     "bytes_carried": int(link.bytes_carried), "busy_s": link.busy_s,
                     "utilization": link.busy_s / end_s if end_s > 0 else 0.0})
    return rows


def summarize(result: RunResult, target: float) -> dict:
    """One summary row: first evaluation at or above the target accuracy."""
    rows = result.rows
    hit = next((r for r in rows if r["test_acc"] >= target), None)
    last = rows[-1] if rows else {}
    return {
        "algorithm": result.algorithm, "seed": result.seed, "model_params": result.model_params,
        "target_acc": target, "reached": hit is not None,
        "time_to_target_s": hit["sim_time_s"] if hit else "",
        "rounds_to_target": hit["round"] if hit else "",
        "uploads_to_target": hit["uploads"] if hit else "",
        "bytes_up_to_target": hit["bytes_up"] if hit else "",
        "final_test_acc": last.get("test_acc", ""), "final_sim_time_s": last.get("sim_time_s", ""),
        "final_round": last.get("round", ""), "diverged": result.diverged,
        "skipped_fraction": result.skipped_fraction, "server_state_bytes": result.server_state_bytes,
        "compression_rate": result.compression_rate, "spectral_gap": result.spectral_gap,
        "status": "diverged" if result.diverged else ("stalled" if result.stalled else "done"),
    }
