"""The algorithm registry: ``kind`` in a scenario -> config class -> Algorithm.

Importing this package registers every algorithm; ``AlgorithmEntry`` is the
discriminated union the scenario schema validates ``algorithms:`` against.
"""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from sim.registry import Registry

from .base import AlgorithmConfig, Context
from .compressors import COMPRESSORS, CompressorConfig, NoneConfig, TopKConfig
from .lazy import Lazy
from .sketch import CountSketch
from .sketched import FetchSgd, SketchedAmsGrad, SketchedSgd
from .onebit import OneBitAdam
from .optim import Adam, AmsGrad, Momentum, Sgd
from .ps import LocalAdam, LocalMomentum, ParameterServer
from .skiprules import SKIP_RULES, SkipRule, SkipRuleConfig

ALGORITHMS: Registry = Registry("algorithm")


def _none(ctx: Context):
    return COMPRESSORS["none"]().build(ctx)


@ALGORITHMS.register("sgd")
class SgdConfig(AlgorithmConfig):
    """Dense synchronous SGD: every worker sends its full gradient (4 d bytes),
    the server averages and steps."""

    kind: Literal["sgd"] = "sgd"
    late_apply: ClassVar[bool] = True        # a ParameterServer round (algorithms/ps.py)

    def build(self, ctx: Context) -> ParameterServer:
        return ParameterServer(self.label, _none(ctx), Sgd(self.lr_at), False, ctx.n)


@ALGORITHMS.register("momentum_sgd")
class MomentumSgdConfig(AlgorithmConfig):
    """Dense SGD with heavy-ball (or Nesterov) momentum on the server."""

    kind: Literal["momentum_sgd"] = "momentum_sgd"
    late_apply: ClassVar[bool] = True        # a ParameterServer round (algorithms/ps.py)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False

    def build(self, ctx: Context) -> ParameterServer:
        return ParameterServer(self.label, _none(ctx), Momentum(self.lr_at, self.momentum, self.nesterov),
                               False, ctx.n)


class _AdamFields(AlgorithmConfig):
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)


@ALGORITHMS.register("amsgrad")
class AmsGradConfig(_AdamFields):
    """Dense AMSGrad on the server (comp-ams.txt Algorithm 1 with eps inside the root)."""

    kind: Literal["amsgrad"] = "amsgrad"
    late_apply: ClassVar[bool] = True        # a ParameterServer round (algorithms/ps.py)

    def build(self, ctx: Context) -> ParameterServer:
        return ParameterServer(self.label, _none(ctx), AmsGrad(self.lr_at, self.beta1, self.beta2, self.eps),
                               False, ctx.n)


@ALGORITHMS.register("adam")
class AdamConfig(_AdamFields):
    """Dense Adam on the server (Kingma & Ba 2015, bias-corrected, eps outside the root)."""

    kind: Literal["adam"] = "adam"
    late_apply: ClassVar[bool] = True        # a ParameterServer round (algorithms/ps.py)

    def build(self, ctx: Context) -> ParameterServer:
        return ParameterServer(self.label, _none(ctx), Adam(self.lr_at, self.beta1, self.beta2, self.eps),
                               False, ctx.n)


@ALGORITHMS.register("topk_ef_sgd")
class TopKEfSgdConfig(AlgorithmConfig):
    """Top-k sparsified SGD with error feedback on each worker (Stich et al.
    2018; Karimireddy et al. 2019).  EF acts on the gradient and the server
    applies lr, which equals the "p = lr g + e" form for a constant lr."""

    kind: Literal["topk_ef_sgd"] = "topk_ef_sgd"
    late_apply: ClassVar[bool] = True        # a ParameterServer round (algorithms/ps.py)
    ratio: float = Field(0.01, gt=0, le=1, description="fraction of coordinates kept, in (0, 1]")
    error_feedback: bool = True

    def build(self, ctx: Context) -> ParameterServer:
        return ParameterServer(self.label, TopKConfig(ratio=self.ratio).build(ctx), Sgd(self.lr_at),
                               self.error_feedback, ctx.n)


