"""Decentralized training on the simulated network: gossip rounds and asynchronous gossip.

The algorithms' math is in algorithms/gossip.py; this module moves their
messages.  There is no server: every logical edge i -> j of the
communication graph is a message from node ``w{i}`` to ``w{j}`` on the
physical network's route between them (``network.topology``: through a
switch on a star, over the rack uplinks and the core on a hierarchical
network), sharing links with every other flow (max-min fair or FIFO,
sim/net/network.py).  ``links.csv`` shows which physical links the graph loads.

Synchronous forms (``dpsgd``, ``choco_sgd``, ``sgp``), per worker i and round t:

    compute H local steps (H x its step time, stragglers included)
    -> send its round-t message to each out-neighbour (all at once)
    -> wait until those are delivered and every in-neighbour's round-t message has arrived
    -> round t + 1

There is no global barrier: a worker waits only for its neighbours, so a
straggler delays its neighbours at once and the rest of the graph one hop
per round.  The math does not depend on timing (round t's result is a
function of round t - 1's), so it is computed for all n workers at once
(batched, one sparse matmul for the mixing) when the first worker starts
round t.

Rows.  ``round`` r = the rounds every worker has completed; its
``sim_time_s`` is when the last worker completed round r - 1, and
``uploads`` / ``bytes_up`` count the messages of rounds < r (every gossip
message is a worker's upload; ``bytes_down`` is 0, there is no server).
``test_acc`` (and the losses) are the averaged model's; ``worker_acc_mean``
and ``worker_acc_min`` the test accuracy of the workers' own models, and
``consensus_distance`` (1/n) sum_i ||z_i - z_bar||^2 with z_bar the mean of
the workers' models (in float64).  ``stop.max_sim_time``: a round that would start at or after it (for
its first worker) is not started, so the last row is the state every worker
holds; ``stop.max_rounds`` and ``stop.on_target`` as for every algorithm.
The summary gives the mixing matrix's spectral gap.

``ad_psgd`` (:func:`run_ad_psgd`) is event-driven: the averaging partner and
the moment of each average depend on timing.  A worker computes a gradient
at a snapshot of its model (lazily, in batches: sim/eventsim.py LazyGrads),
then asks for the pair (itself, a neighbour drawn from its own stream); a
pair is granted when neither worker is in another average (requests in
arrival order; the locking itself costs no messages -- a simplification:
Lian et al. avoid deadlock with a bipartite active/passive split), then the
two models cross the network (4 d each way, at once), both rows become
their mean, the worker applies its gradient and the pair is released.
Rows are keyed by version (gradients applied), every ``eval_every`` n of
them, as for the asynchronous algorithms.

Not modelled (refused with a message before anything is written):
failures, round_timeout, BatchNorm models.  Gossip writes no trace.jsonl
(replay refuses these algorithms, saying so).
"""
from __future__ import annotations

import math
from typing import Callable

import networkx as nx
import numpy as np
import simpy
import torch

from algorithms.base import Context

from sim.engine import RunResult, World, drive, evaluate, grads_at, straggler_times, version_stop
from sim.errors import ConfigError
from sim.learn.grads import GradFn
from sim.learn.rng import WorkerStreams
from sim.net.network import Network
from sim.net.wire import Message

WORKER_EVAL_CHUNK = 512     # test samples per batched forward over all n workers' models


def refusal(scn, cfg) -> str | None:  # also called by sim/study/config.py, so bad input is refused up front
    """Why a decentralized algorithm cannot run this scenario yet, or None."""
    if scn.failures:
        return f"{cfg.label}: failures are not modelled for decentralized algorithms yet"
    if scn.round_timeout is not None:
        return f"{cfg.label}: round_timeout has no meaning for gossip (a worker waits only for its neighbours)"
    return None


def context_of(world: World) -> Context:
    return Context(d=world.model.d, n=world.n, blocks=world.model.blocks, device=world.device,
                   shard_sizes=tuple(int(x) for x in world.shards.size.tolist()), seed=world.seed)


def build(world: World, cfg):
    """The algorithm, with the scenario's problems (a disconnected graph, a
    worker pair with no physical route) as ConfigErrors naming the field."""
    scn = world.scenario
    why = refusal(scn, cfg)
    if why:
        raise ConfigError(why, field="algorithms")
    if world.model.has_buffers:
        raise ConfigError(f"{cfg.label}: decentralized algorithms do not support BatchNorm models yet "
                          "(every worker would need its own running statistics)", field="model.kind")
    try:
        return cfg.build(context_of(world))
    except ValueError as exc:      # topologies.gossip.GraphError: disconnected, wrong size, bad file
        raise ConfigError(f"{cfg.label}: {exc}", field="algorithms.graph") from None


