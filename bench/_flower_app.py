"""The Flower side of bench/bench_flower.py: a ServerApp running FedAvg and a
ClientApp taking one SGD step, for ``flwr.simulation.run_simulation``
(Flower 1.42's Message API: ``flwr.serverapp``, ``flwr.clientapp``).

A module of its own (not the bench script, which runs as ``__main__``) so
that Ray's actors import the ClientApp's functions by name instead of
receiving pickled copies with every message.

Client i in server round s (1-based) is commsim's worker i in round s - 1:
the same shard (the iid partition of the same data set with the same seed)
and the same b samples of it (commsim's counter-based batch stream), the
same module and initial parameters, one ``torch.optim.SGD`` step at the
server's lr.  It replies with the module's parameters and num-examples = b,
so FedAvg's weighted mean is theta - lr mean_i g_i: commsim's dense SGD.

Generous to Flower: each Ray actor keeps the data, its partition and one
module across messages (Flower's tutorials load data and build the model
for every message), and samples its batch by indexing, not a DataLoader.
"""
from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

_CACHE: dict[tuple[int, int, int], dict] = {}   # per actor process: (n, seed, batch) -> data, shards, module


def _client_state(n: int, seed: int, batch: int) -> dict:
    key = (n, seed, batch)
    if key not in _CACHE:
        import bench_flower as bf                    # bench/ is on the actors' path (Ray passes sys.path)
        from sim.learn.data import make_shards, partition
        from sim.learn.models import MlpConfig
        from sim.learn.rng import WorkerStreams
        ds = bf.bench_dataset(n, batch)
        scn = bf.scenario(n, 2, "cpu", batch)
        part = scn.data.partition
        parts = partition(ds.y_train.numpy(), n, part.kind, seed, **part.model_dump(exclude={"kind"}))
        _CACHE.clear()
        _CACHE[key] = {"x": ds.x_train, "y": ds.y_train, "shards": make_shards(parts),
                       "streams": WorkerStreams(seed, n),
                       "module": MlpConfig(hidden=[512]).build(ds.input_shape, ds.num_classes)}
    return _CACHE[key]


app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    from sim.learn.rng import TAG_BATCH
    cfg = msg.content["config"]
    n, seed, batch, lr = int(cfg["n"]), int(cfg["seed"]), int(cfg["batch"]), float(cfg["lr"])
    i = int(context.node_config["partition-id"])
    t = int(cfg["server-round"]) - 1
    st = _client_state(n, seed, batch)
    sh = st["shards"]
    local = st["streams"].randint_at(TAG_BATCH, torch.tensor([i]), torch.tensor([t]), sh.size[i:i + 1], batch)
    idx = sh.index[i, local[0]]
    model = st["module"]
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    opt.zero_grad()
    loss = F.cross_entropy(model(st["x"][idx]), st["y"][idx])
    loss.backward()
    opt.step()
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"train_loss": float(loss.detach()), "num-examples": batch})})
    return Message(content=content, reply_to=msg)


def simulate(n: int, rounds: int, seed: int, batch: int, client_cpus: float) -> dict:
    """Run ``rounds`` FedAvg rounds over n simulated clients.  Returns the
    perf_counter stamps taken by evaluate_fn (before round 1, then after each
    round), the flat parameters after round 1, and the number of Ray actors."""
    import bench_flower as bf
    scn = bf.scenario(n, rounds, "cpu", batch)
    world_model = _template(n, seed, batch)
    theta0 = world_model.init_params(seed)
    lr = float(bf.sgd_config(scn).lr)
    stamps: list[float] = []
    kept: dict = {}

    def evaluate_fn(server_round: int, arrays: ArrayRecord):
        stamps.append(time.perf_counter())
        if server_round == 1:
            kept["arrays"] = arrays                     # flattened after the run, outside the timing
        return None

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(world_model.unflatten(theta0.clone())),
                       num_rounds=rounds,
                       train_config=ConfigRecord({"n": n, "seed": seed, "batch": batch, "lr": lr}),
                       evaluate_fn=evaluate_fn)

    logging.getLogger("flwr").setLevel(logging.WARNING)
    run_simulation(server_app=server, client_app=app, num_supernodes=n,
                   backend_config={"client_resources": {"num_cpus": client_cpus, "num_gpus": 0.0}})
    if len(stamps) != rounds + 1 or "arrays" not in kept:
        raise RuntimeError(f"the Flower run did {len(stamps) - 1} of {rounds} rounds")
    sd = kept["arrays"].to_torch_state_dict()
    theta1 = torch.cat([sd[b.name].reshape(-1) for b in world_model.blocks])
    import os
    actors = max(1, int((os.cpu_count() or 1) // client_cpus))
    return {"stamps": stamps, "theta1": theta1, "actors": actors}


def _template(n: int, seed: int, batch: int):
    from sim.learn.data import load_dataset
    from sim.learn.models import MlpConfig, build_model
    ds = load_dataset("mnist5k")
    return build_model(MlpConfig(hidden=[512]), ds.input_shape, ds.num_classes)