@ALGORITHMS.register("comp_ams")
class CompAmsConfig(_AdamFields):
    """COMP-AMS (comp-ams.txt Algorithm 2): compressed gradients with error
    feedback on the workers (lines 7-8), AMSGrad with max(v) on the server
    (lines 12-16).  Any compressor; ``error_feedback: false`` gives the
    paper's curves without EF."""

    kind: Literal["comp_ams"] = "comp_ams"
    late_apply: ClassVar[bool] = True        # a ParameterServer round (algorithms/ps.py)
    compressor: CompressorConfig = Field(default_factory=lambda: TopKConfig(ratio=0.01))
    error_feedback: bool = True

    def build(self, ctx: Context) -> ParameterServer:
        opt = AmsGrad(self.lr_at, self.beta1, self.beta2, self.eps)
        return ParameterServer(self.label, self.compressor.build(ctx), opt, self.error_feedback, ctx.n)


@ALGORITHMS.register("qadam")
class QAdamConfig(_AdamFields):
    """Quantized Adam with error feedback (Chen et al. 2020, comp-ams.txt ref.
    [13]): each worker keeps its own m and v and sends the compressed
    m / (sqrt(v) + eps) with EF; the server averages and steps by lr."""

    kind: Literal["qadam"] = "qadam"
    late_apply: ClassVar[bool] = True        # a ParameterServer round (algorithms/ps.py)
    compressor: CompressorConfig = Field(default_factory=lambda: TopKConfig(ratio=0.01))
    error_feedback: bool = True

    def build(self, ctx: Context) -> ParameterServer:
        return ParameterServer(self.label, self.compressor.build(ctx), Sgd(self.lr_at), self.error_feedback,
                               ctx.n, local=LocalAdam(self.beta1, self.beta2, self.eps))


@ALGORITHMS.register("efficient_adam")
class EfficientAdamConfig(_AdamFields):
    """Efficient-Adam (Chen et al., efficient-adam-abstract.txt): workers send
    their compressed Adam direction with worker-side EF; the server averages,
    compresses the update again with server-side EF and broadcasts it
    (two-way quantization, two-way error feedback).  Only the abstract is in
    ../shared/papers: the worker direction m / (sqrt(v) + eps) follows the
    published Algorithm 1 as we read it (unverified against the full text)."""

    kind: Literal["efficient_adam"] = "efficient_adam"
    late_apply: ClassVar[bool] = True        # a ParameterServer round (algorithms/ps.py)
    compressor: CompressorConfig = Field(default_factory=lambda: TopKConfig(ratio=0.01))
    server_compressor: CompressorConfig | None = Field(
        None, description="compressor for the broadcast (default: the same as the workers')")

    def build(self, ctx: Context) -> ParameterServer:
        down = (self.server_compressor or self.compressor).build(ctx)
        return ParameterServer(self.label, self.compressor.build(ctx), Sgd(self.lr_at), True, ctx.n,
                               local=LocalAdam(self.beta1, self.beta2, self.eps),
                               down_compressor=down, down_error_feedback=True)


@ALGORITHMS.register("dist_ef_sgd")
class DistEfSgdConfig(AlgorithmConfig):
    """dist-EF-SGD (Zheng, Huang & Kwok 2019; sketched-amsgrad.txt ref. [11]):
    blockwise scaled-sign compression both ways with error feedback on both
    sides; worker p = m + (lr_{t-1}/lr_t) e with local momentum m (mu = 0 gives
    plain EF-SGD); blocks are the layers; wire d bits + 32 bits per block each way."""

    kind: Literal["dist_ef_sgd"] = "dist_ef_sgd"
    late_apply: ClassVar[bool] = True        # a ParameterServer round (algorithms/ps.py)
    momentum: float = Field(0.0, ge=0, lt=1)

    def build(self, ctx: Context) -> ParameterServer:
        comp = COMPRESSORS["block_sign"]().build(ctx)
        local = LocalMomentum(self.momentum) if self.momentum > 0 else None
        return ParameterServer(self.label, comp, Sgd(self.lr_at), True, ctx.n, local=local,
                               down_compressor=comp, down_error_feedback=True,
                               lr=self.lr_at, rescale_error=True)


