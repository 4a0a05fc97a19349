"""What /proc tells of one process: its descendants, resident memory, open files, threads,
and its TCP connections by the service port they reach (Linux only, as the benchmark is)."""

from __future__ import annotations

import contextlib
import os
import signal
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# Local services by port: what a worker's connections are to.
SERVICE_PORTS = {5672: "rabbitmq", 5432: "postgresql", 6379: "redis"}
_LISTEN = "0A"  # the `st` column of /proc/net/tcp


@dataclass(frozen=True)
class ProcessStat:
    rss_mb: float
    fds: int
    threads: int


def descendants(pid: int) -> list[int]:
    """Every process started under `pid`, however deep (a child forked by any thread)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        for task in _listdir(Path(f"/proc/{parent}/task")):
            with contextlib.suppress(OSError):
                children = [
                    int(c) for c in Path(f"/proc/{parent}/task/{task}/children").read_text().split()
                ]
                found.extend(children)
                pending.extend(children)
    return found


def stat(pid: int) -> ProcessStat | None:
    """RSS (MiB), open file descriptors and threads; None once the process has ended."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    rss_kib = float(fields.get("VmRSS", "0 kB").split()[0])
    return ProcessStat(rss_kib / 1024, fds, int(fields["Threads"]))


def connections(pids: list[int], services: Mapping[int, str] = SERVICE_PORTS) -> Counter[str]:
    """TCP connections `pids` hold, by the service they reach (port → name): every socket
    still open in a process, whatever its state. A connection its server closed (an idle
    keep-alive one) still holds its socket, and still counts, until the process closes it:
    what the process keeps open, not what the server chose to keep."""
    remote_port = _remote_ports()
    counted: Counter[str] = Counter()
    for pid in pids:
        for inode in _socket_inodes(pid):
            service = services.get(remote_port.get(inode, 0))
            if service:
                counted[service] += 1
    return counted


def kill_tree(pid: int) -> frozenset[int]:
    """SIGKILL `pid` and every process under it at once, as a host that dies: all are
    stopped first (SIGSTOP), so that none restarts or replaces another meanwhile. Returns
    the pids killed."""
    stopped: set[int] = set()
    while True:  # a child started while listing is stopped by the next pass
        tree = {pid, *descendants(pid)} - stopped
        if not tree:
            break
        for each in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(each, signal.SIGSTOP)
        stopped |= tree
    for each in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, signal.SIGKILL)
    return frozenset(stopped)


def _remote_ports() -> dict[int, int]:
    """Socket inode → remote port of every TCP connection (IPv4 and IPv6), listeners aside."""
    ports: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] != _LISTEN:
                    ports[int(fields[9])] = int(fields[2].rsplit(":", 1)[1], 16)
    return ports


def _socket_inodes(pid: int) -> list[int]:
    inodes = []
    for fd in _listdir(Path(f"/proc/{pid}/fd")):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.append(int(target[8:-1]))
    return inodes


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []
