"""Execution backends: run independent jobs (sweep points) here or on a Ray cluster.

``run_jobs(jobs, backend, workers, address, on_done)`` runs every :class:`Job`
and calls ``on_done(key, result)`` in the driver (this process) as each one
finishes, **in completion order** (with one local worker that is submission
order).  A job's function is called as ``fn(*args, out_dir=...)`` and returns a
JSON-able dict such as ``{"status": "done", "error": ""}``; a job that raises
is reported as ``{"status": "failed", "error": "<Type>: <message>"}`` and the
other jobs go on, on every backend.

Interruption: a job that returns ``{"status": "interrupted"}`` (a sweep point
that caught Ctrl-C, see sim/study/runner.py) or a ``KeyboardInterrupt`` in the
driver (Ctrl-C; the sweep turns SIGTERM into one) stops the whole run: no job
is started any more, the running ones are stopped (below), each of them is
reported to ``on_done`` (``interrupted``, or whatever it returned if it
finished meanwhile), and ``run_jobs`` raises ``KeyboardInterrupt``.  Jobs that
never started are not reported.

``local``
    ``workers == 1`` runs the jobs in this process, in order.  ``workers > 1``
    runs them in that many *spawned* processes (not forked: a forked child of a
    process whose torch thread pool is running can deadlock in OpenMP), at most
    ``workers`` jobs handed to them at a time.  Each job writes straight into
    its ``out_dir``.  A worker that dies (killed for memory, a crash in native
    code) breaks the pool, and every job in it fails alike: those jobs run once
    more, one at a time, in a fresh pool; a job that breaks it again is reported
    failed (``BrokenProcessPool``) and the others go on.

    Signals: a worker ignores SIGINT between jobs; during a job SIGINT or
    SIGTERM becomes one ``KeyboardInterrupt`` in it (the job flushes what it has
    and returns ``interrupted``; further signals are ignored until it has).
    When the driver is interrupted it sets a shared stop flag (a job that has
    not begun returns at once), sends SIGINT to every worker (so a SIGTERM sent
    to the driver alone reaches them too; after Ctrl-C in a terminal, which
    signals the whole process group, the second signal is ignored), waits up to
    ``STOP_GRACE_S`` seconds for them and kills what is left.  A worker exits as
    soon as its parent dies (``kill -9`` of the driver leaves no orphans): it
    asks Linux for ``PR_SET_PDEATHSIG`` (SIGKILL) and polls ``os.getppid()``
    every half second, on every platform.

``ray``
    Every job is a Ray task asking for ``num_cpus`` CPUs and ``num_gpus`` GPUs
    (see :func:`resources`).  With ``address`` (``"auto"``, ``"HOST:6379"`` or
    ``"ray://HOST:10001"``) it joins that running cluster and only disconnects
    at the end; without one it starts a private local instance with
    ``workers`` CPUs (GPUs as Ray detects them, no dashboard, a 256 MiB object
    store, worker output not copied to this terminal) and shuts it down at the
    end.  ``RAY_ADDRESS`` is not consulted when no address is given: pass
    ``--address auto`` to use the cluster it names.  If Ray is already
    initialised in this process (by :func:`session`, or by the caller), that
    connection is used and left open.  ``workers`` only sizes a local instance;
    on a cluster the cluster's free resources decide how many points run at
    once, and points are spread over the nodes (``SPREAD``: one per node before
    two on one).

    Joining (sim/study/rayconnect.py): the address, Ray's token authentication
    (``RAY_AUTH_MODE=token`` with ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
    ``~/.ray/auth_token``) and the cluster's answer are checked within
    ``connect_timeout`` seconds; a cluster that cannot be joined is a
    ConfigError (field ``--address``) saying what failed, where, and the fix.
    :func:`session` joins before the caller writes anything (a sweep: before
    its folder exists).

    Node loss: a task whose worker or node dies (a machine lost, the OOM
    killer) is run again by Ray, on a node that is alive, at most ``retries``
    times (Ray's ``max_retries``; the job's own exceptions are never retried:
    they are results); then it is reported failed with Ray's error and the
    number of tries.

    Resources: a job is refused at once (failed, not scheduled) when it needs
    more CPUs or GPUs than a private instance has, or more memory
    (``memory_bytes``, the estimate of sim/learn/memory.py; CPU jobs) than the
    largest node offers tasks; a CPU job also asks Ray for that memory, so two
    that do not fit together are not put on one node.  On a cluster a job
    asking for more CPUs or GPUs than it has now is submitted anyway (an
    autoscaler may add such a node) after a warning on stderr.  Each task sets
    torch's intra-op threads to the CPUs it asked for.

    On interruption every unfinished task is cancelled with
    ``ray.cancel(ref, force=True)`` (its worker process is killed; a task
    writes nothing on the driver until it has finished, so nothing partial
    lands in ``out_dir``), waited for (at most ``CANCEL_WAIT_S``) until Ray
    says it ended, reported ``interrupted``, and then Ray is shut down
    (or, for a connection that was open before, left open).  A driver killed
    outright (``kill -9``) takes its tasks with it: Ray ends a dead driver's job.

    Results are *gathered*: a task runs ``fn`` with ``out_dir`` set to a fresh
    temporary folder on whichever node runs it, then returns the result and
    every regular file under that folder (relative path -> bytes; empty
    folders and symlinks are not carried).  The driver writes those files into
    a fresh folder beside the job's ``out_dir`` (in the order they were last
    modified on the worker) and renames it into place once all are there, and
    only then calls ``on_done``: a job's files appear whole or not at all, and
    a sweep's done marker is written after them.  On a cluster the result also
    has ``node``: the id of the node that ran it.

What a Ray cluster's nodes need: the same Python, with commsim's dependencies
(torch included, a CUDA build on GPU nodes) and Ray.  What a job reads travels
with it (sim/study/shipping.py): the driver's own commsim code (so every node
runs exactly the driver's code, installed there or not), and the job's
``paths`` (a sweep point's scenario file, bandwidth traces, GraphML files and
local data roots) plus ``extra_paths``, sent as the connection's
``runtime_env`` working directory.  A point reads those copies but records the
driver's paths (sim/study/inputs.py), so its files are the same on every node.
A path too large to send must be at the same absolute path on every node (a
shared filesystem); one found in neither place fails the job with a message
naming it.  A private local instance is started with the driver's own import
path (``sys.path`` folders outside the Python installation, passed as
``PYTHONPATH``) instead, so, like the spawned processes of the local backend,
it can run whatever the driver can import.  A task whose function cannot be
loaded on the node is reported failed with the import error.
"""
from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from sim.errors import ConfigError, interrupted_by
from sim.study.rayconnect import CONNECT_TIMEOUT_S     # Ray: seconds to join a cluster or say why not

