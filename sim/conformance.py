"""The conformance suite: what every registered entry must do.

The same functions back the tests (tests/test_compressors.py,
tests/test_algorithms.py run them over every built-in) and ``run_sim.py check
PLUGIN`` (:func:`check_plugin`, over what a plugin registered), so the two
cannot drift.  Each check raises ``AssertionError`` with what was wrong (or
whatever the code under test raised); :func:`check_plugin` turns that into one
``FAIL`` line per check, never a traceback.

Checks, per registry:

* compressor: ``schema`` (its config is strict and validates as a scenario
  entry), ``shapes`` (decoded [n, d] of the input's dtype, ``nbytes`` an int64
  [n], a zero input decodes finite), ``bytes`` (``nbytes`` equals the stated
  formula), ``determinism`` (same streams and round twice: identical tensors;
  the global RNG untouched), ``error feedback`` (``D(sent) + e' == x + e``
  every round), ``linear`` (only for linear ones: payloads sum in compressed
  form), ``short scenario`` (COMP-AMS with it, 6 rounds of scenarios/tiny.yaml);
* algorithm: ``schema``, ``shapes``, ``bytes`` (when it states a formula),
  ``determinism``, ``convex loss`` (halves a least-squares loss: f_i(theta) =
  0.5 ||A_i theta - b_i||^2 / m, convex), ``short scenario``;
* skip rule (through the algorithm kind ``lazy`` around dense SGD): ``schema``,
  ``interface`` (``needs_aux_gradient`` and ``server_decides`` bools, ``init``,
  ``decide``, ``after_step``), ``invariants`` (40 rounds of the least-squares
  task with max_delay 5: every worker uploads in round 0, a skipping worker
  sends no payload and the server reuses its stored message bit for bit, no
  worker waits longer than max_delay, the skipped fraction is the count of
  skips over the worker-rounds and in [0, 1], and a rule that calls
  ``aux_grad`` declares ``needs_aux_gradient``, so its compute is charged),
  ``determinism``, ``convex loss``, ``short scenario``;
* model, dataset, partition, topology, compute model, learning-rate schedule:
  ``schema`` (config classes), ``shapes`` and ``determinism`` where they have
  outputs of their own (models, data sets, partitions), ``short scenario``.

What a plugin states for its checks (docs/plugins.md): a class attribute (or,
for a data set or partition function, a function attribute)
``conformance_example`` with the settings to check it with (default: none; an
algorithm ``{"lr": 0.1}``); a compressor config's method
``expected_bytes(ctx, x, decoded) -> int | list[int]`` (the wire formula per
worker message), an algorithm config's optional ``expected_bytes(ctx) ->
(up, down)`` for its first round; ``conformance_random = True`` for a
compressor that draws from the workers' streams (then another round must draw
differently, and compressing without streams must refuse);
``uploads_per_round`` (an algorithm's messages per worker and round, default:
not checked).
"""
from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from algorithms.base import VALUE_BYTES, Context
from sim.learn.models import Block
from sim.learn.rng import WorkerStreams

N, D = 4, 103
TINY = Path(__file__).resolve().parents[1] / "scenarios" / "tiny.yaml"
SHORT_ROUNDS, SHORT_EVAL = 6, 3


def expect(ok: Any, message: str) -> None:
    """assert that also holds under ``python -O`` and always says what was wrong."""
    if not ok:
        raise AssertionError(message)


def context(n: int = N, d: int = D, blocks: tuple | None = None) -> Context:
    """n workers, d parameters in two layers (d - 3 and 3), on the CPU."""
    if blocks is None:
        blocks = (Block("w", 0, d - 3, (d - 3,)), Block("b", d - 3, d, (3,)))
    return Context(d=d, n=n, blocks=blocks, device=torch.device("cpu"))


def randn(seed: int = 0, n: int = N, d: int = D) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


# --- schema -------------------------------------------------------------------
def config_strict(union: Any, cls: type, kind: str, example: dict) -> None:
    """``{kind, **example}`` validates through the scenario's union to ``cls``;
    the class refuses an unknown key; its ``kind`` defaults to its registered name."""
    from pydantic import TypeAdapter, ValidationError
    field = cls.model_fields.get("kind")
    expect(field is not None and field.default == kind,
           f"{cls.__name__}.kind must be Literal[{kind!r}] = {kind!r} (the name it is registered under), "
           f"got {getattr(field, 'default', None)!r}")
    cfg = TypeAdapter(union).validate_python({"kind": kind, **example})
    expect(type(cfg) is cls, f"{{kind: {kind}}} validated to {type(cfg).__name__}, not {cls.__name__}")
    try:
        cls(**example, bogus=1)
    except ValidationError:
        pass
    else:
        raise AssertionError(f"{cls.__name__} accepts an unknown key (bogus=1): set model_config = "
                             "ConfigDict(extra='forbid') (the built-ins' bases do)")