def stopper(result: RunResult, done: simpy.Event) -> Callable[[str], None]:
    """finish(why_diverged="") ends the run (``done`` fires once), marking it diverged when given why."""
    def finish(why_diverged: str = "") -> None:
        if why_diverged:
            result.diverged, result.diverged_why = True, why_diverged
        if not done.triggered:
            done.succeed()
    return finish


def setup(world: World, cfg, sends=lambda alg: alg.sends):
    """What both gossip engines start from: the algorithm, the SimPy environment, the network
    (every graph edge checked for a physical route), the workers' streams and the result."""
    alg = build(world, cfg)
    env = simpy.Environment()
    net = Network(env, world.graph, world.scenario.network.sharing)
    check_routes(net, sends(alg), cfg.label)
    result = RunResult(cfg.label, world.seed, model_params=world.model.d)
    result.spectral_gap = alg.gap
    return alg, env, net, WorkerStreams(world.seed, world.n, world.device), result


def check_routes(net: Network, sends, label: str) -> None:
    for i, out in enumerate(sends):
        for j in out:
            try:
                net.route(f"w{i}", f"w{j}")
            except nx.NetworkXNoPath:
                raise ConfigError(f"{label}: the communication graph has an edge w{i} -> w{j} but the physical "
                                  "network has no route between them", field="network.topology") from None


@torch.no_grad()
def measure(world: World, alg, state) -> dict:
    """The evaluation columns of a decentralized state (see the module docstring)."""
    avg = alg.average(state)                                          # [d]
    ev = evaluate(world, avg)
    models = alg.models(state)                                        # [n, d]
    forward = torch.func.vmap(world.model.forward, in_dims=(0, None))
    correct = torch.zeros(models.shape[0], dtype=torch.int64, device=models.device)
    x, y = world.x_test, world.y_test
    for s in range(0, len(y), WORKER_EVAL_CHUNK):
        logits = forward(models, x[s:s + WORKER_EVAL_CHUNK])        # [n, b, C]
        correct += (logits.argmax(2) == y[s:s + WORKER_EVAL_CHUNK]).sum(1)
    acc = correct.double() / len(y)
    z = models.double()                                               # float64: exactly 0 for equal rows
    dist = float(((z - z.mean(0)) ** 2).sum(1).mean())
    return {**ev, "worker_acc_mean": float(acc.mean()), "worker_acc_min": float(acc.min()),
            "consensus_distance": dist}