BACKENDS = ("local", "ray")
RAY_MISSING = ("--backend ray needs Ray, an optional extra: pip install '.[ray]' "
               "(or pip install 'ray[default]')")
CANCEL_WAIT_S = 10.0   # on interruption: how long to wait for force-cancelled Ray tasks to die
OBJECT_STORE_BYTES = 256 * 1024 ** 2   # a private local instance's object store (results pass through it)
STOP_GRACE_S = 20.0                    # after an interruption: how long running local jobs get to stop
PARENT_POLL_S = 0.5                    # a local worker checks this often that its parent is alive
RETRIES = 2                            # Ray: a task whose node or worker dies runs again at most this often


@dataclass(frozen=True)
class Job:
    key: int                 # the point index
    fn: Callable[..., dict]  # module-level (picklable); called as fn(*args, out_dir=str) -> json-able dict
    args: tuple
    out_dir: str             # where the job's files must end up on this (driver) machine
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_bytes: int | None = None           # Ray: the estimated peak memory (refused if no node has it)
    paths: tuple[tuple[str, str], ...] = ()   # Ray: (field, path) of the files it reads (sent to the nodes)


def _noop(key: int, result: dict) -> None:
    pass


def resources(scenario: Any, gpus_per_point: float = 1.0, cpus_per_point: float = 1.0) -> tuple[float, float]:
    """(num_cpus, num_gpus) a sweep point asks a Ray cluster for.

    ``cpus_per_point`` CPUs (default 1: a point is one process; under Ray its
    torch runs that many intra-op threads).  ``gpus_per_point`` of a GPU (default
    a whole one; a fraction lets several points share one) when the scenario's
    ``device`` is ``cuda``, or ``auto`` and this (driver) process sees CUDA;
    otherwise none.  ``scenario`` is a Scenario or a dict with an optional
    ``device``.
    """
    device = scenario.get("device", "auto") if isinstance(scenario, dict) else getattr(scenario, "device", "auto")
    if device == "cuda":
        return float(cpus_per_point), float(gpus_per_point)
    if device == "auto":
        import torch
        if torch.cuda.is_available():
            return float(cpus_per_point), float(gpus_per_point)
    return float(cpus_per_point), 0.0