# --- compressors ----------------------------------------------------------------
def compressor_shapes(comp: Any, n: int = N, d: int = D) -> None:
    expect(isinstance(comp.linear, bool), f"linear must be a bool, got {comp.linear!r}")
    inp = randn(0, n, d)
    p = comp.compress(inp, streams=WorkerStreams(0, n), round=3)
    out = comp.decompress(p)
    expect(tuple(out.shape) == tuple(inp.shape) and out.dtype == inp.dtype,
           f"decompress gave {tuple(out.shape)} {out.dtype}; allowed: the input's {tuple(inp.shape)} {inp.dtype}")
    expect(isinstance(p.nbytes, torch.Tensor) and p.nbytes.dtype == torch.int64 and tuple(p.nbytes.shape) == (n,),
           f"payload nbytes must be an int64 tensor of shape ({n},) (bytes per worker), got "
           f"{getattr(p.nbytes, 'dtype', type(p.nbytes).__name__)} {tuple(getattr(p.nbytes, 'shape', ()))}")
    zero = comp.decompress(comp.compress(torch.zeros(n, d), streams=WorkerStreams(0, n), round=0))
    expect(bool(torch.isfinite(zero).all()), "an all-zero input decodes to values that are not finite")


def compressor_bytes(comp: Any, expected: Callable[[torch.Tensor, torch.Tensor], list[int]],
                     n: int = N, d: int = D) -> None:
    """``expected(input, decoded)`` -> bytes per worker message, from the formula."""
    inp = randn(0, n, d)
    p = comp.compress(inp, streams=WorkerStreams(0, n), round=3)
    out = comp.decompress(p)
    want = [int(b) for b in expected(inp, out)]
    got = p.nbytes.tolist()
    expect(got == want, f"nbytes per worker {got}, the formula gives {want}")


def compressor_determinism(comp: Any, random: bool | None = None, n: int = N, d: int = D) -> None:
    """Same streams and round twice: identical output; the global RNG untouched.
    ``random``: it draws from the streams (another round differs, no streams refused)."""
    streams = WorkerStreams(0, n)
    inp = randn(0, n, d)
    rng_before = torch.random.get_rng_state()
    out = comp.decompress(comp.compress(inp, streams=streams, round=3))
    expect(torch.equal(torch.random.get_rng_state(), rng_before),
           "the global torch RNG was used; allowed: draws from the workers' streams only "
           "(streams.uniform / streams.bits with TAG_COMPRESS, round)")
    again = comp.decompress(comp.compress(inp.clone(), streams=WorkerStreams(0, n), round=3))
    expect(torch.equal(out, again), "the same input, streams and round gave different outputs")
    if random:
        other = comp.decompress(comp.compress(inp, streams=streams, round=4))
        expect(not torch.equal(out, other), "a random compressor drew the same at round 4 as at round 3")
        try:
            comp.compress(inp)
        except ValueError as exc:
            expect("streams" in str(exc), f"without streams it raised ValueError({exc}) not naming the streams")
        else:
            raise AssertionError("a random compressor compressed without streams (it must refuse, "
                                 "not draw from a global RNG)")


def compressor_error_feedback(comp: Any, n: int = N, d: int = D, rounds: int = 3) -> None:
    """Error feedback around it: decoded + new residual == input + old residual, every round."""
    from algorithms.compressors import ErrorFeedback
    streams = WorkerStreams(0, n)
    ef = ErrorFeedback(comp)
    e = ef.init(n, d, "cpu")
    for t in range(rounds):
        g = randn(10 + t, n, d)
        payload, decoded, e_new = ef.step(g, e, streams=streams, round=t)
        gap = float((decoded + e_new - (g + e)).abs().max())
        expect(gap <= 1e-5, f"round {t}: |D(sent) + e' - (x + e)| reaches {gap:.3g} (allowed: 1e-5)")
        # what the receiver decodes from the same payload must be what the sender accounted for
        gap = float((comp.decompress(payload) + e_new - (g + e)).abs().max())
        expect(gap <= 1e-5, f"round {t}: the payload decoded again (as the receiver does) misses x + e by "
                            f"{gap:.3g} (allowed: 1e-5): is decompress pure (no in-place change of the payload)?")
        e = e_new