@ALGORITHMS.register("onebit_adam")
class OneBitAdamConfig(_AdamFields):
    """1-bit Adam (Tang et al. 2021; DeepSpeed): dense Adam warm-up for
    ``freeze_step`` rounds, then frozen variance and 1-bit compressed momentum
    with error feedback on both sides (algorithms/onebit.py)."""

    kind: Literal["onebit_adam"] = "onebit_adam"
    freeze_step: int = Field(100, ge=0, description="rounds of dense Adam warm-up")

    def build(self, ctx: Context) -> OneBitAdam:
        return OneBitAdam(self.label, self.lr_at, ctx.n, ctx.blocks, self.freeze_step,
                          self.beta1, self.beta2, self.eps)


@ALGORITHMS.register("signsgd_mv")
class SignSgdMvConfig(AlgorithmConfig):
    """signSGD / Signum with majority vote (Bernstein et al., ICLR 2019,
    arXiv:1810.05291, Algorithm 1): workers send sign(v_m) (1 bit per
    coordinate), the server broadcasts the sign of the sum over the arrived
    workers (1 bit per coordinate), theta <- theta - lr (vote + lambda theta)
    (algorithms/majority.py)."""

    kind: Literal["signsgd_mv"] = "signsgd_mv"
    momentum: float = Field(0.0, ge=0, lt=1, description="Signum's beta: v = (1 - beta) g + beta v "
                                                          "(0: signSGD; the paper uses 0.9)")
    weight_decay: float = Field(0.0, ge=0, description="lambda in theta <- theta - lr (vote + lambda theta)")
    tie: Literal["positive", "zero"] = Field(
        "positive", description="a tied vote (even number of voters): +1, 1 bit down (positive), or no "
                                "step on that coordinate, 2 bits down (zero)")

    def build(self, ctx: Context):
        from .majority import SignumMajority   # imported here: this block is self-contained
        return SignumMajority(self.label, self.lr_at, ctx.n, ctx.d, self.momentum, self.weight_decay, self.tie)


class _LazyFields(AlgorithmConfig):
    """Settings of the skip rules (algorithms/lazy.py); the defaults follow the
    LASG reference code unless the kind says otherwise."""

    D: int = Field(10, ge=1, description="changes of theta in the threshold")
    xi: list[float] | None = Field(None, description="weights xi_d of the last D changes (default 1/D each, "
                                                     "as the LASG code)")
    max_delay: int = Field(50, ge=1, description="upload at the latest after this many skipped rounds")
    threshold_scaling: Literal["lasg", "sasg"] = Field(
        "lasg", description="lasg: 1/(lr^2 M^2) (LASG paper); sasg: 1/(2 lr M^2) (SASG notebook)")
    strict: bool = Field(False, description="upload when the difference is > (not >=) the threshold")
    stale_at: Literal["theta_hat", "previous"] = Field(
        "theta_hat", description="the auxiliary gradient at the last-upload iterate, or the previous iterate")
    aggregate: Literal["mean", "sum"] = Field("mean", description="combine workers' messages by mean or sum")

    def _lazy(self, ctx: Context, rule: SkipRule, compressor: CompressorConfig | None = None,
              error_feedback: bool = False, warmup_all: bool = False) -> Lazy:
        """``rule`` around a parameter-server round with SGD on the server and
        ``compressor`` (default none) on the workers."""
        if self.xi is not None and len(self.xi) != self.D:
            raise ValueError(f"xi lists {len(self.xi)} weights; allowed: exactly D = {self.D}")
        comp = compressor.build(ctx) if compressor is not None else _none(ctx)
        inner = ParameterServer(self.label, comp, Sgd(self.lr_at), error_feedback, ctx.n)
        return Lazy(self.label, inner, rule, ctx.n, self.lr_at, self.D, tuple(self.xi or ()), self.max_delay,
                    self.threshold_scaling, self.strict, self.stale_at, self.aggregate, warmup_all)