def check_point_resources(gpus_per_point: float, cpus_per_point: float, retries: int) -> None:
    """ConfigError for --gpus-per-point, --cpus-per-point or --retries out of range."""
    if not (gpus_per_point > 0 and (gpus_per_point <= 1 or float(gpus_per_point).is_integer())):
        raise ConfigError(f"--gpus-per-point {gpus_per_point:g} is not allowed; allowed: a fraction in (0, 1] "
                          "(points share a GPU) or a whole number of GPUs", field="--gpus-per-point")
    if not (cpus_per_point > 0 and (cpus_per_point <= 1 or float(cpus_per_point).is_integer())):
        raise ConfigError(f"--cpus-per-point {cpus_per_point:g} is not allowed; allowed: a fraction in (0, 1] "
                          "or a whole number of CPUs", field="--cpus-per-point")
    if retries < 0:
        raise ConfigError(f"--retries {retries} is not allowed; allowed: 0 or more", field="--retries")


def _failed(exc: BaseException) -> dict:
    return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}


def _interrupted(why: str = "") -> dict:
    return {"status": "interrupted", "error": why}


def _call(fn: Callable[..., dict], args: tuple, out_dir: str, plugins: tuple = ()) -> dict:
    """Run one job (the driver's plugins loaded first, sim/plugins.py); an exception
    becomes a failed result (the same on every backend)."""
    try:
        if plugins:
            from sim.plugins import load_specs
            load_specs(plugins)
        return fn(*args, out_dir=out_dir)
    except Exception as exc:  # noqa: BLE001 - a failing job is recorded, the others go on
        return _interrupted() if interrupted_by(exc) else _failed(exc)


def _report(on_done: Callable[[int, dict], None], key: int, result: dict) -> None:
    """on_done; then a job that was interrupted interrupts the whole run."""
    on_done(key, result)
    if result.get("status") == "interrupted":
        raise KeyboardInterrupt


def _report_stopped(on_done: Callable[[int, dict], None], key: int, result: dict) -> None:
    """on_done while stopping: what on_done raises does not cut the stop short."""
    try:
        on_done(key, result)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - reported, the stop goes on
        if not isinstance(exc, KeyboardInterrupt):
            with contextlib.suppress(Exception):
                print(f"warning: recording job {key} while stopping failed: {type(exc).__name__}: {exc}",
                      file=sys.stderr)


def run_jobs(jobs: list[Job], backend: str = "local", workers: int = 1, address: str | None = None,
             on_done: Callable[[int, dict], None] = _noop, plugins: list[dict] | tuple = (), *,
             retries: int = RETRIES, connect_timeout: float = CONNECT_TIMEOUT_S,
             extra_paths: tuple[str, ...] = ()) -> None:
    """Run every job on ``backend`` and call ``on_done(key, result)`` here as each
    one finishes (completion order).  See the module docstring.  Ray only:
    ``retries`` (a task whose node or worker dies runs again, on another node,
    at most that many times), ``connect_timeout`` (seconds to join a cluster,
    sim/study/rayconnect.py), ``extra_paths`` (more files or folders every task
    needs, sent to the nodes with the jobs' own, sim/study/shipping.py).
    ``plugins``: the driver's ``sim.plugins.worker_specs()``, loaded by every
    worker process and Ray task before its job; file plugins travel to the
    nodes with the jobs' files (and are found there through ``local_path``)."""
    plugins = tuple(plugins)
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}", field="--backend")
    if workers < 1:
        raise ConfigError("--workers must be >= 1", field="--workers")
    if retries < 0:
        raise ConfigError(f"--retries {retries} is not allowed; allowed: 0 or more", field="--retries")
    if backend == "ray":
        _run_ray(list(jobs), workers, address, on_done, retries, connect_timeout, tuple(extra_paths), plugins)
    else:
        _run_local(list(jobs), workers, on_done, plugins)


