"""`python -m bench.startup`: how long the CLI takes to answer, and the worker to consume.

1. `debit-worker … --help` of every command, as a subprocess (wall time, best and worst of
   `--repeat` runs): what an operator waits for before the first line.
2. `debit-worker run --processes N` (default 2), from the exec to the moment every worker
   process consumes (the command queue and the task queue each have N consumers, as
   `bench/phases.py` waits before it loads the workers), `--repeat` times, each on a
   fresh start against the same vhost, database and sandbox process.

`--source DIR` measures the code in DIR instead (`python -m worker` with PYTHONPATH=DIR, e.g.
`git archive OLD | tar -x -C DIR`), to compare two versions on the same machine.

Needs the services `make bench` needs (RabbitMQ with `rabbitmqctl`, PostgreSQL); the sandbox
runs as a process of its own. Run it on a quiet machine: start-up is mostly CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import amqp
import click

from bench import load
from bench.services import (
    VENV_BIN,
    Services,
    free_port,
    own_services,
    sandbox_process,
    start,
    stop,
)
from schemas.topology import COMMAND_QUEUE
from worker.ops.cli import main as cli_main
from worker.transport.topology import TASK_QUEUE

API_KEY = "sk_test_51StartupBenchKey"
CLI = VENV_BIN / "debit-worker"


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group under `group`, as the words that name it."""
    ctx = click.Context(group)
    found: list[tuple[str, ...]] = [prefix]
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            found.extend(command_paths(command, (*prefix, name)))
        else:
            found.append((*prefix, name))
    return found


@dataclass(frozen=True)
class Cli:
    """How to start `debit-worker`: this checkout's script, or `python -m worker` on the
    code in another directory."""

    command: list[str]
    env: dict[str, str]

    @classmethod
    def of(cls, source: Path | None) -> Cli:
        if source is None:
            return cls([str(CLI)], {})
        # PYTHONSAFEPATH: the working directory (this checkout, say) is not searched first,
        # by this process or by the worker processes it starts.
        return cls(
            [sys.executable, "-m", "worker"],
            {"PYTHONPATH": str(source.resolve()), "PYTHONSAFEPATH": "1"},
        )


def help_seconds(cli: Cli, path: tuple[str, ...], repeat: int) -> tuple[list[float], float]:
    """Wall seconds of each run, and the least CPU seconds (user + system) of any run."""
    times, cpu = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        began = time.perf_counter()
        subprocess.run(
            [*cli.command, *path, "--help"],
            check=True,
            capture_output=True,
            env={**os.environ, **cli.env},
        )
        times.append(time.perf_counter() - began)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return times, min(cpu)


def worker_env(services: Services, sandbox_url: str, processes: int) -> dict[str, str]:
    return {
        "DEBIT_WORKER_BROKER_URL": services.broker_url,
        "DEBIT_WORKER_DATABASE_URL": services.database_url,
        "DEBIT_WORKER_STRIPE_API_KEY": API_KEY,
        "DEBIT_WORKER_STRIPE_API_BASE": sandbox_url,
        "DEBIT_WORKER_RATE_BUDGET_REDIS_URL": "",
        "DEBIT_WORKER_LOG_LEVEL": "INFO",
        "DEBIT_WORKER_PROCESSES": str(processes),
        # A port of its own: another worker on this machine may serve the default one.
        "DEBIT_WORKER_METRICS_PORT": str(free_port()),
        "DEBIT_WORKER_PRODUCER_KEYS": json.dumps(
            {load.BENCH_SIGNER.producer: {load.BENCH_SIGNER.key_id: load.BENCH_SIGNER.secret}}
        ),
    }


def consumers(channel: amqp.Channel, queue: str) -> int:
    try:
        declared = channel.queue_declare(queue, passive=True)
    except amqp.exceptions.NotFound:
        return -1  # not declared yet; the channel is closed
    return int(declared[2]) if declared is not None else 0


def seconds_to_consume(
    cli: Cli,
    services: Services,
    env: dict[str, str],
    processes: int,
    log: Path,
    *,
    migrate: bool = True,
    timeout: float = 120.0,
) -> float:
    """From the exec of `debit-worker run` to N consumers on both queues."""
    command = [*cli.command, "run", "--processes", str(processes)]
    if not migrate:
        command.append("--no-migrate")
    connection = load.connect(services.vhost)
    began = time.perf_counter()
    process = start(command, env | cli.env, log)
    try:
        channel = connection.channel()
        while time.perf_counter() - began < timeout:
            if process.poll() is not None:
                raise RuntimeError(f"the worker exited with {process.returncode}; see {log}")
            counts = [consumers(channel, queue) for queue in (COMMAND_QUEUE, TASK_QUEUE)]
            if min(counts) >= processes:
                return time.perf_counter() - began
            if min(counts) < 0:
                channel = connection.channel()
            time.sleep(0.05)
        raise RuntimeError(f"not consuming after {timeout:.0f} s; see {log}")
    finally:
        stop(process)
        connection.close()


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement")
    parser.add_argument("--processes", type=int, default=2, help="`run --processes`")
    parser.add_argument("--skip-help", action="store_true", help="only the worker's start-up")
    parser.add_argument("--skip-run", action="store_true", help="only the --help timings")
    parser.add_argument(
        "--source", type=Path, help="measure the code in this directory (PYTHONPATH)"
    )
    parser.add_argument(
        "--no-migrate",
        action="store_true",
        help="`run --no-migrate` (the database is migrated by this checkout, so an older "
        "--source cannot migrate it)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    cli = Cli.of(args.source)
    if not args.skip_help:
        print(
            f"`debit-worker … --help`: wall seconds best / worst of {args.repeat}, CPU of the best"
        )
        for path in command_paths(cli_main):
            name = " ".join(("debit-worker", *path))
            try:
                times, cpu = help_seconds(cli, path, args.repeat)
            except subprocess.CalledProcessError:
                print(f"  {name:42} (no such command there)")
                continue
            print(f"  {name:42} {min(times):5.2f} / {max(times):5.2f}  cpu {cpu:5.2f}")
    if args.skip_run:
        return
    logs = Path(tempfile.mkdtemp(prefix="debit-startup-"))
    with own_services() as services, sandbox_process(API_KEY) as sandbox:
        env = worker_env(services, sandbox.url, args.processes)
        runs = [
            seconds_to_consume(
                cli,
                services,
                env,
                args.processes,
                logs / f"run-{n}.log",
                migrate=not args.no_migrate,
            )
            for n in range(args.repeat)
        ]
    shown = "  ".join(f"{seconds:.2f}" for seconds in runs)
    flag = " --no-migrate" if args.no_migrate else ""
    print(
        f"`debit-worker run --processes {args.processes}{flag}` to consuming, seconds: {shown} "
        f"(median {statistics.median(runs):.2f}; logs in {logs})"
    )


if __name__ == "__main__":
    main()