@ALGORITHMS.register("lazy")
class LazyConfig(_LazyFields):
    """Lazy aggregation with any registered skip rule (algorithms/skiprules.py,
    ``run_sim.py list``: skip rules) around dense SGD or a compressed
    parameter server: each round the rule says which workers upload, the
    server reuses the stored message of the others.  ``lasg_wk2``, ...,
    ``sasg`` are this kind with fixed choices."""

    kind: Literal["lazy"] = "lazy"
    rule: SkipRuleConfig = Field(description="the skip rule: {kind: NAME, ...} or NAME (run_sim.py list: "
                                             "skip rules)")
    compressor: CompressorConfig = Field(default_factory=NoneConfig,
                                         description="what an uploading worker sends (default: the dense gradient)")
    error_feedback: bool = Field(False, description="error feedback around the compressor (SASG: true); a "
                                                    "skipping worker keeps its error")
    warmup_all: bool = Field(False, description="every worker uploads while round < D (the SASG notebook)")

    @field_validator("rule", mode="before")
    @classmethod
    def _name_is_kind(cls, v):
        if isinstance(v, str):
            return {"kind": v}
        if not isinstance(v, dict) and not isinstance(v, BaseModel):
            raise ValueError(f"{v!r} is not a skip rule; allowed: a rule's name or {{kind: NAME, ...}} "
                             "(run_sim.py list: skip rules)")
        return v

    def build(self, ctx: Context) -> Lazy:
        return self._lazy(ctx, self.rule.build(ctx), self.compressor, self.error_feedback, self.warmup_all)


@ALGORITHMS.register("lasg_wk2")
class LasgWk2Config(_LazyFields):
    """LASG-WK2 around dense SGD: the worker compares g(theta^k) and g(theta_hat)
    on the same minibatch (two gradients, both charged)."""

    kind: Literal["lasg_wk2"] = "lasg_wk2"

    def build(self, ctx: Context) -> Lazy:
        return self._lazy(ctx, SKIP_RULES["lasg_wk2"]().build(ctx))


@ALGORITHMS.register("lasg_wk1")
class LasgWk1Config(_LazyFields):
    """LASG-WK1: variance-reduced rule with a snapshot refreshed every max_delay rounds."""

    kind: Literal["lasg_wk1"] = "lasg_wk1"

    def build(self, ctx: Context) -> Lazy:
        return self._lazy(ctx, SKIP_RULES["lasg_wk1"]().build(ctx))


@ALGORITHMS.register("lasg_ps")
class LasgPsConfig(_LazyFields):
    """LASG-PS: the server asks worker m when L ||theta^k - theta_hat_m||^2 >= threshold;
    workers not asked compute and send nothing."""

    kind: Literal["lasg_ps"] = "lasg_ps"
    smoothness: float = Field(0.1, gt=0, description="L in the rule (reference code: 0.1)")

    def build(self, ctx: Context) -> Lazy:
        return self._lazy(ctx, SKIP_RULES["lasg_ps"](smoothness=self.smoothness).build(ctx))


@ALGORITHMS.register("lag")
class LagConfig(_LazyFields):
    """LAG (Chen et al. 2018) worker rule: upload when the new gradient differs
    enough from the last one sent.  Deterministic LAG uses full local
    gradients: set batch_size to the shard size."""

    kind: Literal["lag"] = "lag"

    def build(self, ctx: Context) -> Lazy:
        return self._lazy(ctx, SKIP_RULES["lag"]().build(ctx))


