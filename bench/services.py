"""What a benchmark run starts and removes: its own RabbitMQ vhost and PostgreSQL database
(as tests/integration/conftest.py does), a sandbox process, and worker processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from worker.adapters.ledger import Ledger
from worker.adapters.ledger.database import make_engine
from worker.adapters.ledger.migrate import upgrade
from worker.sandbox.admin_client import SandboxAdmin
from worker.sandbox.seed import AccountSeed, Controller, Losses

RABBIT = "127.0.0.1:5672"
POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
ACCOUNTS = tuple(f"acct_1BenchUS{i:010d}" for i in range(20))
VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Services:
    broker_url: str
    database_url: str
    vhost: str


@contextlib.contextmanager
def own_services() -> Iterator[Services]:
    """A vhost and a migrated database of our own, removed afterwards."""
    tag = uuid.uuid4().hex[:8]
    vhost, database = f"debit-bench-{tag}", f"debit_bench_{tag}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
    try:
        engine = make_engine(url, pool_size=2)
        upgrade(engine)
        ledger = Ledger.on(engine)
        for account in ACCOUNTS:
            ledger.consents.grant(account, "benchmark-agreement", "bench")
        engine.dispose()
        yield Services(f"amqp://guest:guest@{RABBIT}/{vhost}", url, vhost)
    finally:
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, check=False)
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _rabbitmqctl(*args: str) -> None:
    """rabbitmqctl, tried a few times: a busy shared broker sometimes refuses once."""
    for attempt in range(5):
        done = subprocess.run(["rabbitmqctl", *args], capture_output=True, check=False)
        if done.returncode == 0:
            return
        time.sleep(1 + attempt)
    raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr.decode()[-300:]}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def sandbox_process(api_key: str) -> Iterator[SandboxAdmin]:
    """The sandbox in a process of its own (not sharing the load generator's GIL)."""
    port = free_port()
    process = subprocess.Popen(
        [
            str(VENV_BIN / "python"),
            "-m",
            "worker.sandbox",
            "--port",
            str(port),
            "--api-key",
            api_key,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    admin = SandboxAdmin(f"http://127.0.0.1:{port}")
    try:
        _wait(admin.healthy, "sandbox")
        for account in ACCOUNTS:
            admin.put_account(
                AccountSeed(
                    id=account,
                    country="US",
                    default_currency="usd",
                    controller=Controller(losses=Losses(payments="application")),
                    available={"usd": 10**12},
                )
            )
        yield admin
    finally:
        stop(process)


def _wait(ready: object, what: str, timeout: float = 20.0) -> None:
    assert callable(ready)
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.05)


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """Warm shutdown first (SIGTERM), then SIGKILL of what remains of its process group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def tree_rss_mb(pid: int) -> tuple[float, float]:
    """(RSS of the largest process, RSS of all) in MiB of `pid` and its children, from /proc."""
    sizes = [_rss_kib(pid)]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    with contextlib.suppress(OSError):
        sizes.extend(_rss_kib(int(child)) for child in children.read_text().split())
    return max(sizes) / 1024, sum(sizes) / 1024


# Where the machine's CPU goes, by what the process command lines contain.
SERVICES = {
    "workers": "worker run",  # `debit-worker run`, `python -m worker run`, the supervisor
    "postgresql": "postgres",
    "rabbitmq": "beam.smp",
    "sandbox": "worker.sandbox",
}


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds used so far: by each process (pid → (kind, seconds)) and by the machine."""

    processes: dict[int, tuple[str, float]]
    machine_busy: float
    kernel: float

    def spent_since(self, before: CpuSnapshot) -> dict[str, float]:
        """CPU seconds by kind between two snapshots. A process that ended in between is
        missing from its kind (its CPU shows in "machine busy" and "unattributed")."""
        spent = dict.fromkeys([*SERVICES, "bench"], 0.0)
        for pid, (kind, seconds) in self.processes.items():
            earlier = before.processes.get(pid)
            spent[kind] += seconds - (earlier[1] if earlier and earlier[0] == kind else 0.0)
        spent["machine busy"] = self.machine_busy - before.machine_busy
        spent["kernel"] = self.kernel - before.kernel
        spent["unattributed"] = spent["machine busy"] - sum(
            spent[kind] for kind in [*SERVICES, "bench"]
        )
        return spent


def cpu_seconds() -> CpuSnapshot:
    """Every process of each service on this machine, this process (the load generator and
    event listener: "bench"), and the machine's busy and kernel time (from /proc/stat)."""
    ticks = os.sysconf("SC_CLK_TCK")
    processes: dict[int, tuple[str, float]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        seconds = (int(fields[11]) + int(fields[12])) / ticks
        pid = int(proc.name)
        if pid == os.getpid():
            processes[pid] = ("bench", seconds)
            continue
        for kind, marker in SERVICES.items():
            if marker in cmdline:
                processes[pid] = (kind, seconds)
                break
    cpu = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = cpu
    return CpuSnapshot(
        processes,
        machine_busy=(user + nice + system + irq + softirq) / ticks,
        kernel=(system + irq + softirq) / ticks,
    )


def _rss_kib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1])
    except OSError:
        pass
    return 0.0
