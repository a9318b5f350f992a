"""Joining a running Ray cluster: one clear message, in bounded time, when it cannot be done.

``connect(address, timeout_s)`` checks, in this order, and raises a
ConfigError (field ``--address``: the CLI prints one line and exits 2) that
says what failed, at which address, and what to change:

1. the address form: ``auto`` (``RAY_ADDRESS``, else the cluster ``ray start``
   last started on this machine), ``HOST:PORT`` (the head's GCS port, 6379
   by default) or ``ray://HOST:PORT`` (Ray Client, 10001 by default; needs
   ``pip install 'ray[client]'``);
2. the token, before Ray is asked anything: Ray's token authentication (on by
   default for clusters started by Ray 2.60 once a token exists) sends the token
   when ``RAY_AUTH_MODE=token`` is set (for ``auto`` without ``RAY_ADDRESS``,
   also when unset and a token is found, as ``ray.init`` does), taken from ``RAY_AUTH_TOKEN``, else
   the file ``RAY_AUTH_TOKEN_PATH`` names, else ``~/.ray/auth_token`` (the
   file ``ray start --head`` and ``ray get-auth-token --generate`` write);
   token mode without a token is refused here (Ray itself would abort the
   process);
3. a TCP connection to the address, within the time left;
4. a probe in a child process (bounded by the time left, its output kept out
   of this terminal): the GCS (or the Ray Client server) answers and accepts
   the token, and, for ``HOST:PORT``, a node of that cluster runs on this
   machine (such a driver attaches to a local node; elsewhere use ``ray://``);
5. ``ray.init`` itself.

Ray retries a refused token for about 20 s and logs every retry; the probe
keeps those retries and their log lines away from the user and stops at the
deadline.  ``timeout_s`` bounds steps 3 and 4 (``--connect-timeout``,
default ``CONNECT_TIMEOUT_S``); ``ray.init`` after a good probe is quick.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sim.errors import ConfigError

CONNECT_TIMEOUT_S = 10.0
FIELD = "--address"
TOKEN_FIX = ("set RAY_AUTH_MODE=token and give the cluster's token in RAY_AUTH_TOKEN, or in a file named by "
             "RAY_AUTH_TOKEN_PATH, or in ~/.ray/auth_token (`ray get-auth-token` on the head prints it)")

# Run in a child process: sys.argv = [address, seconds]; prints one JSON line.
_PROBE = r"""
import json, sys, time
addr, left = sys.argv[1], float(sys.argv[2])
t0 = time.monotonic()
def out(**kw):
    print(json.dumps(kw), flush=True)
    sys.exit(0)
try:                            # Ray's own internals: a Ray without them is joined without the probe
    import ray._raylet as raylet
    from ray._private import services
    GcsClient, find_node = raylet.GcsClient, services.get_node_to_connect_for_driver
except (ImportError, AttributeError) as exc:
    out(ok=True, skipped=f"{type(exc).__name__}: {exc}")
try:
    client = GcsClient(address=addr)
    client.internal_kv_get(b"commsim-probe", None, timeout=max(1.0, left - (time.monotonic() - t0)))
except Exception as exc:
    auth = type(exc).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(exc)
    out(ok=False, what="auth" if auth else "gcs", error=f"{type(exc).__name__}: {exc}")
try:
    find_node(client, timeout_seconds=max(1.0, left - (time.monotonic() - t0)))
except Exception as exc:
    out(ok=False, what="node", error=f"{type(exc).__name__}: {exc}")
out(ok=True)
"""


# The same for a Ray Client address (sys.argv = [HOST:PORT, seconds]): the gRPC channel Ray Client
# opens (with the token interceptors of this environment) and one ping.
_CLIENT_PROBE = r"""
import json, sys
addr, left = sys.argv[1], float(sys.argv[2])
def out(**kw):
    print(json.dumps(kw), flush=True)
    sys.exit(0)
try:                            # Ray's own internals: a Ray without them is joined without the probe
    import grpc
    from ray._private.grpc_utils import init_grpc_channel
    from ray.core.generated import ray_client_pb2, ray_client_pb2_grpc
except (ImportError, AttributeError) as exc:
    out(ok=True, skipped=f"{type(exc).__name__}: {exc}")