@ALGORITHMS.register("sasg")
class SasgConfig(_LazyFields):
    """SASG (sasg.txt Algorithm 1): the LASG-WK2 rule with top-k and error
    feedback: a communicating worker sends TopK(lr g + e) and keeps the
    residual; a skipping worker leaves its error untouched and the server
    reuses its stored sparse message.  Defaults follow the SASG notebook:
    top-k per tensor, sum of messages, threshold = (sum of the last D - 1
    parameter changes, no 1/D) / (2 lr M^2), strict, every worker
    communicates in the first D rounds, at most D skips in a row.  The same
    as ``kind: lazy`` with ``rule: sasg``, ``compressor: {kind: topk, ratio,
    scope: layer}``, ``error_feedback: true``, ``warmup_all: true`` and these
    settings (xi written out)."""

    kind: Literal["sasg"] = "sasg"
    ratio: float = Field(0.01, gt=0, le=1, description="top-k fraction, per tensor")
    xi: list[float] | None = Field(
        None, description="weights xi_d of the last D changes; default (the SASG notebook): 1 for each of "
                          "the newest D - 1 changes and 0 for the D-th (its D stored iterates have D - 1 "
                          "changes between them), no 1/D")
    threshold_scaling: Literal["lasg", "sasg"] = "sasg"
    strict: bool = True
    aggregate: Literal["mean", "sum"] = "sum"
    max_delay: int = Field(10, ge=1)

    def notebook_xi(self) -> list[float]:
        """FullConnect_MNIST.ipynb (xiaogdeng/SASG), the source of sasg.txt Table II:
        ``para_list`` keeps the newest D iterates, ``thread = sum_i compt(para_list[i],
        para_list[i + 1]) / (2 lr M^2)``: the plain sum of the D - 1 changes between them."""
        return [1.0] * (self.D - 1) + [0.0]

    def build(self, ctx: Context) -> Lazy:
        cfg = self if self.xi is not None else self.model_copy(update={"xi": self.notebook_xi()})
        return cfg._lazy(ctx, SKIP_RULES["sasg"]().build(ctx), TopKConfig(ratio=self.ratio, scope="layer"),
                         error_feedback=True, warmup_all=True)


class _SketchFields(AlgorithmConfig):
    rows: int = Field(5, ge=1, description="count sketch rows r")
    cols: int = Field(ge=1, description="count sketch columns c (a table is 4 r c bytes)")
    k: int | None = Field(None, ge=1, description="coordinates updated per round")
    ratio: float | None = Field(None, gt=0, le=1, description="k as a fraction of d (instead of k)")
    sketch_seed: int = Field(0, description="seed of the hashes, shared by all parties")

    @model_validator(mode="after")
    def _one_of(self):
        if (self.k is None) == (self.ratio is None):
            raise ValueError("give exactly one of k (>= 1) or ratio (in (0, 1])")
        return self

    def _k(self, d: int) -> int:
        return min(d, self.k if self.k is not None else max(1, int(self.ratio * d)))

    def _sketch(self, ctx: Context) -> CountSketch:
        return CountSketch(ctx.d, self.rows, self.cols, self.sketch_seed, ctx.device)


@ALGORITHMS.register("sketched_sgd")
class SketchedSgdConfig(_SketchFields):
    """Sketched-SGD (Ivkin et al. 2019): workers send S(v); the server picks P k
    candidates from the summed sketch, a second round fetches their exact
    values, the exact top-k is applied (algorithms/sketched.py)."""

    kind: Literal["sketched_sgd"] = "sketched_sgd"
    P: int = Field(8, ge=0, description="candidates per update coordinate; 0: no second round")
    momentum: float = Field(0.9, ge=0, lt=1)

    def build(self, ctx: Context) -> SketchedSgd:
        return SketchedSgd(self.label, self._sketch(ctx), self._k(ctx.d), self.P, self.momentum, self.lr_at, ctx.n)


