"""The scenario schema (pydantic, unknown keys forbidden) and its loader.

``load_scenario(path, overrides)`` reads YAML, applies ``--set a.b.c=value``
overrides, validates, and raises :class:`ConfigError` with the file, the field
path and what is allowed.  Quantities carry units ("1 Gbps", "5 ms", "10 min").
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from algorithms import AlgorithmEntry
from topologies import TOPOLOGIES
from topologies.spec import LinkSpec
from topologies.star import StarTopology

from sim.learn.compute import ComputeConfig, FlopsCompute
from sim.study import yamlfile
from sim.errors import ConfigError
from sim.registry import PLUGIN_HINT, RegistryUnion
from sim.learn.models import MODELS, MlpConfig
from sim.unitfields import Duration, PositiveDuration


class Strict(BaseModel):
    # defer_build: a nested config's own validator is built on its first direct use; validating a
    # scenario goes through Scenario's schema, which holds every nested model (start-up, issue 15)
    model_config = ConfigDict(extra="forbid", defer_build=True)


# --- data -------------------------------------------------------------------
class IidPartition(Strict):
    kind: Literal["iid"] = "iid"


class DirichletPartition(Strict):
    kind: Literal["dirichlet"] = "dirichlet"
    alpha: float = Field(gt=0, description="concentration; small = more skewed")
    min_size: int = Field(1, ge=1, description="redraw until every worker has this many samples")


class ShardsPartition(Strict):
    kind: Literal["shards"] = "shards"
    classes_per_worker: int = Field(ge=1)


class NaturalPartition(Strict):
    """The data set's own clients (femnist's writers, shakespeare's roles, an hf_disk or parquet
    data.client_column): every worker holds whole clients, contiguous groups in the data set's order
    (sizes in clients differ by at most one); needs workers <= clients."""
    kind: Literal["natural"] = "natural"


_PARTITION_CONFIGS: dict[str, type] = {"iid": IidPartition, "dirichlet": DirichletPartition,
                                       "shards": ShardsPartition, "natural": NaturalPartition}
_DERIVED: dict[tuple[str, Any], type] = {}


def partition_config(kind: str) -> type | None:
    """The config class of a registered partition: the built-ins' above; for one a
    plugin registered (sim/learn/data.py PARTITIONS), a strict model made from its
    keyword-only parameters (their annotations and defaults).  None if unknown."""
    from sim.learn.data import PARTITIONS
    fn = PARTITIONS.get(kind)
    if fn is None:
        return None
    if kind in _PARTITION_CONFIGS:          # a registry refuses a second "iid": this is the built-in
        return _PARTITION_CONFIGS[kind]
    key = (kind, fn)
    if key not in _DERIVED:
        import inspect
        import typing
        from pydantic import create_model
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # noqa: BLE001 - an annotation that does not resolve: take any value
            hints = {}
        fields: dict[str, Any] = {"kind": (Literal[kind], kind)}
        for p in inspect.signature(fn).parameters.values():
            if p.kind is p.KEYWORD_ONLY:
                default = ... if p.default is p.empty else p.default
                fields[p.name] = (hints.get(p.name, Any), default)
        _DERIVED[key] = create_model(f"Partition_{kind}", __base__=Strict, **fields)
    return _DERIVED[key]


def _partition_names() -> list[str]:
    from sim.learn.data import PARTITIONS
    return PARTITIONS.names()


Partition = RegistryUnion("partition", _partition_names, partition_config).annotated(
    [IidPartition, DirichletPartition, ShardsPartition, NaturalPartition])

# The data.* fields below `root` that only some loaders take (their keyword-only
# parameters, sim/learn/data.py loader_options): unset (null) unless given.
DATA_OPTIONS = ("image_column", "label_column", "client_column", "split", "test_split", "test_fraction", "shape")


class DataSpec(Strict):
    dataset: str = "mnist5k"
    root: str | None = Field(None, description="the local file or folder of a data set read from disk: mnist, "
                                               "cifar10, cifar100, imdb; hf_disk, parquet; femnist, shakespeare")
    image_column: str | None = Field(
        None, description="hf_disk, parquet: the column of inputs: an Image feature, encoded image bytes or "
                          "(nested lists or arrays of) numbers (default: image)")
    label_column: str | None = Field(
        None, description="hf_disk, parquet: the column of class labels: a ClassLabel, integers 0..K-1 or "
                          "strings (default: label)")
    client_column: str | None = Field(
        None, description="hf_disk, parquet: the column naming each sample's client (user), numbered in order "
                          "of first appearance: enables partition natural")
    split: str | None = Field(None, description="hf_disk, parquet: the training split of data with splits "
                                                "(default: train)")
    test_split: str | None = Field(None, description="hf_disk, parquet: the test split of data with splits "
                                                     "(default: test)")
    test_fraction: float | None = Field(
        None, gt=0, lt=1, description="hf_disk, parquet: hold out this fraction of the training data as the test "
                                      "set (stratified by label) instead of a test split; data without splits: "
                                      "default 0.2")
    shape: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, min_length=1, description="hf_disk, parquet: reshape each input sample (row-major) to this shape, "
                                        "e.g. [1, 28, 28] for rows of 784 pixels")
    partition: Partition = Field(default_factory=IidPartition)

    def loader_options(self) -> dict[str, Any]:
        """The data.* options given (not null), as the loader takes them."""
        return {k: getattr(self, k) for k in DATA_OPTIONS if getattr(self, k) is not None}

    @field_validator("dataset")
    @classmethod
    def _known(cls, v: str) -> str:
        from sim.learn.data import DATASETS
        if v not in DATASETS:
            raise ValueError(f"unknown dataset {v!r}; allowed: {', '.join(DATASETS.names())}; {PLUGIN_HINT}")
        return v


# --- model ------------------------------------------------------------------
ModelSpec = MODELS.config_union()        # plugins' kinds too (sim/registry.py)


# --- network ----------------------------------------------------------------
Topology = TOPOLOGIES.config_union()     # plugins' kinds too (sim/registry.py)


class NetworkSpec(Strict):
    topology: Topology = Field(default_factory=StarTopology,
                               description="star | ring | hierarchical | graph (a name or {kind: ..., ...})")
    uplink: LinkSpec = Field(default_factory=lambda: LinkSpec(bandwidth=1e9, latency=0.005),
                             description="each worker -> its switch (ring: -> the next worker)")
    downlink: LinkSpec = Field(default_factory=lambda: LinkSpec(bandwidth=1e9, latency=0.005),
                               description="switch -> each worker")
    server: LinkSpec = Field(default_factory=lambda: LinkSpec(bandwidth=1e10, latency=0.0),
                             description="each server's NIC, both directions")
    sharing: Literal["fair", "fifo"] = Field("fair", description="max-min fair flows, or one message at a time")
    header_bytes: int = Field(64, ge=0, description="bytes of header on every message")

    @field_validator("topology", mode="before")
    @classmethod
    def _name_is_kind(cls, v):
        if isinstance(v, str):
            if v not in TOPOLOGIES:
                raise ValueError(f"unknown topology {v!r}; allowed: {', '.join(TOPOLOGIES.names())}; {PLUGIN_HINT}")
            return {"kind": v}
        return v


class WorkerFailure(Strict):
    worker: int = Field(ge=0, description="worker index")
    crash_at: Duration = Field(description='e.g. "10 s"')
    rejoin_at: Duration | None = Field(None, description="comes back at this time (default: never)")

    @model_validator(mode="after")
    def _order(self):
        if self.rejoin_at is not None and self.rejoin_at <= self.crash_at:
            raise ValueError("rejoin_at must be after crash_at")
        return self


# --- run control ------------------------------------------------------------
class StopSpec(Strict):
    target_accuracy: float = Field(0.9, gt=0, le=1)
    max_rounds: int = Field(1000, ge=1)
    max_sim_time: PositiveDuration | None = Field(None, description='e.g. "10 min"')
    on_target: bool = Field(True, description="stop an algorithm once it reaches the target")
    divergence_factor: float = Field(
        1e4, gt=1, description="diverged (stopped at that round): the workers' mean minibatch loss is "
                               "above this many times its round-0 value, or any loss or parameter is not finite")


# A name becomes a folder (results/<name>/): letters, digits, "_", "-" and ".",
# not starting with "." (so never ".", ".." or a hidden folder), no separators.
NAME_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$"
NAME_RULE = 'letters, digits, "_", "-" and "." (not first); no "/" or "\\"'
MAX_SEED = 2 ** 32 - 1    # numpy's and torch's seeding both take it; larger adds nothing
MAX_SEEDS = 1000          # seeds of one scenario (each runs every algorithm)
MAX_WORKERS = 100_000
Seed = Annotated[int, Field(strict=True, ge=0, le=MAX_SEED)]
Count = Annotated[int, Field(strict=True, ge=1)]


def check_name(v: str) -> str:
    if not re.match(NAME_PATTERN, v) or len(v) > 128:
        raise ValueError(f"{v!r} is not a valid name (it names a results folder); allowed: 1-128 of {NAME_RULE}")
    return v


class Scenario(Strict):
    model_config = ConfigDict(extra="forbid", defer_build=False)   # built here, with every nested schema
    name: str = Field(description=f"names the results folder: {NAME_RULE}")
    seed: Seed = Field(0, description=f"an integer 0 .. {MAX_SEED}")
    seeds: list[Seed] | None = Field(None, min_length=1, max_length=MAX_SEEDS,
                                     description="run every algorithm once per seed (default: [seed])")
    workers: Count = Field(le=MAX_WORKERS)
    batch_size: Count = Field(description="per worker")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gradients: Literal["vmap", "loop"] = Field("vmap", description="batched per-worker gradients or a loop")
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=MlpConfig)
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    compute: ComputeConfig = Field(default_factory=FlopsCompute)
    stop: StopSpec = Field(default_factory=StopSpec)
    eval_every: int = Field(25, ge=1, description="rounds between evaluations")
    round_timeout: PositiveDuration | None = Field(
        None, description="a synchronous server stops waiting this long after it broadcast; "
                          "later uploads count as missing for that round")
    failures: list[WorkerFailure] = Field(default_factory=list, description="worker crashes (and rejoins)")
    algorithms: list[AlgorithmEntry] = Field(min_length=1)

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, v: Any) -> Any:
        return check_name(v) if isinstance(v, str) else v

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and len(set(v)) != len(v):
            dup = sorted({s for s in v if v.count(s) > 1})
            raise ValueError(f"repeated seeds {dup}: each seed runs once (its rows would be counted twice); "
                             "allowed: distinct integers")
        return v

    @model_validator(mode="after")
    def _check(self) -> "Scenario":
        _check_data_options(self.data)
        labels = [a.label for a in self.algorithms]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"algorithms: names must be unique; repeated: {', '.join(dup)} "
                             "(give each entry its own `name`)")
        speed = getattr(self.compute, "speed", 1.0)
        if isinstance(speed, list) and len(speed) != self.workers:
            raise ValueError(f"compute.speed: lists {len(speed)} values; allowed: one number, "
                             f"a distribution, or a list of exactly workers = {self.workers}")
        for field, spec in [("uplink", self.network.uplink), ("downlink", self.network.downlink)]:
            for q in ("bandwidth", "latency"):
                v = getattr(spec, q)
                if isinstance(v, list) and len(v) != self.workers:
                    raise ValueError(f"network.{field}.{q}: lists {len(v)} values; allowed: one value, "
                                     f"a distribution, or a list of exactly workers = {self.workers}")
        for f in self.failures:
            if f.worker >= self.workers:
                raise ValueError(f"failures: worker {f.worker} does not exist; allowed: 0 .. {self.workers - 1}")
        for a in self.algorithms:
            if getattr(a, "event_driven", False):
                from sim.eventsim import refusal   # noqa: PLC0415 (sim.eventsim imports this module)
                why = refusal(self, a)
                if why:
                    raise ValueError(why)
        for a in self.algorithms:
            if getattr(a, "decentralized", False):
                from sim.gossip import refusal as gossip_refusal   # noqa: PLC0415 (it imports this module)
                why = gossip_refusal(self, a)
                if why:
                    raise ValueError(why)
                if a.wait_for is not None or a.late is not None:
                    raise ValueError(f"algorithms: {a.label}: wait_for and late need a parameter-server algorithm")
                if a.graph.kind != "graphml":        # a GraphML graph is checked when the file is read
                    for seed in self.run_seeds:
                        a.check(self.workers, seed)   # a disconnected graph, a bad size or mixing: refused here
        for a in self.algorithms:
            if a.late == "apply" and not (a.late_apply and (a.wait_for is not None or self.round_timeout)):
                raise ValueError(f"algorithms: {a.label}: late: apply needs a parameter-server algorithm (sgd, "
                                 "momentum_sgd, adam, amsgrad, topk_ef_sgd, comp_ams, qadam, efficient_adam, "
                                 "dist_ef_sgd) with wait_for or round_timeout")
            if a.wait_for is None:
                continue
            if a.wait_for > self.workers:
                raise ValueError(f"algorithms: {a.label}: wait_for: {a.wait_for} uploads a round from "
                                 f"{self.workers} workers; allowed: 1 .. workers = {self.workers}")
            if getattr(a, "event_driven", False) or self.network.topology.collective == "ring":
                raise ValueError(f"algorithms: {a.label}: wait_for needs a synchronous algorithm on a "
                                 "parameter-server topology (star, hierarchical, graph)")
        if self.network.topology.collective == "ring" and (self.failures or self.round_timeout):
            raise ValueError("network.topology: failures and round_timeout need a parameter-server topology "
                             "(star, hierarchical, graph); a ring has no server to drop workers")
        return self

    @property
    def run_seeds(self) -> list[int]:
        return list(self.seeds) if self.seeds else [self.seed]

    def dump(self) -> dict[str, Any]:
        """The resolved scenario, units written back ("1 Gbps"); unset optional
        fields (None) are left out, so the dump loads back to the same scenario."""
        return self.model_dump(mode="json", exclude_none=True)


def _check_data_options(data: DataSpec) -> None:
    """data.* options only for the loaders that take them; natural with hf_disk / parquet needs a client column."""
    from sim.learn.data import DATASETS, loader_options
    accepted = loader_options(data.dataset)
    for name in DATA_OPTIONS:
        if getattr(data, name) is not None and name not in accepted:
            takers = [d for d in DATASETS.names() if name in loader_options(d)]
            raise ValueError(f"data.{name}: dataset {data.dataset!r} takes no {name}; allowed for "
                             f"{', '.join(takers) or 'no registered dataset'}")
    if data.test_split is not None and data.test_fraction is not None:
        raise ValueError("data.test_fraction: give test_split or test_fraction, not both")
    if data.partition.kind == "natural" and "client_column" in accepted and data.client_column is None:
        raise ValueError(f"data.partition.kind: natural needs data.client_column with dataset {data.dataset!r} "
                         "(the column naming each sample's client)")


# --- loading ----------------------------------------------------------------
def _set(data: dict, dotted: str, value: Any, file: str) -> None:
    keys = dotted.split(".")
    node: Any = data
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        where = ".".join(keys[: i + 1])
        if isinstance(node, list):
            try:
                idx = int(key)
                node[idx]  # noqa: B018 - bounds check
            except (ValueError, IndexError):
                raise ConfigError(f"--set {dotted}: {where} is not an index of a list of {len(node)}",
                                  field=dotted, file=file) from None
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                node = node.setdefault(key, {})
        else:
            raise ConfigError(f"--set {dotted}: {'.'.join(keys[:i])} is not a mapping or list",
                              field=dotted, file=file)


def parse_overrides(items: list[str] | None, file: str) -> list[tuple[str, Any]]:
    out = []
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected dotted.key=value", file=file)
        key, raw = item.split("=", 1)
        try:
            value = yamlfile.loads(raw, file) if raw.strip() else ""
        except ConfigError as exc:
            if "duplicate key" in exc.message:
                raise ConfigError(f"--set {item!r}: {exc.message}", field=key.strip(), file=file) from None
            value = raw     # not YAML: the text itself (a name, a unit string)
        out.append((key.strip(), value))
    return out


def _field_path(loc: tuple) -> str:
    # pydantic puts the union tag in loc ("algorithms", 0, "sgd", "lr"); drop it.
    parts = [str(p) for p in loc if not (isinstance(p, str) and p.startswith("function-"))]
    return ".".join(parts)


def _describe(err: dict) -> tuple[str, str]:
    loc = list(err["loc"])
    typ = err["type"]
    msg = err["msg"]
    inp = err.get("input")
    # Discriminated unions insert the tag value into loc: remove it.
    clean = [p for i, p in enumerate(loc) if not (i > 0 and isinstance(p, str) and _is_tag(p))]
    path = _field_path(tuple(clean))
    if typ in ("union_tag_invalid", "union_tag_not_found"):
        ctx = err.get("ctx", {})
        key = str(ctx.get("discriminator", "kind")).strip("'")
        path = f"{path}.{key}" if path else key
        if typ == "union_tag_not_found":
            return path, f"missing; allowed: {_allowed_tags(loc, key)}"
        what = ctx.get("registry")
        if what:            # a registry's union (sim/registry.py): every registered kind, and plugins
            return path, f"unknown {what} {ctx.get('tag')!r}; allowed: {ctx.get('expected_tags')}; {PLUGIN_HINT}"
        return path, f"unknown value {ctx.get('tag')!r}; allowed: {ctx.get('expected_tags')}"
    if typ == "extra_forbidden":
        return path, "unknown key (not allowed here; check the spelling)"
    if typ == "missing":
        return path, "required field is missing"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if typ not in ("value_error",) and inp is not None and not isinstance(inp, (dict, list)):
        msg = f"{msg} (got {inp!r})"
    if not path:  # a check across fields says which field it is about: "field.path: message"
        m = re.match(r"^([A-Za-z_][\w.]*): (.*)$", msg, re.S)
        if m:
            path, msg = m.groups()
    return path, msg


_TAGS: set[str] = set()


def _allowed_tags(loc: list, key: str) -> str:
    if key == "dist":
        return "'lognormal', 'uniform', 'choice'"
    return "see `python run_sim.py list`"


def _is_tag(p: str) -> bool:
    if not _TAGS:
        # the kinds of the static unions (the built-ins): only they put their tag into an error's loc;
        # a plugin's kind is validated by its class (sim/registry.py), so its name is never a tag
        from algorithms.compressors import CompressorConfig
        from algorithms.skiprules import SkipRuleConfig
        for union in (AlgorithmEntry, CompressorConfig, SkipRuleConfig, ModelSpec, ComputeConfig, Topology):
            _TAGS.update(*(m.static for m in union.__metadata__ if isinstance(m, RegistryUnion)))
        _TAGS.update({"iid", "dirichlet", "shards", "natural", "lognormal", "uniform", "choice", "one", "list", "dist"})
    return p in _TAGS


def validate(data: Any, file: str) -> Scenario:
    if not isinstance(data, dict):
        raise ConfigError("the scenario must be a YAML mapping (key: value pairs)", file=file)
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise problems_error([_describe(err) for err in exc.errors()], file) from None


def problems_error(problems: list[tuple[str, str]], file: str) -> ConfigError:
    """One ConfigError for the (field, message) problems of a file: the field
    named when there is one problem, a list of them otherwise."""
    if len(problems) == 1:
        path, msg = problems[0]
        return ConfigError(msg, field=path or None, file=file)
    lines = [f"{path or '(top level)'}: {msg}" for path, msg in problems]
    return ConfigError(f"{len(lines)} problems:\n  " + "\n  ".join(lines), file=file)


def read_yaml(path: str | Path) -> Any:
    """A YAML file's data; every fault (missing, a folder, unreadable, not UTF-8,
    malformed, a duplicate key) is a ConfigError naming the file (sim/study/yamlfile.py)."""
    return yamlfile.read(path)


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    """Read, override and validate a scenario file."""
    from sim.study.inputs import local_path
    p = Path(path)
    # on a Ray node: the copy it received; paths (and relative trace/GraphML paths) stay the driver's
    return scenario_from_data(read_yaml(local_path(p)), str(path), p.resolve().parent, overrides)


def scenario_from_data(data: Any, file: str, base: Path, overrides: list[str] | None = None) -> Scenario:
    """Override and validate scenario data read from ``file`` (a path, or a label such as
    ``<dict>`` for data given in Python); trace and GraphML paths are relative to ``base``.
    ``data`` is changed in place by the overrides."""
    if data is None:
        data = {}
    for key, value in parse_overrides(overrides, file):
        if not isinstance(data, dict):
            break
        _set(data, key, value, file)
    if overrides:
        file = f"{file} (with --set {' '.join(overrides)})"
    scn = validate(data, file)
    try:
        load_network_files(scn, base)
    except ConfigError as exc:
        raise exc.with_file(file)
    return scn


def load_network_files(scn: Scenario, base: Path) -> None:
    """Read trace and GraphML files named in the network section (paths are
    relative to the scenario's folder)."""
    net = scn.network
    for name in ("uplink", "downlink", "server"):
        getattr(net, name).load_trace(base, f"network.{name}.trace")
    if hasattr(net.topology, "load_files"):
        net.topology.load_files(base)
    for k, a in enumerate(scn.algorithms):          # a gossip algorithm's communication graph from GraphML
        graph = getattr(a, "graph", None)
        if graph is not None and graph.kind == "graphml":
            graph.file = str((base / graph.file).resolve())
            try:
                for seed in scn.run_seeds:
                    a.check(scn.workers, seed)
            except ValueError as exc:
                raise ConfigError(str(exc), field=f"algorithms.{k}.graph.file") from None