def run_gossip(world: World, cfg, on_row: Callable[[dict], None] = lambda row: None,
               on_round: Callable[[int, float], None] = lambda r, t: None,
               on_phase: Callable[[dict], None] = lambda row: None,
               on_update: Callable[[dict], None] = lambda row: None) -> RunResult:
    """Train one decentralized algorithm in ``world`` until a stop rule fires."""
    if not cfg.timing_independent:                   # ad_psgd
        return run_ad_psgd(world, cfg, on_row=on_row, on_round=on_round, on_update=on_update)
    scn, n, dev = world.scenario, world.n, world.device
    alg, env, net, streams, result = setup(world, cfg)
    header, stop = scn.network.header_bytes, scn.stop
    grad_fn = GradFn(world.model, scn.gradients)
    receives: list[list[int]] = [[] for _ in range(n)]           # receives[i]: who sends to i, ascending
    for k, out in enumerate(alg.sends):
        for j in out:
            receives[j].append(k)
    everyone = torch.arange(n, device=dev)
    m = {"state": alg.init(world.model.init_params(world.seed, dev)), "round": 0}  # state = X^round
    payload: dict[int, list[int]] = {}            # round -> [n] payload bytes of each worker's message
    step_s: dict[int, list[float]] = {}           # round -> [n] compute seconds (H steps)
    evals: dict[int, dict] = {}                   # round r -> the evaluation of X^r, taken before it moved on
    opened: dict[int, bool] = {}                  # round -> started (True) or closed by max_sim_time (False)
    done_by: dict[int, list[float]] = {}          # round -> completion times of the workers
    started: dict[int, list[float]] = {}
    sent = {"messages": [], "bytes": []}          # per round: messages and bytes (headers included)
    boxes: dict[tuple[int, int, int], simpy.Event] = {}
    done = env.event()
    finish = stopper(result, done)

    def is_eval(r: int) -> bool:
        return r % scn.eval_every == 0 or r >= stop.max_rounds

    def advance(t: int) -> bool:
        """Compute the math of rounds up to t (X^t -> X^(t+1)); False when it diverged."""
        while m["round"] <= t:
            r = m["round"]
            if is_eval(r) and r not in evals and r > 0:
                evals[r] = measure(world, alg, m["state"])
            grad = lambda h, thetas, r=r: grads_at(world, grad_fn, streams, thetas, everyone,   # noqa: E731
                                                   torch.full_like(everyone, r), h)
            m["state"], payload[r] = alg.round(m["state"], r, grad, streams)
            step_s[r] = [s * alg.steps for s in straggler_times(world, streams, r)]
            m["round"] = r + 1
            if not math.isfinite(float(m["state"].x.sum())):   # one pass over [n, d]; a sum of finite
                return False                                       # values overflows only far past divergence
        return True

    def row(r: int) -> dict:
        ev = evals.pop(r, None) or measure(world, alg, m["state"])
        msgs, nbytes = sum(sent["messages"][:r]), sum(sent["bytes"][:r])
        out = {"algorithm": cfg.label, "seed": world.seed, "round": r, "sim_time_s": env.now,
               "uploads": msgs, "bytes_up": nbytes, "bytes_down": 0, **ev}
        result.rows.append(out)
        on_row(out)
        return out

    def decide(t: int) -> bool:
        """Is round t run?  Its first worker decides, for all (stop.max_sim_time)."""
        if t not in opened:
            opened[t] = t < stop.max_rounds and not (stop.max_sim_time is not None and env.now >= stop.max_sim_time)
        return opened[t]

    def box(t: int, src: int, dst: int) -> simpy.Event:
        key = (t, src, dst)
        if key not in boxes:
            boxes[key] = env.event()
        return boxes[key]

    def completed(i: int, t: int) -> None:
        done_by.setdefault(t, []).append(env.now)
        if len(done_by[t]) < n:
            return
        r = t + 1
        on_phase({"algorithm": cfg.label, "seed": world.seed, "round": t, "start_s": min(started[t]),
                  "end_s": env.now, "compute_s": max(step_s[t]), "arrived": n})
        on_round(r, env.now)
        last = not decide(r)
        if is_eval(r) or last:
            out = row(r)
            if not (math.isfinite(out["train_loss"]) and math.isfinite(out["test_loss"])):
                return finish(f"diverged by round {r}: the evaluated loss is not finite")
            if stop.on_target and out["test_acc"] >= stop.target_accuracy:
                return finish()
        if last:
            finish()

    def deliver(t: int, i: int, j: int, msg: Message) -> None:
        sent["messages"][t] += 1
        sent["bytes"][t] += msg.nbytes
        box(t, i, j).succeed()

    def worker(i: int):
        t = 0
        while not done.triggered and decide(t):
            if t not in started:
                started[t] = []
                sent["messages"].append(0)
                sent["bytes"].append(0)
            if not advance(t):
                row(t + 1)
                return finish(f"diverged in round {t + 1}: a parameter is not finite after the update")
            started[t].append(env.now)
            yield env.timeout(step_s[t][i])
            waits = []
            for j in alg.sends[i]:
                msg = Message(f"w{i}", f"w{j}", "gossip", t, payload[t][i], header)
                ev = net.send(msg)
                ev.callbacks.append(lambda _e, t=t, j=j, msg=msg: deliver(t, i, j, msg))
                waits.append(ev)
            waits += [box(t, k, i) for k in receives[i]]
            yield env.all_of(waits)
            completed(i, t)
            t += 1

    row(0)
    for i in range(n):
        env.process(worker(i))
    def stall_row() -> None:
        """The last row of a stalled run: the rounds every worker completed, when the state is
        still theirs (a worker ahead may have moved it on: then the last row written stands)."""
        r = sum(1 for t in done_by if len(done_by[t]) == n)
        if m["round"] == r and result.rows[-1]["round"] != r:
            row(r)

    drive(env, done, net, result, stall_row, lambda: f"round {sum(len(v) == n for v in done_by.values()) + 1}")
    return result