# --- local ----------------------------------------------------------------------
def _run_local(jobs: list[Job], workers: int, on_done: Callable[[int, dict], None], plugins: tuple = ()) -> None:
    if not jobs:
        return
    if workers == 1:
        for job in jobs:
            try:
                result = _call(job.fn, job.args, job.out_dir)
            except KeyboardInterrupt:       # Ctrl-C outside what the job catches itself
                _report_stopped(on_done, job.key, _interrupted())
                raise
            _report(on_done, job.key, result)
        return
    # spawn, not fork: a forked child of a process whose torch thread pool is
    # running can deadlock in OpenMP
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    n = min(workers, len(jobs))
    # torch threads per process: the cores shared out, at least 1.  Each process
    # otherwise takes every core, and n processes oversubscribe them (2 processes
    # x 2 threads on 2 cores ran a torch call about 10x slower, issue 15).
    threads = max(1, (os.cpu_count() or 1) // n)

    def new_pool() -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_worker_init,
                                                      initargs=(os.getpid(), stop, threads))
    pool = new_pool()
    queue = list(jobs)
    running: dict[concurrent.futures.Future, Job] = {}
    retried: set[int] = set()
    killed = False
    try:
        while queue or running:
            while room(queue, running, retried, n):
                job = queue.pop(0)
                try:
                    fut = pool.submit(_worker_call, job.fn, job.args, job.out_dir, plugins)
                except concurrent.futures.process.BrokenProcessPool:
                    # the pool broke between two jobs: go on in a new one
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = new_pool()
                    fut = pool.submit(_worker_call, job.fn, job.args, job.out_dir, plugins)
                running[fut] = job
            done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            retry = []
            for fut in sorted(done, key=lambda f: running[f].key):
                job = running.pop(fut)
                lost = fut.cancelled() or isinstance(fut.exception(), concurrent.futures.process.BrokenProcessPool)
                if lost and job.key not in retried:
                    # a worker died and broke the pool: every job in it fails alike, so the one that
                    # died cannot be told from the others; each runs once more, alone, in a fresh
                    # pool, and only one that breaks it again is reported failed
                    retried.add(job.key)
                    retry.append(job)
                    continue
                _report(on_done, job.key, _outcome(fut))
            if retry:
                pool.shutdown(wait=False, cancel_futures=True)
                pool = new_pool()
                queue[:0] = retry
    except BaseException:
        stop.set()
        killed = _stop_workers(pool, running, on_done)
        raise
    finally:
        pool.shutdown(wait=not killed, cancel_futures=True)


def room(queue: list[Job], running: dict, retried: set[int], n: int) -> bool:
    """Whether the next queued job may start now.  No job waits in the pool's
    own queue (so stopping is exact); a job run again after a broken pool runs
    alone, so that if it breaks the pool again no other job goes down with it."""
    if not queue:
        return False
    if queue[0].key in retried or any(j.key in retried for j in running.values()):
        return not running
    return len(running) < n


def _outcome(fut: concurrent.futures.Future, stopping: bool = False) -> dict:
    try:
        return fut.result()
    except KeyboardInterrupt:
        return _interrupted()
    except Exception as exc:  # noqa: BLE001 - e.g. BrokenProcessPool, an unpicklable fn
        return _interrupted(f"{type(exc).__name__}: {exc}") if stopping else _failed(exc)


def _stop_workers(pool: concurrent.futures.ProcessPoolExecutor, running: dict, on_done) -> bool:
    """Interrupt the running jobs, wait for them (bounded), report them; kill
    the workers that did not stop.  Returns whether any was killed."""
    procs = list(getattr(pool, "_processes", None) or {})   # pid -> Process (CPython's executor)
    for pid in procs:
        try:
            os.kill(pid, signal.SIGINT)
        except OSError:
            pass
    try:
        concurrent.futures.wait(running, timeout=STOP_GRACE_S)
    except KeyboardInterrupt:           # interrupted again: stop waiting
        pass
    late = [f for f in running if not f.done()]
    for fut in sorted(running, key=lambda f: running[f].key):
        if fut in late:
            _report_stopped(on_done, running[fut].key,
                            _interrupted(f"did not stop within {STOP_GRACE_S:g} s of the interruption; killed"))
        else:
            _report_stopped(on_done, running[fut].key, _outcome(fut, stopping=True))
    running.clear()
    if not late:
        return False
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            proc.kill()
        except Exception:  # noqa: BLE001 - already gone
            pass
    return True