@ALGORITHMS.register("fetchsgd")
class FetchSgdConfig(_SketchFields):
    """FetchSGD (Rothchild et al. 2020): sketches of raw gradients; momentum and
    error kept by the server in sketch space; one round."""

    kind: Literal["fetchsgd"] = "fetchsgd"
    momentum: float = Field(0.9, ge=0, lt=1)

    def build(self, ctx: Context) -> FetchSgd:
        return FetchSgd(self.label, self._sketch(ctx), self._k(ctx.d), self.momentum, self.lr_at, ctx.n)


class _SketchedAmsFields(_SketchFields):
    P: int = Field(8, ge=1, description="candidates per update coordinate (second round)")
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0, description="initial value of v (sketched-amsgrad.txt Algorithm 1)")

    def _build(self, ctx: Context, variant: str) -> SketchedAmsGrad:
        return SketchedAmsGrad(self.label, variant, self._sketch(ctx), self._k(ctx.d), self.P, self.lr_at,
                               ctx.n, self.beta1, self.beta2, self.eps)


@ALGORITHMS.register("sketched_amsgrad_pa")
class SketchedAmsGradPaConfig(_SketchedAmsFields):
    """SketchedAMSGrad with parameter averaging (sketched-amsgrad.txt Algorithm 1)."""

    kind: Literal["sketched_amsgrad_pa"] = "sketched_amsgrad_pa"

    def build(self, ctx: Context) -> SketchedAmsGrad:
        return self._build(ctx, "pa")


@ALGORITHMS.register("sketched_amsgrad_ga")
class SketchedAmsGradGaConfig(_SketchedAmsFields):
    """SketchedAMSGrad with gradient averaging (sketched-amsgrad.txt Algorithms 2 and 3)."""

    kind: Literal["sketched_amsgrad_ga"] = "sketched_amsgrad_ga"

    def build(self, ctx: Context) -> SketchedAmsGrad:
        return self._build(ctx, "ga")


# Deep Gradient Compression (Lin et al. 2018): the config and the algorithm live in algorithms/dgc.py.
from .dgc import DgcConfig  # noqa: E402

ALGORITHMS.add("dgc", DgcConfig)


# PowerSGD (Vogels et al. 2019): the config and the algorithm live in algorithms/powersgd.py.
from .powersgd import PowerSgdConfig  # noqa: E402

ALGORITHMS.add("powersgd", PowerSgdConfig)


# Asynchronous SGD (event-driven, sim/eventsim.py): algorithms/asynchronous.py.
from .asynchronous import AsyncSgdConfig, FedAsyncConfig, FedBuffConfig  # noqa: E402

ALGORITHMS.add("async_sgd", AsyncSgdConfig)
ALGORITHMS.add("fedbuff", FedBuffConfig)
ALGORITHMS.add("fedasync", FedAsyncConfig)


# FedAvg / FedAdam / FedAMS and local SGD (local steps, client sampling): algorithms/federated.py.
from .federated import FedAvgConfig, LocalSgdConfig  # noqa: E402

ALGORITHMS.add("fedavg", FedAvgConfig)
ALGORITHMS.add("local_sgd", LocalSgdConfig)


# Decentralized training over a communication graph (sim/gossip.py): algorithms/gossip.py.
from .gossip import AdPsgdConfig, ChocoSgdConfig, DpsgdConfig, SgpConfig  # noqa: E402

ALGORITHMS.add("dpsgd", DpsgdConfig)
ALGORITHMS.add("choco_sgd", ChocoSgdConfig)
ALGORITHMS.add("sgp", SgpConfig)
ALGORITHMS.add("ad_psgd", AdPsgdConfig)


# built-ins by the static union; kinds registered later (plugins) looked up at validation
AlgorithmEntry = ALGORITHMS.config_union()

__all__ = ["ALGORITHMS", "COMPRESSORS", "SKIP_RULES", "AlgorithmEntry", "AlgorithmConfig", "Context"]