def compressor_chunks(comp: Any, n: int = 20, d: int = D, cut: int = 8) -> None:
    """Row-wise: compressing workers 0..cut and cut..n separately (each with its
    streams, ``WorkerStreams.rows``) gives each worker the bytes and the decoded
    row of the n-row call, bit for bit, with both payloads held before either is
    decoded.  The chunked round of a memory budget (sim/learn/chunked.py) relies
    on it."""
    streams = WorkerStreams(5, n)
    inp = randn(7, n, d)
    whole = comp.compress(inp.clone(), streams=streams, round=2)
    parts = [comp.compress(inp[a:b].clone(), streams=streams.rows(a, b), round=2) for a, b in ((0, cut), (cut, n))]
    dec = comp.decompress(whole)
    for (a, b), p in zip(((0, cut), (cut, n)), parts):
        expect(torch.equal(p.nbytes, whole.nbytes[a:b]),
               f"workers {a}..{b} compressed alone have sizes {p.nbytes.tolist()}, in the {n}-row call "
               f"{whole.nbytes[a:b].tolist()}: a worker's message must depend on its own row only")
        got = comp.decompress(p)
        expect(torch.equal(got, dec[a:b]),
               f"workers {a}..{b} compressed alone decode differently from their rows of the {n}-row call "
               f"(largest gap {float((got - dec[a:b]).abs().max()):.3g}): a worker's message must depend on its "
               "own row and stream only")


def compressor_linear(comp: Any, n: int = N, d: int = D) -> None:
    """A linear compressor's payloads sum in compressed form (ring all-reduce)."""
    from algorithms.base import Payload
    if not comp.linear:
        return
    s = WorkerStreams(0, n)
    a, b = randn(1, n, d), randn(2, n, d)
    pa, pb = comp.compress(a, streams=s, round=5), comp.compress(b, streams=s, round=5)
    summed = {}
    for name, ta in pa.tensors.items():
        tb = pb.tensors[name]
        if ta.is_floating_point():
            summed[name] = ta + tb
        else:
            expect(torch.equal(ta, tb), f"linear, but the integer tensor {name!r} differs between two inputs")
            summed[name] = ta
    torch.testing.assert_close(comp.decompress(Payload(summed, pa.nbytes)),
                               comp.decompress(comp.compress(a + b, streams=s, round=5)))