channel = init_grpc_channel(addr, asynchronous=False)
try:
    grpc.channel_ready_future(channel).result(timeout=left)
    stub = ray_client_pb2_grpc.RayletDriverStub(channel)
    stub.ClusterInfo(ray_client_pb2.ClusterInfoRequest(type=ray_client_pb2.ClusterInfoType.PING), timeout=left)
except grpc.FutureTimeoutError:
    out(ok=False, what="gcs", error="TimedOut: no answer")
except grpc.RpcError as exc:
    auth = exc.code() == grpc.StatusCode.UNAUTHENTICATED or "InvalidAuthToken" in str(exc.details())
    out(ok=False, what="auth" if auth else "gcs", error=f"{exc.code().name}: {exc.details()}")
out(ok=True)
"""


def _first(text: str) -> str:
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[0] if lines else ""


def token_source() -> str | None:
    """Where Ray would take the token from, or None (Ray's order)."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        p = Path(path).expanduser()
        return f"RAY_AUTH_TOKEN_PATH ({p})" if p.is_file() and p.read_text().strip() else None
    p = Path.home() / ".ray" / "auth_token"
    return str(p) if p.is_file() and p.read_text(errors="replace").strip() else None


def auth_mode(address: str) -> str:
    """``token`` or ``disabled``: what this driver will use for ``address``."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None:
        return mode.strip().lower()
    if address == "auto" and not os.environ.get("RAY_ADDRESS") and token_source():
        return "token"            # ray.init's own rule for a cluster it finds itself (RAY_ADDRESS counts as explicit)
    return "disabled"


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise ConfigError(f"{addr!r} is not an address; allowed: auto, HOST:PORT (the head's GCS port, 6379 by "
                          "default), ray://HOST:PORT (Ray Client, 10001 by default)", field=FIELD)
    return host, int(port)


def _reach(host: str, port: int, shown: str, deadline: float) -> None:
    left = max(0.5, deadline - time.monotonic())
    try:
        socket.create_connection((host, port), timeout=left).close()
    except socket.timeout:
        raise ConfigError(f"cannot reach the Ray cluster at {shown}: no answer within {left:.0f} s; check the "
                          "address and that the head is running (`ray status` on the head), or raise "
                          "--connect-timeout", field=FIELD) from None
    except OSError as exc:
        why = "connection refused: nothing listens there" if isinstance(exc, ConnectionRefusedError) else \
            (exc.strerror or str(exc))
        raise ConfigError(f"cannot reach the Ray cluster at {shown}: {why}; start the head (`ray start --head`), or "
                          "give the address it printed (auto, HOST:PORT, ray://HOST:10001)", field=FIELD) from None


def _token_problem(shown: str, mode: str, error: str) -> ConfigError:
    if mode != "token":
        src = token_source()
        have = f" (a token is in {src}, but Ray sends it only in token mode)" if src else ""
        return ConfigError(f"the Ray cluster at {shown} requires token authentication and this driver sent no "
                           f"token{have}; {TOKEN_FIX}", field=FIELD)
    return ConfigError(f"the Ray cluster at {shown} refused the token from {token_source()} (InvalidAuthToken: "
                       f"wrong token); {TOKEN_FIX}", field=FIELD)


def probe(gcs: str, shown: str, mode: str, deadline: float, client: bool = False) -> None:
    """Step 4 of the module docstring, in a child process (``client``: a Ray Client address)."""
    left = max(1.0, deadline - time.monotonic())
    env = dict(os.environ, RAY_AUTH_MODE=mode)
    try:
        proc = subprocess.run([sys.executable, "-c", _CLIENT_PROBE if client else _PROBE, gcs, f"{left:.1f}"],
                              env=env, capture_output=True,
                              text=True, timeout=left + 2.0, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"the Ray cluster at {shown} did not answer within {left:.0f} s (is it a Ray head's GCS "
                          "port? `ray start --head` prints it); or raise --connect-timeout", field=FIELD) from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    try:
        res = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise ConfigError(f"could not probe the Ray cluster at {shown}: {_first(proc.stderr) or 'no answer'}",
                          field=FIELD) from None
    if res.get("ok"):
        return
    error = res.get("error", "")
    if res.get("what") == "auth":
        raise _token_problem(shown, mode, error)
    if res.get("what") == "node":
        raise ConfigError(f"no node of the Ray cluster at {shown} runs on this machine: a driver that joins with "
                          "HOST:PORT attaches to a node of its own machine; start one here (`ray start --address "
                          f"{gcs}`), or join through Ray Client (ray://HOST:10001)", field=FIELD)
    why = "no answer" if "Timed out" in error or "TimedOut" in error else _first(error)
    what, port = ("Ray Client server", "the head's Ray Client port, 10001 by default") if client else \
        ("Ray GCS", "the head's GCS port, 6379 by default")
    raise ConfigError(f"the Ray cluster at {shown} did not answer as a {what} ({why}); check the address "
                      f"({port}) and that the head is running", field=FIELD)


def connect(address: str, timeout_s: float = CONNECT_TIMEOUT_S, runtime_env: dict | None = None) -> None:
    """Join the cluster at ``address`` (``ray.init`` with ``runtime_env``) or
    raise ConfigError; see the module docstring."""
    import ray
    if timeout_s <= 0:
        raise ConfigError(f"--connect-timeout must be > 0 seconds, got {timeout_s:g}", field="--connect-timeout")
    deadline = time.monotonic() + timeout_s
    given = address.strip()
    target = given
    if given == "auto":
        env_addr = os.environ.get("RAY_ADDRESS", "").strip()
        if env_addr.startswith("ray://"):
            target = env_addr
    mode = auth_mode(given)
    if mode not in ("token", "disabled"):
        raise ConfigError(f"RAY_AUTH_MODE={os.environ.get('RAY_AUTH_MODE')!r} is not a mode; allowed: token, "
                          "disabled", field=FIELD)
    if mode == "token" and not token_source():
        raise ConfigError(f"RAY_AUTH_MODE=token but no token was found to join {given}; give the cluster's token in "
                          "RAY_AUTH_TOKEN, or in a file named by RAY_AUTH_TOKEN_PATH, or in ~/.ray/auth_token "
                          "(`ray get-auth-token` on the head prints it)", field=FIELD)
    if target.startswith("ray://"):
        try:
            import grpc  # noqa: F401
        except ImportError:
            raise ConfigError(f"{target} is a Ray Client address, which needs Ray Client: pip install "
                              "'ray[client]' (or join with HOST:PORT from a node of the cluster)", field=FIELD) from None
        host, port = _split(target[len("ray://"):])
        _reach(host, port, target, deadline)
        probe(f"{host}:{port}", target, mode, deadline, client=True)
    else:
        from ray._private import services
        try:
            gcs = services.canonicalize_bootstrap_address(given)
        except ConnectionError:
            raise ConfigError("no running Ray cluster found for --address auto (RAY_ADDRESS is not set and no cluster "
                              "was started with `ray start` on this machine); start one (`ray start --head`) or "
                              "give its address (HOST:PORT, ray://HOST:10001)", field=FIELD) from None
        except ValueError:
            gcs = None
        if not gcs:
            _split(given)                       # raises the message about the address form
            raise ConfigError(f"{given!r} is not a Ray cluster address", field=FIELD)
        host, port = _split(gcs)
        shown = given if given == gcs else f"{given} ({gcs})"
        _reach(host, port, shown, deadline)
        probe(gcs, shown, mode, deadline)
    try:                                          # (for auto, ray.init turns token mode on itself, as probed)
        with _quiet_stderr():
            ray.init(address=target, log_to_driver=False, logging_level=logging.ERROR, runtime_env=runtime_env)
    except Exception as exc:  # noqa: BLE001 - whatever Ray raises becomes one line
        cause = exc.__cause__
        text = f"{type(exc).__name__}: {exc}" + (f"\n{type(cause).__name__}: {cause}" if cause else "")
        if "InvalidAuthToken" in text or "AuthenticationError" in text:
            raise _token_problem(target, mode, text) from None
        detail = _first(f"{type(cause).__name__}: {cause}") if cause else _first(text)
        detail = detail.split(" Last connection error")[0]            # Ray appends a traceback's text there
        raise ConfigError(f"could not join the Ray cluster at {target}: {detail}", field=FIELD) from None


@contextlib.contextmanager
def _quiet_stderr():
    """Ray's native code logs every retry of a connection to file descriptor 2;
    while ``ray.init`` runs they go to a scratch file (a failure is reported
    as one message instead)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as scratch:
        sys.stderr.flush()
        os.dup2(scratch.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
