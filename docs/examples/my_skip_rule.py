"""A commsim plugin: a new skip rule (docs/plugins.md).

    python run_sim.py run docs/examples/skip_rule_scenario.yaml --plugin docs/examples/my_skip_rule.py
    python run_sim.py check docs/examples/my_skip_rule.py

Importing this file registers the skip rule ``relative_lag``: worker m uploads
when its gradient moved by at least a fraction of its own size since the
message the server stores for it,

    ||g_m(theta^k) - g_stored_m||^2  >=  c ||g_m(theta^k)||^2,

and skips otherwise (the server reuses g_stored_m).  It needs no second
gradient and ignores the LASG threshold; everything every rule shares (round
0 and the ``max_delay`` bound force an upload, the stored messages, the skip
notices and their costs) stays in commsim's ``Lazy`` (algorithms/lazy.py).
A scenario uses it through the algorithm kind ``lazy``:
``{kind: lazy, lr: 0.1, rule: {kind: relative_lag, c: 1.2}}``, around dense SGD or
any registered compressor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from algorithms.base import Context
from algorithms.skiprules import SKIP_RULES, Decision, RoundView, SkipRule, sq_norms


@dataclass(frozen=True)
class RelativeLag(SkipRule):
    """The rule object: frozen, no state of its own (SkipRule's defaults:
    needs_aux_gradient False, server_decides False, init -> None)."""

    c: float

    def decide(self, v: RoundView) -> Decision:
        # v.grads [n, d]: this round's gradients; v.stored [n, d]: what the server keeps of each worker
        return Decision(sq_norms(v.grads - v.stored) >= self.c * sq_norms(v.grads))


@SKIP_RULES.register("relative_lag")
class RelativeLagConfig(BaseModel):
    """Upload when ||g - g_stored||^2 >= c ||g||^2."""

    model_config = ConfigDict(extra="forbid")     # unknown keys refused, as for the built-ins
    kind: Literal["relative_lag"] = "relative_lag"
    c: float = Field(1.0, gt=0, description="a change is sent when its ||.||^2 reaches c ||g||^2")

    conformance_example: ClassVar[dict] = {"c": 0.5}     # what `run_sim.py check` builds

    def build(self, ctx: Context) -> RelativeLag:
        return RelativeLag(self.c)