# In a local worker process (set by _worker_init):
_STOP: Any = None


def _worker_init(parent: int, stop: Any, threads: int = 1) -> None:
    """Pool initializer: signals between jobs, the stop flag, exit with the
    parent, and this process's share of the cores as torch threads."""
    global _STOP
    _STOP = stop
    import torch
    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # between jobs; a job turns it into KeyboardInterrupt
    _exit_with_parent(parent)


def _exit_with_parent(parent: int) -> None:
    """Exit this process as soon as ``parent`` (the driver) is gone."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)        # PR_SET_PDEATHSIG
        except Exception:  # noqa: BLE001 - the polling below still works
            pass
    watched = os.getppid()
    if watched != parent:
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            os._exit(1)                                   # died before we got here
        except OSError:
            pass                                          # alive, not ours to signal: watch our real parent

    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_S)
            if os.getppid() != watched:
                os._exit(1)

    threading.Thread(target=watch, name="commsim-parent-watch", daemon=True).start()


def _worker_call(fn: Callable[..., dict], args: tuple, out_dir: str, plugins: tuple = ()) -> dict:
    """One job in a local worker: SIGINT/SIGTERM raise KeyboardInterrupt once,
    a job that begins after the driver was interrupted does not run."""
    fired: list[int] = []

    def interrupt(signum, frame):
        if not fired:
            fired.append(signum)
            raise KeyboardInterrupt

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if _STOP is not None and _STOP.is_set():       # checked after the handlers are in place
            return _interrupted("not started: the run was interrupted")
        return _call(fn, args, out_dir, plugins)
    except KeyboardInterrupt:
        return _interrupted()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# --- ray ------------------------------------------------------------------------
def _gathered(fn: Callable[..., dict], args: tuple, key: int, cpus: float = 1.0,
              paths: tuple = (), plugins: tuple = ()) -> tuple[dict, dict[str, bytes], str]:
    """The Ray task: run the job in a temporary folder on this node, with torch
    using the CPUs the task was given and the job's files where they reached
    this node, and return (result, {relative posix path: bytes} in the order
    the files were last modified, this node's id)."""
    import ray
    import torch
    from sim.study.inputs import located
    from sim.study.shipping import MissingInput, node_paths
    torch.set_num_threads(max(1, int(cpus)))
    try:
        node = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - only for the record
        node = ""
    try:
        where = node_paths(paths, f"node {node[:8]}" if node else "")
    except MissingInput as exc:
        return {"status": "failed", "error": str(exc)}, {}, node
    tmp = tempfile.mkdtemp(prefix=f"commsim-job{key}-")
    try:
        with located(where):
            result = _call(fn, args, tmp, plugins)
        root = Path(tmp)
        found = [(p.stat().st_mtime_ns, p.relative_to(root).as_posix(), p) for p in root.rglob("*")
                 if p.is_file() and not p.is_symlink()]
        return result, {rel: p.read_bytes() for _, rel, p in sorted(found)}, node
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_files(out_dir: str, files: dict[str, bytes]) -> None:
    """Write a gathered job's files under ``out_dir``, all or none: into a
    fresh folder beside it, renamed into place once every file is there (when
    ``out_dir`` does not exist yet or is empty; into an ``out_dir`` holding files
    already, each file is written whole and renamed into place)."""
    if not files:
        return
    root = Path(out_dir)
    rels = []
    for rel in files:
        parts = PurePosixPath(rel).parts
        if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
            raise ValueError(f"refusing to write {rel!r} outside {out_dir}")
        rels.append(parts)
    root.parent.mkdir(parents=True, exist_ok=True)
    whole = not root.exists() or (root.is_dir() and not any(root.iterdir()))
    stage = Path(tempfile.mkdtemp(prefix=f".{root.name}.part-", dir=root.parent)) if whole else root
    try:
        for parts, data in zip(rels, files.values()):
            dest = stage.joinpath(*parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(dest.name + ".part")
            part.write_bytes(data)
            os.replace(part, dest)
        if whole:
            os.chmod(stage, 0o777 & ~_umask())        # mkdtemp makes it 0700; a folder made by mkdir would not be
            os.replace(stage, root)                   # an empty root is replaced, atomically
    except BaseException:
        if whole:
            shutil.rmtree(stage, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_LOST = ("WorkerCrashedError", "NodeDiedError", "ObjectLostError", "OwnerDiedError", "LocalRayletDiedError",
         "ObjectReconstructionFailedError", "ObjectReconstructionFailedMaxAttemptsExceededError", "OutOfMemoryError")


def _ray_error(exc: BaseException, retries: int = 0) -> dict:
    """A failed result for a task that Ray could not run (the job's own
    exceptions are caught inside the task)."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip()
    res = {"status": "failed", "error": f"{type(cause).__name__}: {text}"}
    if "No module named" in text or isinstance(cause, ImportError):
        first = text.splitlines()[0] if text else ""
        res["error"] = (f"{type(cause).__name__}: {first} (the Ray node cannot import the job's code: its "
                        f"dependencies must be installed there, see sim/study/backends.py)\n{text}")
    elif type(exc).__name__ in _LOST or type(cause).__name__ in _LOST:
        first = text.splitlines()[0] if text else ""
        res["error"] = (f"{type(cause).__name__}: the node or worker running it was lost, {retries + 1} time(s) "
                        f"(--retries {retries}): {first}\n{text}")
    return res


def _driver_pythonpath() -> str:
    """The folders on this process's import path outside the Python installation."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    out: list[str] = []
    for entry in sys.path:
        path = os.path.realpath(entry or os.getcwd())
        if (os.path.isdir(path) and path not in out
                and not any(path == q or path.startswith(q + os.sep) for q in prefixes)):
            out.append(path)
    return os.pathsep.join(out)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_MISSING, field="--backend") from None
    return ray


@contextlib.contextmanager
def session(backend: str, address: str | None, connect_timeout: float = CONNECT_TIMEOUT_S,
            jobs: list[Job] = (), extra_paths: tuple[str, ...] = ()):
    """Within the block, the Ray cluster at ``address`` is joined (for
    ``backend == "ray"`` with an address; otherwise nothing is done), so that a
    caller learns that it cannot be joined (a ConfigError) before it writes
    anything; run_jobs inside uses that connection.  What ``jobs`` (their
    ``paths``) and ``extra_paths`` need is sent to the nodes as the
    connection's runtime_env (sim/study/shipping.py): pass every job that may
    run in the block.  Disconnects at the end."""
    if backend != "ray" or not address:
        yield
        return
    ray = _import_ray()
    if ray.is_initialized():
        yield
        return
    shipment = _join(ray, address, connect_timeout, jobs, extra_paths)
    try:
        yield
    finally:
        ray.shutdown()
        shipment.close()


def _join(ray: Any, address: str, connect_timeout: float, jobs, extra_paths) -> Any:
    """Connect to the cluster with the runtime_env for ``jobs``; returns the Shipment (close it after)."""
    from sim.study.rayconnect import connect
    from sim.study.shipping import runtime_env_for, warn_not_sent
    term_handler = signal.getsignal(signal.SIGTERM)    # ray.init replaces it with sys.exit: a sweep's comes back
    shipment = runtime_env_for(jobs, extra_paths)
    try:
        connect(address, connect_timeout, shipment.runtime_env)
    except BaseException:
        shipment.close()
        raise
    finally:
        if callable(term_handler) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, term_handler)
    warn_not_sent(shipment)
    return shipment


def _largest_node_memory(ray: Any) -> float | None:
    """The most memory (bytes) that one alive node offers tasks, as Ray counts it."""
    try:
        mem = [n.get("Resources", {}).get("memory", 0.0) for n in ray.nodes() if n.get("Alive")]
    except Exception:  # noqa: BLE001 - unknown: nothing is refused
        return None
    return max(mem) if mem else None


def _refusal(job: Job, have: dict, memory: float | None, private: bool) -> tuple[str | None, list[str]]:
    """(why the job is refused before it is scheduled, or None; what it asks that no node has now)."""
    short = [f"{want:g} {name}(s), it has {have.get(name, 0):g}"
             for name, want in (("CPU", job.num_cpus), ("GPU", job.num_gpus)) if want > have.get(name, 0)]
    if short and private:
        return "the local Ray instance cannot run this job: it asks for " + "; ".join(short), short
    if job.memory_bytes and not job.num_gpus and memory is not None and job.memory_bytes > memory:
        from sim.learn.memory import gib
        where = "the local Ray instance" if private else "the largest node of the Ray cluster"
        return (f"the point needs at least {gib(job.memory_bytes)} of memory (the estimate 4 * d * (n + 4) bytes of "
                f"sim/learn/memory.py), more than the {gib(memory)} that {where} offers tasks; allowed: a smaller "
                "model or fewer workers, or a node with more memory"), short
    return None, short


def _run_ray(jobs: list[Job], workers: int, address: str | None, on_done: Callable[[int, dict], None],
             retries: int = RETRIES, connect_timeout: float = CONNECT_TIMEOUT_S, extra_paths: tuple = (),
             plugins: tuple = ()) -> None:
    ray = _import_ray()
    # file plugins travel with the jobs' files (a private instance shares this machine's paths)
    plugin_files = tuple(s["file"] for s in plugins if s.get("how") == "file")
    extra_paths = tuple(extra_paths) + tuple(f for f in plugin_files if f not in extra_paths)
    if not jobs:
        return
    connected_here = not ray.is_initialized()
    private = not address
    shipment = None
    if connected_here:
        if address:
            shipment = _join(ray, address, connect_timeout, jobs, extra_paths)
        else:
            term_handler = signal.getsignal(signal.SIGTERM)
            # address="local": always a new private instance (RAY_ADDRESS is not consulted)
            ray.init(address="local", num_cpus=workers, include_dashboard=False,
                     object_store_memory=OBJECT_STORE_BYTES, log_to_driver=False, logging_level=logging.ERROR,
                     runtime_env={"env_vars": {"PYTHONPATH": _driver_pythonpath()}})
            if callable(term_handler) and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, term_handler)
    pending: dict[Any, Job] = {}
    try:
        options: dict[str, Any] = {"max_retries": retries, "retry_exceptions": False}
        if not private:
            options["scheduling_strategy"] = "SPREAD"          # a point per node before two on one
        have = ray.cluster_resources()
        memory = _largest_node_memory(ray)
        task = ray.remote(_gathered)
        for job in jobs:
            why, short = _refusal(job, have, memory, private)
            if why:
                on_done(job.key, {"status": "failed", "error": why})
                continue
            if short:
                print(f"warning: job {job.key} asks for {'; '.join(short)} in the Ray cluster now; "
                      "it waits until such a node joins", file=sys.stderr)
            extra = {"memory": int(job.memory_bytes)} if job.memory_bytes and not job.num_gpus else {}
            ref = task.options(num_cpus=job.num_cpus, num_gpus=job.num_gpus, name=f"commsim-job{job.key}",
                               **options, **extra).remote(job.fn, job.args, job.key, job.num_cpus,
                                                      () if private else tuple(job.paths) + plugin_files, plugins)
            pending[ref] = job
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                job = pending.pop(ref)
                node = ""
                try:
                    result, files, node = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a task Ray could not run (import error, node lost, OOM)
                    result, files = _ray_error(exc, retries), {}
                _write_files(job.out_dir, files)
                if node and not private:
                    result = {**result, "node": node}
                _report(on_done, job.key, result)
    except BaseException:
        # interrupted (or on_done failed): kill every task we started that has not finished
        for ref in pending:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - best effort (finished meanwhile, node gone)
                pass
        try:   # force-cancel kills asynchronously: wait (bounded) until the killed tasks are gone
            ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_WAIT_S)
        except Exception:  # noqa: BLE001 - best effort
            pass
        for ref in list(pending):
            _report_stopped(on_done, pending.pop(ref).key, _interrupted("cancelled: the run was interrupted"))
        raise
    finally:
        if connected_here:
            ray.shutdown()               # stops a private instance; only disconnects from a cluster
        if shipment is not None:
            shipment.close()
