"""`python -m bench.startup`: how long the CLI takes to answer, and the worker to consume.

1. `debit-worker … --help` of every command, as a subprocess (wall time, best and worst of
   `--repeat` runs): what an operator waits for before the first line.
2. `debit-worker run --processes N` (default 2), from the exec to the moment every worker
   process consumes (the command queue and the task queue each have N consumers, as
   `bench/phases.py` waits before it loads the workers), `--repeat` times, each on a
   fresh start against the same vhost, database and sandbox process.

`--source DIR` measures the code in DIR instead (`python -m worker` with PYTHONPATH=DIR, e.g.
`git archive OLD | tar -x -C DIR`), to compare two versions on the same machine.

`--write` puts the medians, against the targets (issue 18: consuming within 3 s, every
`--help` within 1 s), in docs/performance.md's "Start-up" section, between its two marker
lines; `make bench`, which writes the rest of that file, keeps the section as it finds it.

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
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

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
REPORT: Final = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
RUN_TARGET_SECONDS: Final = 3.0  # `run --processes 2` to consuming
HELP_TARGET_SECONDS: Final = 1.0  # any `--help`
BEGIN: Final = (
    "<!-- start-up: written by `python -m bench.startup --write`; `make bench` keeps it -->"
)
END: Final = "<!-- /start-up -->"


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
    parser.add_argument(
        "--write",
        nargs="?",
        type=Path,
        const=REPORT,
        help=f"write the Start-up section of this report [{REPORT.relative_to(REPORT.parents[1])}]",
    )
    args = parser.parse_args(argv)
    if args.write and (args.source or args.skip_help or args.skip_run or args.no_migrate):
        parser.error("--write reports this checkout, both measurements, with migration")
    return args


@dataclass(frozen=True)
class HelpTimes:
    name: str
    wall: list[float]
    cpu: float  # the least of any run


def measure_help(cli: Cli, repeat: int) -> list[HelpTimes]:
    print(f"`debit-worker … --help`: wall seconds median / worst of {repeat}, least CPU")
    measured = []
    for path in command_paths(cli_main):
        name = " ".join(("debit-worker", *path))
        try:
            times, cpu = help_seconds(cli, path, repeat)
        except subprocess.CalledProcessError:
            print(f"  {name:42} (no such command there)")
            continue
        measured.append(HelpTimes(name, times, cpu))
        print(
            f"  {name:42} {statistics.median(times):5.2f} / {max(times):5.2f}  cpu {cpu:5.2f}",
            flush=True,
        )
    return measured


def measure_run(cli: Cli, args: argparse.Namespace) -> list[float]:
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
    return runs


def section(helps: list[HelpTimes], runs: list[float], processes: int, repeat: int) -> str:
    """The Start-up section of docs/performance.md, between its markers."""
    from bench.report import machine  # noqa: PLC0415 - plotting libraries, only to write

    run = statistics.median(runs)
    slowest = max(helps, key=lambda measured: statistics.median(measured.wall))
    slowest_help = statistics.median(slowest.wall)
    lines = [
        BEGIN,
        "## Start-up",
        "",
        f"- **Date:** {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- **Machine:** {machine().split('; RabbitMQ')[0]}; RabbitMQ, PostgreSQL and the "
        "sandbox on this machine",
        "- **Command:** `.venv/bin/python -m bench.startup --write` (medians of "
        f"{repeat} runs of each measurement)",
        "",
        f"`debit-worker run --processes {processes}` from its exec to both worker processes "
        "consuming both queues (the supervisor migrates first: here the ledger is at the "
        "newest schema, so it only reads its revision), each run on a fresh start: "
        + " / ".join(f"{seconds:.2f}" for seconds in runs)
        + " s.",
        "",
        "| target | measured | |",
        "|---|---|---|",
        f"| `run --processes {processes}` to consuming <= {RUN_TARGET_SECONDS:g} s "
        f"| {run:.2f} s | {_verdict(run <= RUN_TARGET_SECONDS)} |",
        f"| every `--help` < {HELP_TARGET_SECONDS:g} s | slowest `{slowest.name} --help` "
        f"{slowest_help:.2f} s | {_verdict(slowest_help < HELP_TARGET_SECONDS)} |",
        "",
        "| command | `--help` wall seconds (median / worst) | CPU seconds (least) |",
        "|---|---|---|",
        *(
            f"| `{measured.name}` | {statistics.median(measured.wall):.2f} / "
            f"{max(measured.wall):.2f} | {measured.cpu:.2f} |"
            for measured in helps
        ),
        END,
    ]
    return "\n".join(lines)


def _verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def kept_section(report: Path) -> str:
    """The Start-up section of `report` as written last ('' if it has none)."""
    text = report.read_text() if report.exists() else ""
    begin, end = text.find(BEGIN), text.find(END)
    return text[begin : end + len(END)] if 0 <= begin < end else ""


def write_section(report: Path, new: str) -> None:
    """Replace the Start-up section of `report`, or add it before the method's description
    (bench/METHOD.md's first line), or at the end."""
    text = report.read_text() if report.exists() else ""
    old = kept_section(report)
    if old:
        text = text.replace(old, new)
    else:
        method = (report.parents[1] / "bench" / "METHOD.md").read_text().splitlines()
        at = text.find(method[0]) if method and method[0] else -1
        text = f"{text[:at]}{new}\n\n{text[at:]}" if at >= 0 else f"{text.rstrip()}\n\n{new}\n"
    report.write_text(text)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    cli = Cli.of(args.source)
    helps = [] if args.skip_help else measure_help(cli, args.repeat)
    runs = [] if args.skip_run else measure_run(cli, args)
    if args.write:
        write_section(args.write, section(helps, runs, args.processes, args.repeat))
        print(f"wrote the Start-up section of {args.write}")


if __name__ == "__main__":
    main()
