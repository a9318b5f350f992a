"""Skip rules: which workers upload this round (LAG, LASG-WK1/WK2/PS, SASG).

A skip rule is a small frozen object; :class:`algorithms.lazy.Lazy` wraps it
around an algorithm's upload (the algorithm kinds ``lazy``, ``lasg_wk2``, ...,
algorithms/__init__.py).  Lazy keeps what every rule shares: the threshold

    threshold = scale * sum_{d=1..D} xi_d ||theta^{k+1-d} - theta^{k-d}||^2

(``view.threshold``, compared by ``view.exceeds`` with ``>=``, or ``>`` with
``strict``), the forced uploads (round 0, the warm-up rounds, a worker whose
delay reached ``max_delay``), the server's stored message of every worker and
its reuse for the workers that skip, and the costs.  A rule only says which
workers want to upload.

The interface of a rule (:class:`SkipRule` gives the defaults):

``needs_aux_gradient: bool``
    every worker computes a second gradient on the same minibatch
    (``view.aux_grad(thetas [n, d])``, each worker at its own iterate); the
    round's compute is charged twice.  A rule must not call ``aux_grad``
    without it (``run_sim.py check`` fails such a rule).
``server_decides: bool``
    the server picks who uploads (LASG-PS), from what it knows (iterates, not
    gradients): a worker not picked computes nothing and sends nothing.
    Otherwise every worker computes its gradient and a skipping worker sends a
    header-only skip notice, so the server does not wait for it.
``init(theta [d], n) -> state``
    the rule's own state (None when it keeps none; LASG-WK1: its snapshot
    and the last uploaded deltas).
``decide(view: RoundView) -> Decision``
    ``Decision(wants [n] bool, update)``: the workers the rule wants to
    upload (Lazy adds the forced ones and drops inactive ones), and
    optionally ``update(uploaded [n] bool) -> state``, the rule's state once
    the uploads are known.
``after_step(state, theta [d], round, alg) -> state``
    after the server's step (``theta``: the new iterate; ``alg``: the Lazy,
    for its settings such as ``max_delay``); LASG-WK1 refreshes its snapshot.

Scenarios name a rule through :data:`SKIP_RULES`, a registry of pydantic
configs (``{kind: NAME, ...}``, unknown keys refused) whose ``build(ctx)``
returns the rule; plugins register theirs the same way (docs/plugins.md).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from sim.registry import Registry

from .base import Context
from .ps import keep_rows

SKIP_RULES: Registry = Registry("skip rule")  # kind -> config class with .build(ctx) -> SkipRule


@dataclass(frozen=True)
class RoundView:
    """What a rule may look at in round ``round`` (read-only)."""

    round: int
    grads: torch.Tensor          # [n, d] g(theta^k) of every worker on this round's minibatch
    aux_grad: Callable[[torch.Tensor], torch.Tensor]   # thetas [n, d] -> [n, d], the same minibatch
    theta: torch.Tensor          # [d] theta^k
    previous: torch.Tensor       # [d] theta^{k-1}
    theta_hat: torch.Tensor      # [n, d] the iterate of each worker's last upload
    stale: torch.Tensor          # [n, d] where a stale gradient is taken: theta_hat, or previous (stale_at)
    stored: torch.Tensor         # [n, d] the server's last decoded message of each worker
    threshold: float
    strict: bool
    state: Any                   # the rule's own state (init, decide's update, after_step)

    @property
    def n(self) -> int:
        return self.grads.shape[0]

    def exceeds(self, value: torch.Tensor) -> torch.Tensor:
        """value [n] > threshold (``strict``) or >= threshold: [n] bool."""
        return value > self.threshold if self.strict else value >= self.threshold


@dataclass(frozen=True)
class Decision:
    wants: torch.Tensor                                   # [n] bool: the rule's verdict
    update: Callable[[torch.Tensor], Any] | None = None   # uploaded [n] bool -> the rule's new state


@dataclass(frozen=True)
class SkipRule:
    """The defaults of the interface: no auxiliary gradient, the workers
    decide, no state of its own."""

    needs_aux_gradient: ClassVar[bool] = False
    server_decides: ClassVar[bool] = False

    def init(self, theta: torch.Tensor, n: int) -> Any:
        return None

    def decide(self, view: RoundView) -> Decision:  # pragma: no cover - abstract
        raise NotImplementedError

    def after_step(self, state: Any, theta: torch.Tensor, round: int, alg: Any) -> Any:
        return state


def sq_norms(x: torch.Tensor) -> torch.Tensor:
    """||x_m||^2 of every row: [n, d] -> [n]."""
    return (x ** 2).sum(1)


# --- the built-in rules ---------------------------------------------------------
@dataclass(frozen=True)
class LagRule(SkipRule):
    """LAG (Chen et al. 2018): ||g(theta^k) - g_stored||^2 >= threshold, g_stored
    the message the worker last sent."""

    def decide(self, v: RoundView) -> Decision:
        return Decision(v.exceeds(sq_norms(v.grads - v.stored)))


@dataclass(frozen=True)
class LasgWk2Rule(SkipRule):
    """LASG-WK2 (and SASG's rule (6)): ||g(theta^k) - g(theta_stale)||^2 >=
    threshold, both gradients on the same minibatch."""

    needs_aux_gradient: ClassVar[bool] = True

    def decide(self, v: RoundView) -> Decision:
        return Decision(v.exceeds(sq_norms(v.grads - v.aux_grad(v.stale))))


@dataclass(frozen=True)
class Wk1State:
    snapshot: torch.Tensor       # [d] the snapshot iterate
    delta_stored: torch.Tensor   # [n, d] the last uploaded delta of each worker


@dataclass(frozen=True)
class LasgWk1Rule(SkipRule):
    """LASG-WK1: delta = g(theta^k) - g(theta_snapshot) on the same minibatch;
    ||delta - delta_stored||^2 >= threshold; the snapshot is refreshed every
    ``max_delay`` rounds."""

    needs_aux_gradient: ClassVar[bool] = True

    def init(self, theta: torch.Tensor, n: int) -> Wk1State:
        return Wk1State(theta.clone(), torch.zeros(n, theta.numel(), device=theta.device))

    def decide(self, v: RoundView) -> Decision:
        s = v.state
        delta = v.grads - v.aux_grad(s.snapshot.expand(v.n, -1))
        return Decision(v.exceeds(sq_norms(delta - s.delta_stored)),
                        lambda up: replace(s, delta_stored=keep_rows(up, delta, s.delta_stored)))

    def after_step(self, state: Wk1State, theta: torch.Tensor, round: int, alg: Any) -> Wk1State:
        return replace(state, snapshot=theta.clone()) if (round + 1) % alg.max_delay == 0 else state


@dataclass(frozen=True)
class LasgPsRule(SkipRule):
    """LASG-PS: the server asks worker m when L ||theta^k - theta_hat_m||^2 >= threshold."""

    smoothness: float = 0.1
    server_decides: ClassVar[bool] = True

    def decide(self, v: RoundView) -> Decision:
        return Decision(v.exceeds(sq_norms(v.theta.view(1, -1) - v.theta_hat) * self.smoothness))


# --- configs (what a scenario names) ------------------------------------------------
class _RuleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


@SKIP_RULES.register("lag")
class LagRuleConfig(_RuleConfig):
    """LAG's worker rule: the new gradient against the last one sent (no second gradient)."""

    kind: Literal["lag"] = "lag"

    def build(self, ctx: Context) -> SkipRule:
        return LagRule()


@SKIP_RULES.register("lasg_wk2")
class LasgWk2RuleConfig(_RuleConfig):
    """LASG-WK2: g(theta^k) against g(theta_hat) (or the previous iterate, ``stale_at``) on the same minibatch."""

    kind: Literal["lasg_wk2"] = "lasg_wk2"

    def build(self, ctx: Context) -> SkipRule:
        return LasgWk2Rule()


@SKIP_RULES.register("lasg_wk1")
class LasgWk1RuleConfig(_RuleConfig):
    """LASG-WK1: the variance-reduced delta against the last one uploaded; snapshot every max_delay rounds."""

    kind: Literal["lasg_wk1"] = "lasg_wk1"

    def build(self, ctx: Context) -> SkipRule:
        return LasgWk1Rule()


@SKIP_RULES.register("lasg_ps")
class LasgPsRuleConfig(_RuleConfig):
    """LASG-PS: the server asks a worker when L ||theta^k - theta_hat||^2 reaches the threshold."""

    kind: Literal["lasg_ps"] = "lasg_ps"
    smoothness: float = Field(0.1, gt=0, description="L in the rule (reference code: 0.1)")

    def build(self, ctx: Context) -> SkipRule:
        return LasgPsRule(self.smoothness)


@SKIP_RULES.register("sasg")
class SasgRuleConfig(_RuleConfig):
    """SASG's rule (sasg.txt (6)): the LASG-WK2 test.  What makes the algorithm
    SASG is around the rule: top-k with error feedback, and its settings (the
    ``sasg`` algorithm kind)."""

    kind: Literal["sasg"] = "sasg"

    def build(self, ctx: Context) -> SkipRule:
        return LasgWk2Rule()


# built-ins by the static union; kinds registered later (plugins) looked up at validation
SkipRuleConfig = SKIP_RULES.config_union()