# --- algorithms -----------------------------------------------------------------
def quadratic_problem(n: int = N, d: int = D, seed: int = 0):
    """f_i(theta) = 0.5 ||A_i theta - b_i||^2 / m: a convex synthetic task.
    Returns (grads(theta [d] or [n, d]) -> [n, d], loss(theta [d]) -> float)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, 20, d, generator=g) / math.sqrt(d)
    b = torch.randn(n, 20, generator=g)

    def grads(theta):  # [n, d]; theta [d], or [n, d] (each worker at its own parameters)
        if theta.dim() == 2:
            r = torch.einsum("nmd,nd->nm", A, theta) - b
        else:
            r = torch.einsum("nmd,d->nm", A, theta) - b
        return torch.einsum("nmd,nm->nd", A, r) / 20

    def loss(theta):
        r = torch.einsum("nmd,d->nm", A, theta) - b
        return float(0.5 * (r ** 2).sum(1).mean() / 20)

    return grads, loss


class QuadraticLocal:
    """``local`` for algorithms with local steps on the quadratic problem."""

    def __init__(self, grads, theta, n: int = N):
        self.grads, self.theta, self.n = grads, theta, n

    def grad(self, h, thetas, rows):
        full = torch.zeros(self.n, thetas.shape[1])
        full[rows] = thetas
        return self.grads(full)[rows]


def train_quadratic(cfg: Any, rounds: int = 200) -> tuple[float, float, torch.Tensor]:
    """Run ``cfg`` on the quadratic problem (N workers, D parameters); checks the
    shapes of every message on the way.  Returns (start loss, final loss, final
    theta: the averaged model for decentralized algorithms)."""
    alg = cfg.build(context())
    grads, loss = quadratic_problem()
    theta = torch.zeros(D)
    state = alg.init(theta)
    streams = WorkerStreams(0, N)
    start = loss(theta)
    arrived = torch.ones(N, dtype=torch.bool)
    if getattr(cfg, "decentralized", False):     # every worker its own model; the averaged model's loss
        state = alg.init(theta)
        pairs = torch.Generator().manual_seed(1)
        for t in range(rounds if hasattr(alg, "round") else rounds * N):   # ad_psgd: N steps a round
            if hasattr(alg, "round"):
                state, nbytes = alg.round(state, t, lambda h, th: grads(th), streams)
                expect(len(nbytes) == N and all(0 < b <= VALUE_BYTES * D + 8 for b in nbytes),
                       f"round {t}: bytes per worker {list(nbytes)}; allowed: {N} values in 1 .. 4 d + 8")
            else:                                # ad_psgd: one random pair a step, then the gradient
                i = t % N
                g = grads(state.x)[i]
                j = alg.neighbours[i][int(torch.randint(len(alg.neighbours[i]), (1,), generator=pairs))]
                alg.pair_average(state.x, i, j)
                state.x[i] -= alg.lr(t // N) * g     # each worker steps its own model by lr
        final = alg.average(state)
        return start, loss(final), final
    if getattr(cfg, "event_driven", False):      # one message at a time, round robin, one version stale
        from sim.eventsim import Job
        version, stale = 0, theta
        for t in range(rounds * N):
            i = t % N
            msg = grads(stale)[i]
            if alg.local_steps:                  # Delta = theta - theta^(H) of H local steps
                th = stale.expand(N, D).clone()
                for _ in range(alg.local_steps):
                    th = th - alg.local_lr(t // N) * grads(th)
                msg = stale - th[i]
            theta, state, info = alg.receive(state, theta, msg, Job(i, t // N, version, stale), 1, version)
            expect(info["step_size"] >= 0, f"message {t}: step size {info['step_size']} < 0")
            expect(tuple(theta.shape) == (D,), f"receive returned theta of shape {tuple(theta.shape)}, not ({D},)")
            if info["applied"]:
                stale, version = theta, version + 1
        return start, loss(theta), theta
    for t in range(rounds):
        kw = {"local": QuadraticLocal(grads, theta)} if getattr(alg, "wants_local_steps", False) else {}
        up, state = alg.worker_encode(state, grads(theta), t, streams, aux_grad=grads, **kw)
        nb = up.payload.nbytes
        expect(isinstance(nb, torch.Tensor) and tuple(nb.shape) == (N,),
               f"round {t}: upload nbytes must be a tensor of shape ({N},), got {tuple(getattr(nb, 'shape', ()))}")
        if hasattr(alg, "second_round"):
            _, state = alg.second_round(state, arrived, t)
        theta, down, state = alg.server_update(state, theta, up, arrived, t)
        expect(isinstance(theta, torch.Tensor) and tuple(theta.shape) == (D,),
               f"round {t}: server_update returned theta of shape {tuple(getattr(theta, 'shape', ()))}, not ({D},)")
        expect(0 < down.nbytes <= VALUE_BYTES * D,
               f"round {t}: the broadcast is {down.nbytes} bytes; allowed: 1 .. 4 d = {VALUE_BYTES * D}")
    return start, loss(theta), theta


def algorithm_shapes(cfg: Any) -> None:
    train_quadratic(cfg, rounds=3)


def algorithm_convex(cfg: Any, rounds: int = 200) -> None:
    start, final, _ = train_quadratic(cfg, rounds)
    expect(final < 0.5 * start, f"after {rounds} rounds the convex loss is {final:.4g}; allowed: below half "
                                f"its start {start:.4g}")


def algorithm_determinism(cfg: Any, rounds: int = 10) -> None:
    rng_before = torch.random.get_rng_state()
    _, _, a = train_quadratic(cfg, rounds)
    _, _, b = train_quadratic(cfg, rounds)
    expect(torch.equal(torch.random.get_rng_state(), rng_before),       # the likely cause first
           "the global torch RNG was used; allowed: the workers' streams only")
    expect(torch.equal(a, b), f"two runs of {rounds} rounds from the same seed ended at different parameters")


def algorithm_bytes(cfg: Any, expected: Callable[[Context], tuple[Any, Any]]) -> None:
    """The first round's upload (per worker) and broadcast bytes equal
    ``expected(ctx) -> (up: int | list[int], down: int | None)``."""
    ctx = context()
    alg = cfg.build(ctx)
    grads, _ = quadratic_problem()
    theta = torch.zeros(D)
    state = alg.init(theta)
    kw = {"local": QuadraticLocal(grads, theta)} if getattr(alg, "wants_local_steps", False) else {}
    up, state = alg.worker_encode(state, grads(theta), 0, WorkerStreams(0, N), aux_grad=grads, **kw)
    if hasattr(alg, "second_round"):
        _, state = alg.second_round(state, torch.ones(N, dtype=torch.bool), 0)
    _, down, _ = alg.server_update(state, theta, up, torch.ones(N, dtype=torch.bool), 0)
    want_up, want_down = expected(ctx)
    want_up = [int(want_up)] * N if isinstance(want_up, int) else [int(b) for b in want_up]
    expect(up.payload.nbytes.tolist() == want_up,
           f"upload bytes per worker {up.payload.nbytes.tolist()}, the formula gives {want_up}")
    if want_down is not None:
        expect(int(down.nbytes) == int(want_down), f"broadcast {down.nbytes} bytes, the formula gives {want_down}")


def algorithm_short_scenario(cfg: Any, world: Any, uploads_per_round: int | None = None) -> None:
    """6 rounds of scenarios/tiny.yaml (evaluations at 0, 3, 6): no divergence or
    stall, counters that add up, a finite loss.  ``uploads_per_round``: the
    messages a worker sends per round (checked when given)."""
    from sim.engine import run_algorithm
    res = run_algorithm(world, cfg)
    expect(not res.diverged, f"diverged: {res.diverged_why}")
    expect(not res.stalled, f"stalled: {res.stalled}")
    rounds = [r["round"] for r in res.rows]
    last = res.rows[-1]
    if getattr(cfg, "decentralized", False):     # gossip: one message per graph edge, no server
        alg = cfg.build(Context(d=world.model.d, n=world.n, blocks=world.model.blocks,
                                device=world.device, seed=world.seed))
        sends = sum(len(s) for s in getattr(alg, "sends", ())) or 2 * world.n   # ad_psgd: 2 per step
        per = 1 if hasattr(alg, "sends") else world.n
        expect(rounds == [0, 3 * per, 6 * per], f"evaluated at rounds {rounds}; expected [0, {3 * per}, {6 * per}]")
        expect(last["uploads"] == 6 * sends and last["bytes_down"] == 0,
               f"{last['uploads']} messages and {last['bytes_down']} bytes down; expected {6 * sends} and 0")
        expect(0 <= last["consensus_distance"] and res.rows[0]["consensus_distance"] == 0,
               "consensus distance must start at 0 and stay >= 0")
        expect(0 < res.spectral_gap <= 1, f"spectral gap {res.spectral_gap}; allowed: (0, 1]")
        return
    per = 1
    if getattr(cfg, "event_driven", False):      # versions: one per applied message (FedBuff: per K)
        per = world.n // getattr(cfg, "buffer", 1)
    expect(rounds == [0, 3 * per, 6 * per], f"evaluated at rounds {rounds}; expected [0, {3 * per}, {6 * per}]")
    if uploads_per_round is not None:
        skipped = round(res.skipped_fraction * 6 * world.n)
        want = uploads_per_round * 6 * world.n - skipped
        expect(last["uploads"] == want, f"{last['uploads']} uploads in 6 rounds; expected {want}")
    else:
        expect(last["uploads"] > 0, "no upload in 6 rounds")
    expect(last["bytes_up"] > 0 and last["bytes_down"] > 0,
           f"bytes up {last['bytes_up']}, down {last['bytes_down']}; both must be > 0")
    expect(math.isfinite(last["train_loss"]), f"train loss {last['train_loss']} is not finite")


# --- skip rules -------------------------------------------------------------------
def lazy_config(rule: str, example: dict | None = None, lr: float = 0.5, **settings: Any) -> Any:
    """The algorithm kind ``lazy`` with skip rule ``rule`` around dense SGD."""
    import algorithms
    return algorithms.ALGORITHMS["lazy"](lr=lr, rule={"kind": rule, **(example or {})}, **settings)


def skip_rule_interface(rule: Any) -> None:
    for attr in ("needs_aux_gradient", "server_decides"):
        expect(isinstance(getattr(rule, attr, None), bool),
               f"{attr} must be a bool, got {getattr(rule, attr, None)!r} (subclass algorithms.skiprules.SkipRule "
               "for the defaults)")
    for method in ("init", "decide", "after_step"):
        expect(callable(getattr(rule, method, None)),
               f"no method {method}(); allowed: the interface of algorithms.skiprules.SkipRule")


def skip_rule_invariants(cfg: Any, rounds: int = 40) -> None:
    """``cfg``: a ``lazy`` config; its rule around SGD on the least-squares task."""
    alg = cfg.build(context())
    rule = alg.rule
    grads, _ = quadratic_problem()
    theta = torch.zeros(D)
    state = alg.init(theta)
    streams, arrived = WorkerStreams(0, N), torch.ones(N, dtype=torch.bool)
    calls = [0]

    def aux(thetas):
        calls[0] += 1
        expect(isinstance(thetas, torch.Tensor) and tuple(thetas.shape) == (N, D),
               f"aux_grad was called with {tuple(getattr(thetas, 'shape', ()))}; allowed: iterates [n, d] = "
               f"({N}, {D}), one per worker")
        return grads(thetas)

    skips = 0
    for t in range(rounds):
        before = state.stored.clone()
        calls[0] = 0
        up, state = alg.worker_encode(state, grads(theta), t, streams, aux_grad=aux)
        expect(not calls[0] or rule.needs_aux_gradient,
               f"round {t}: the rule computed an auxiliary gradient (aux_grad) but needs_aux_gradient is False, "
               "so its compute would not be charged")
        uploaded = up.carries_gradient
        if t == 0:
            expect(bool(uploaded.all()), f"round 0: workers {(~uploaded).nonzero().flatten().tolist()} skipped; "
                                         "allowed: every worker uploads (nothing is stored yet)")
        theta, _, state = alg.server_update(state, theta, up, arrived, t)
        skipped = ~uploaded
        skips += int(skipped.sum())
        expect(bool((up.payload.nbytes[skipped] == 0).all()), f"round {t}: a skipping worker sent a payload")
        expect(torch.equal(state.stored[skipped], before[skipped]),
               f"round {t}: the server's stored message of a skipping worker changed; allowed: reused as it was")
        expect(int(state.delay.max()) <= alg.max_delay,
               f"round {t}: a worker skipped {int(state.delay.max())} rounds in a row; allowed: at most "
               f"max_delay = {alg.max_delay}")
        expect(bool(torch.isfinite(theta).all()), f"round {t}: theta is not finite")
    frac = alg.skipped_fraction(state)
    expect(0.0 <= frac <= 1.0 and frac == skips / (rounds * N),
           f"skipped fraction {frac}; allowed: the {skips} skips over {rounds * N} worker-rounds")


# --- short scenarios (every registry) ----------------------------------------------
def short_scenario_data(patch: dict | None = None) -> dict:
    """scenarios/tiny.yaml shortened to 6 rounds, with ``patch`` (dotted keys) applied."""
    import yaml
    data = yaml.safe_load(TINY.read_text())
    data["stop"] = {**data["stop"], "max_rounds": SHORT_ROUNDS, "on_target": False}
    data["eval_every"] = SHORT_EVAL
    for key, value in (patch or {}).items():
        node = data
        *head, last = key.split(".")
        for k in head:
            node = node.setdefault(k, {})
        node[last] = copy.deepcopy(value)
    return data


def short_world(patch: dict | None = None, seed: int = 0):
    """The world of the short scenario (validated like a file; ConfigError if bad)."""
    from sim.engine import build_world
    from sim.study.config import validate
    scn = validate(short_scenario_data(patch), f"{TINY} (conformance: {patch or {}})")
    return build_world(scn, seed)


def short_run(patch: dict | None = None) -> list[dict]:
    """Every algorithm of the short scenario with ``patch``: the evaluation rows;
    each must neither diverge nor stall."""
    from sim.engine import run_algorithm
    world = short_world(patch)
    rows = []
    for cfg in world.scenario.algorithms:
        res = run_algorithm(world, cfg)
        expect(not res.diverged, f"{cfg.label} diverged: {res.diverged_why}")
        expect(not res.stalled, f"{cfg.label} stalled: {res.stalled}")
        expect(math.isfinite(res.rows[-1]["train_loss"]), f"{cfg.label}: the train loss is not finite")
        rows += res.rows
    return rows


def short_run_deterministic(patch: dict) -> None:
    a, b = short_run(patch), short_run(patch)
    expect(a == b, "two runs of the same scenario and seed wrote different rows")


SGD = [{"name": "sgd", "kind": "sgd", "lr": 0.1}]


# --- models, data sets, partitions -------------------------------------------------
def model_shapes(cfg: Any, input_shape: tuple[int, ...] = (64,), num_classes: int = 10) -> None:
    from sim.learn.models import build_model
    model = build_model(cfg, input_shape, num_classes)
    theta = model.init_params(0)
    expect(tuple(theta.shape) == (model.d,) and model.d > 0, f"theta has shape {tuple(theta.shape)}, d = {model.d}")
    out = model.forward(theta, model.example_input(5))
    expect(tuple(out.shape) == (5, num_classes), f"logits of 5 inputs have shape {tuple(out.shape)}; expected "
                                                 f"(5, {num_classes})")
    expect(torch.equal(model.init_params(0), model.init_params(0)), "init_params(seed) differs between two calls")


def dataset_shapes(loader: Callable, root: str | None = None) -> None:
    data = loader(root, 0)
    for split in ("train", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        expect(x.shape[0] == y.shape[0] > 0, f"{split}: {x.shape[0]} inputs and {y.shape[0]} labels")
        expect(tuple(x.shape[1:]) == tuple(data.input_shape),
               f"{split}: inputs of shape {tuple(x.shape[1:])}, input_shape says {tuple(data.input_shape)}")
        expect(y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) < data.num_classes,
               f"{split}: labels must be int64 in 0 .. {data.num_classes - 1}")


def dataset_determinism(loader: Callable, root: str | None = None) -> None:
    a, b = loader(root, 0), loader(root, 0)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        expect(torch.equal(getattr(a, name), getattr(b, name)), f"{name} differs between two loads with seed 0")


def partition_shapes(kind: str, example: dict, n: int = 4, samples: int = 200) -> None:
    import numpy as np

    from sim.learn.data import partition
    labels = np.arange(samples) % 10
    parts = partition(labels, n, kind, 0, **example)
    expect(len(parts) == n, f"{len(parts)} parts for {n} workers")
    seen = np.concatenate(parts) if parts else np.array([], dtype=np.int64)
    expect(len(seen) == len(set(seen.tolist())), "the parts overlap")
    expect(len(seen) == 0 or (seen.min() >= 0 and seen.max() < samples), f"indices outside 0 .. {samples - 1}")


def partition_determinism(kind: str, example: dict, n: int = 4, samples: int = 200) -> None:
    import numpy as np

    from sim.learn.data import partition
    labels = np.arange(samples) % 10
    a, b = partition(labels, n, kind, 3, **example), partition(labels, n, kind, 3, **example)
    expect(all(np.array_equal(x, y) for x, y in zip(a, b)), "two partitions with the same seed differ")


# --- run_sim.py check ------------------------------------------------------------
@dataclass
class Result:
    subject: str      # "compressor my_sign"
    check: str        # "bytes"
    status: str       # PASS | FAIL | SKIP
    detail: str = ""


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = text.splitlines()
    if len(lines) > 6:
        text = "\n".join(lines[:6]) + " ..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _example(obj: Any, default: dict | None = None) -> dict:
    ex = getattr(obj, "conformance_example", None)
    return dict(ex) if isinstance(ex, dict) else dict(default or {})


def checks_for(what: str, name: str, obj: Any) -> list[tuple[str, Callable[[], Any]]]:
    """The named checks of one registered entry (each a thunk; raises if it fails,
    returns "skip: why" if it does not apply)."""
    import algorithms
    from algorithms.schedules import ScheduleConfig
    from sim.learn.compute import ComputeConfig
    from sim.study.config import ModelSpec, Topology
    out: list[tuple[str, Callable[[], Any]]] = []
    if what == "compressor":
        ex = _example(obj)
        build = lambda: obj(**ex).build(context())   # noqa: E731

        def bytes_check():
            cfg = obj(**ex)
            if not callable(getattr(cfg, "expected_bytes", None)):
                raise AssertionError("states no wire formula: define expected_bytes(self, ctx, x, decoded) -> "
                                     "bytes per worker message (an int, or a list of n ints)")
            ctx = context()

            def want(inp, dec):
                v = cfg.expected_bytes(ctx, inp, dec)
                return [int(v)] * inp.shape[0] if isinstance(v, (int, float)) else list(v)
            compressor_bytes(cfg.build(ctx), want)

        out += [("schema", lambda: config_strict(algorithms.compressors.CompressorConfig, obj, name, ex)),
                ("shapes", lambda: compressor_shapes(build())),
                ("bytes", bytes_check),
                ("determinism", lambda: compressor_determinism(build(), getattr(obj, "conformance_random", None))),
                ("error feedback", lambda: compressor_error_feedback(build())),
                ("row-wise (chunked rounds)", lambda: compressor_chunks(build())),
                ("linear", lambda: compressor_linear(build()) if build().linear else "skip: not linear"),
                ("short scenario", lambda: short_run(
                    {"algorithms": [{"name": f"comp_ams+{name}", "kind": "comp_ams", "lr": 0.01,
                                     "compressor": {"kind": name, **ex}}]}))]
    elif what == "algorithm":
        required_lr = "lr" in obj.model_fields and obj.model_fields["lr"].is_required()
        ex = _example(obj, {"lr": 0.1} if required_lr else {})

        def bytes_check():
            cfg = obj(**ex)
            if not callable(getattr(cfg, "expected_bytes", None)):
                return "skip: states no formula (expected_bytes(self, ctx) -> (up, down))"
            algorithm_bytes(cfg, cfg.expected_bytes)

        def scenario():
            world = short_world({"algorithms": [{"name": name, "kind": name, **ex}]})
            algorithm_short_scenario(world.scenario.algorithms[0], world, getattr(obj, "uploads_per_round", None))

        out += [("schema", lambda: config_strict(algorithms.AlgorithmEntry, obj, name, ex)),
                ("shapes", lambda: algorithm_shapes(obj(**ex))),
                ("bytes", bytes_check),
                ("determinism", lambda: algorithm_determinism(obj(**ex))),
                ("convex loss", lambda: algorithm_convex(obj(**ex))),
                ("short scenario", scenario)]
    elif what == "skip rule":
        ex = _example(obj)

        def scenario():
            world = short_world({"algorithms": [{"name": f"lazy+{name}", "kind": "lazy", "lr": 0.1,
                                                 "rule": {"kind": name, **ex}}]})
            algorithm_short_scenario(world.scenario.algorithms[0], world, uploads_per_round=1)

        out += [("schema", lambda: config_strict(algorithms.skiprules.SkipRuleConfig, obj, name, ex)),
                ("interface", lambda: skip_rule_interface(obj(**ex).build(context()))),
                ("invariants", lambda: skip_rule_invariants(lazy_config(name, ex, max_delay=5))),
                ("determinism", lambda: algorithm_determinism(lazy_config(name, ex))),
                ("convex loss", lambda: algorithm_convex(lazy_config(name, ex))),
                ("short scenario", scenario)]
    elif what == "model":
        ex = _example(obj)
        entry = {"kind": name, **ex}
        out += [("schema", lambda: config_strict(ModelSpec, obj, name, ex)),
                ("shapes", lambda: model_shapes(obj(**ex))),
                ("determinism", lambda: short_run_deterministic({"model": entry, "algorithms": SGD})),
                ("short scenario", lambda: short_run({"model": entry, "algorithms": SGD}))]
    elif what == "dataset":
        root = _example(obj).get("root")
        patch = {"data.dataset": name, "algorithms": SGD, **({"data.root": root} if root else {})}
        out += [("shapes", lambda: dataset_shapes(obj, root)),
                ("determinism", lambda: dataset_determinism(obj, root)),
                ("short scenario", lambda: short_run(patch))]
    elif what == "partition":
        ex = _example(obj)
        out += [("shapes", lambda: partition_shapes(name, ex)),
                ("determinism", lambda: partition_determinism(name, ex)),
                ("short scenario", lambda: short_run({"data.partition": {"kind": name, **ex}, "algorithms": SGD}))]
    elif what == "topology":
        ex = _example(obj)
        entry = {"kind": name, **ex}
        out += [("schema", lambda: config_strict(Topology, obj, name, ex)),
                ("determinism", lambda: short_run_deterministic({"network.topology": entry, "algorithms": SGD})),
                ("short scenario", lambda: short_run({"network.topology": entry, "algorithms": SGD}))]
    elif what in ("compute model", "learning-rate schedule"):
        ex = _example(obj)
        union = ComputeConfig if what == "compute model" else ScheduleConfig
        patch = {"compute": {"kind": name, **ex}, "algorithms": SGD} if what == "compute model" else \
            {"algorithms": [{**SGD[0], "lr_schedule": {"kind": name, **ex}}]}
        out += [("schema", lambda: config_strict(union, obj, name, ex)),
                ("short scenario", lambda: short_run(patch))]
    return out


def run_checks(registered: dict[str, list[str]], on_result: Callable[[Result], None] = lambda r: None
               ) -> list[Result]:
    """Every check of every entry in ``registered`` (registry kind -> names);
    ``on_result`` sees each result as soon as it exists."""
    from sim.plugins import registries
    regs = registries()
    results: list[Result] = []
    for what, names in registered.items():
        for name in names:
            subject = f"{what} {name}"
            try:
                checks = checks_for(what, name, regs[what][name])
            except Exception as exc:  # noqa: BLE001 - a broken entry is a failure, not a traceback
                results.append(Result(subject, "setup", "FAIL", _reason(exc)))
                on_result(results[-1])
                continue
            for check, thunk in checks:
                try:
                    outcome = thunk()
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # noqa: BLE001 - the plugin's fault, reported by name
                    results.append(Result(subject, check, "FAIL", _reason(exc)))
                else:
                    if isinstance(outcome, str) and outcome.startswith("skip: "):
                        results.append(Result(subject, check, "SKIP", outcome[len("skip: "):]))
                    else:
                        results.append(Result(subject, check, "PASS"))
                on_result(results[-1])
    return results


def check_plugin(spec: str, out=None) -> int:
    """``run_sim.py check PLUGIN``: load it, run the checks over what it
    registered, one line each.  0 when all pass, 1 when any fails; a plugin that
    cannot be imported raises PluginError (exit 2)."""
    from sim.plugins import load
    out = out or sys.stdout
    torch.use_deterministic_algorithms(True, warn_only=True)     # as a run does (sim/study/runner.py)
    plugin = load(spec, source="check")
    print(f"checking plugin {plugin.describe()}", file=out)
    if not plugin.registered:
        print("FAIL  plugin: registers nothing (no algorithm, compressor, skip rule, model, dataset, partition or "
              "topology was added to a registry; see docs/plugins.md)", file=out)
        return 1
    def show(r: Result) -> None:
        line = f"{r.status}  {r.subject}: {r.check}"
        if r.detail:
            line += ": " + r.detail.replace("\n", "\n        ")
        print(line, file=out, flush=True)

    results = run_checks(plugin.registered, show)
    failed = sum(r.status == "FAIL" for r in results)
    passed = sum(r.status == "PASS" for r in results)
    skipped = sum(r.status == "SKIP" for r in results)
    print(f"{len(results)} checks: {passed} passed, {failed} failed, {skipped} skipped", file=out)
    return 1 if failed else 0