def run_ad_psgd(world: World, cfg, on_row: Callable[[dict], None] = lambda row: None,
                on_round: Callable[[int, float], None] = lambda r, t: None,
                on_update: Callable[[dict], None] = lambda row: None, eager: bool = False,
                zero_gradients: bool = False, x0: torch.Tensor | None = None,
                state_out: dict | None = None) -> RunResult:
    """AD-PSGD on the network (see the module docstring).  ``eager``: evaluate
    every gradient alone as it is fixed (the one-at-a-time reference).  For
    tests: ``zero_gradients`` applies none, ``x0`` [n, d] replaces the common
    start, ``state_out["x"]`` receives the final models."""
    from sim.eventsim import LazyGrads, Job   # noqa: PLC0415 (sim.eventsim imports sim.engine too)

    scn, n, dev = world.scenario, world.n, world.device
    alg, env, net, streams, result = setup(world, cfg, sends=lambda alg: alg.neighbours)
    header, stop = scn.network.header_bytes, scn.stop
    H = alg.steps
    # H = 1: the message is the gradient at the snapshot; H > 1: Delta of H local steps with lr_j
    lazy = LazyGrads(world, GradFn(world.model, scn.gradients), streams, 0 if H == 1 else H,
                     alg.lr if H > 1 else None, eager=eager)
    state = alg.init(world.model.init_params(world.seed, dev))
    if x0 is not None:
        state = type(state)(x0.clone())
    x = state.x                                                          # [n, d], rows updated in place
    s = {"version": 0, "uploads": 0, "bytes": 0}
    busy = [False] * n
    queue: list[tuple[int, int, simpy.Event]] = []
    picks = [np.random.default_rng([world.seed, 0xAD, i]) for i in range(n)]   # each worker's partner draws
    steps: dict[int, list[float]] = {}
    every, last_version = scn.eval_every * n, stop.max_rounds * n
    done = env.event()
    finish = stopper(result, done)

    def step_s(i: int, j: int) -> float:
        if j not in steps:
            steps[j] = straggler_times(world, streams, j)
        return steps[j][i] * H

    def record() -> dict:
        out = {"algorithm": cfg.label, "seed": world.seed, "round": s["version"], "sim_time_s": env.now,
               "uploads": s["uploads"], "bytes_up": s["bytes"], "bytes_down": 0, **measure(world, alg, state)}
        result.rows.append(out)
        on_row(out)
        return out

    def grant() -> None:
        for item in list(queue):
            i, k, ev = item
            if not busy[i] and not busy[k]:
                busy[i] = busy[k] = True
                queue.remove(item)
                ev.succeed()

    def worker(i: int):
        j = 0
        nb = alg.neighbours[i]
        while not done.triggered:
            job = Job(i, j, s["version"], x[i].clone(), compute_start_s=env.now)
            lazy.add(job)
            yield env.timeout(step_s(i, j))
            k = nb[int(picks[i].integers(len(nb)))]
            ev = env.event()
            queue.append((i, k, ev))
            grant()
            yield ev
            job.upload_start_s = env.now
            msgs = [Message(f"w{i}", f"w{k}", "params", j, alg.exchange_bytes, header),
                    Message(f"w{k}", f"w{i}", "params", j, alg.exchange_bytes, header)]
            yield env.all_of([net.send(msg) for msg in msgs])
            if done.triggered:
                return
            s["uploads"] += 2
            s["bytes"] += sum(msg.nbytes for msg in msgs)
            alg.pair_average(x, i, k)                                    # x_i, x_k <- (x_i + x_k) / 2
            message = lazy.get(job)
            lr = alg.lr(j)
            if not zero_gradients:
                if H == 1:
                    x[i] -= lr * message                                 # x_i <- x_i - lr g
                else:
                    x[i] -= message                                      # Delta of H local steps
            busy[i] = busy[k] = False
            grant()
            s["version"] += 1
            v = s["version"]
            on_update({"algorithm": cfg.label, "seed": world.seed, "version": v, "sim_time_s": env.now,
                       "worker": i, "computed_at": job.version, "staleness": v - 1 - job.version,
                       "step_size": 0.0 if zero_gradients else lr, "params_sent_s": job.compute_start_s,
                       "compute_start_s": job.compute_start_s, "upload_start_s": job.upload_start_s})
            on_round(v // n, env.now)
            if v % n == 0 and not bool(torch.isfinite(x).all()):
                record()
                return finish(f"diverged at version {v}: a parameter is not finite after the update")
            verdict = version_stop(stop, v, every, last_version, env.now, record, v)
            if verdict is not None:
                return finish(verdict)
            j += 1

    record()
    for i in range(n):
        env.process(worker(i))
    drive(env, done, net, result, record, lambda: f"version {s['version']}")
    result.mean_batch = lazy.mean_batch
    if state_out is not None:
        state_out["x"] = x
    return result
