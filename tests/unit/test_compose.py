"""docker-compose.yml and the Dockerfile, checked structurally: no Docker engine runs here.

What a typo would otherwise only reveal at `docker compose up` on an operator's machine:
a service without an image, a dependency on a service that does not exist, a configuration
variable the worker never reads, a hostname that is not a service, a subcommand the CLI does
not have, two services on one host port.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
import tomllib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import click
import pytest
import yaml
from celery.app.defaults import DEFAULTS as CELERY_DEFAULTS

from schemas.topology import COMMAND_EXCHANGE, COMMAND_QUEUE, EVENT_EXCHANGE
from worker.sandbox.constants import DEFAULT_API_KEY
from worker.settings import Settings, load_settings
from worker.transport.parsing import MAX_BODY_BYTES
from worker.transport.topology import declare_all, event_exchange, unrouted_events_exchange

ROOT: Final = Path(__file__).resolve().parents[2]
COMPOSE_FILE: Final = ROOT / "docker-compose.yml"
DOCKERFILE: Final = ROOT / "Dockerfile"
PYPROJECT: Final = ROOT / "pyproject.toml"

ENV_PREFIX: Final = "DEBIT_WORKER_"
# Read by worker.settings.load_settings itself (where secret files live), not a Settings field.
READ_OUTSIDE_SETTINGS: Final = frozenset({"DEBIT_WORKER_SECRETS_DIR"})
CONDITIONS: Final = frozenset(
    {"service_started", "service_healthy", "service_completed_successfully"}
)
LOOPBACK: Final = frozenset({"127.0.0.1", "localhost", "::1"})
# What the worker service must wait for before `run` (docs/operations.md, "Deploying").
WORKER_NEEDS: Final = {
    "rabbitmq": "service_healthy",
    "postgres": "service_healthy",
    "migrate": "service_completed_successfully",
    "sandbox": "service_healthy",
}

Service = dict[str, Any]


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict), "docker-compose.yml is not a mapping"
    return loaded


def services() -> dict[str, Service]:
    found = compose().get("services")
    assert isinstance(found, dict), "docker-compose.yml has no services"
    assert all(isinstance(body, dict) for body in found.values())
    return found


def environment(service: Service) -> dict[str, str | None]:
    """A service's environment in either Compose form; None means "passed through if set"."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        pairs = (str(item).partition("=") for item in raw)
        return {key: (value if sep else None) for key, sep, value in pairs}
    return {str(key): None if value is None else str(value) for key, value in raw.items()}


def depends_on(service: Service) -> dict[str, str]:
    """Dependency → condition; the short (list) form means service_started."""
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return {str(name): "service_started" for name in raw}
    return {
        str(name): str((spec or {}).get("condition", "service_started"))
        for name, spec in raw.items()
    }


def one_shot_services(found: dict[str, Service]) -> set[str]:
    """Services something waits on to *finish* (migrations): they exit instead of serving."""
    return {
        name
        for service in found.values()
        for name, condition in depends_on(service).items()
        if condition == "service_completed_successfully"
    }


_INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?::?-(?P<default>[^}]*))?\}")


def interpolated(value: str) -> str:
    """The value Compose would use in a shell where no variable is set."""
    return _INTERPOLATION.sub(lambda m: m.group("default") or "", value).replace("$$", "$")


def built_here(service: Service) -> bool:
    build = service.get("build")
    context = build.get("context", ".") if isinstance(build, dict) else build
    return context in {".", "./"}


def command(service: Service) -> list[str]:
    raw = service.get("command") or []
    return raw.split() if isinstance(raw, str) else [str(part) for part in raw]


def host_ports(service: Service) -> Iterator[tuple[int, str]]:
    """(published host port, protocol) for each port a service publishes on the host."""
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            published, protocol = entry.get("published"), str(entry.get("protocol", "tcp"))
            if published is None:
                continue
            first, _, last = str(published).partition("-")
        else:
            mapping, _, protocol = str(entry).partition("/")
            protocol = protocol or "tcp"
            parts = mapping.rsplit(":", 2)
            if len(parts) == 1:  # container port only: Docker picks a free host port
                continue
            first, _, last = parts[-2].partition("-")
        for port in range(int(first), int(last or first) + 1):
            yield port, protocol


def host_addresses(service: Service) -> Iterator[tuple[str, str | None]]:
    """(port entry as written, the host address it is published on); None: every interface
    (no address given, or a container port only, published on a port Docker picks)."""
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            yield str(entry), str(entry["host_ip"]) if entry.get("host_ip") else None
        else:
            parts = str(entry).partition("/")[0].rsplit(":", 2)
            yield str(entry), parts[0] if len(parts) == 3 else None


def strings_in(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def cli_main() -> click.Group:
    # Imported by name: the CLI is the contract the compose commands are checked against.
    main = importlib.import_module("worker.ops.cli").main
    assert isinstance(main, click.Group), "worker.ops.cli.main is not a click group"
    return main


def resolve(group: click.Group, argv: list[str]) -> tuple[list[str], click.Command, list[str]]:
    """Walk nested groups along argv: (subcommand path, the command, its own arguments)."""
    path: list[str] = []
    current: click.Command = group
    ctx = click.Context(group, info_name="debit-worker")
    rest = list(argv)
    while isinstance(current, click.Group) and rest and not rest[0].startswith("-"):
        found = current.get_command(ctx, rest[0])
        assert found is not None, f"`debit-worker {' '.join([*path, rest[0]])}` does not exist"
        path.append(rest.pop(0))
        current = found
        ctx = click.Context(found, info_name=path[-1], parent=ctx)
    return path, current, rest


# ---------------------------------------------------------------------------------------------


def test_every_service_has_an_image_or_a_build() -> None:
    # Given the compose services / When each is inspected
    # Then Compose knows where every one of them comes from
    missing = [
        name for name, svc in services().items() if "image" not in svc and "build" not in svc
    ]
    assert missing == []


def test_pulled_images_are_pinned_to_a_tag() -> None:
    # Given the services that are pulled rather than built here
    pulled = {name: str(svc["image"]) for name, svc in services().items() if "build" not in svc}
    # When their references are read / Then each names a tag other than "latest"
    for name, image in pulled.items():
        _, _, tag = image.rpartition("/")[2].partition(":")
        assert tag, f"{name}: pin {image} to a version"
        assert tag != "latest", f"{name}: pin {image} to a version"


def test_every_long_running_service_declares_a_healthcheck() -> None:
    # Given the services, minus the one-shots others wait on to complete
    found = services()
    long_running = set(found) - one_shot_services(found)
    # When their healthchecks are read
    # Then each has a real probe, so `service_healthy` and `docker compose ps` mean something
    for name in sorted(long_running):
        check = found[name].get("healthcheck") or {}
        assert not check.get("disable"), f"{name}: healthcheck disabled"
        probe = check.get("test")
        assert probe, f"{name} runs indefinitely but has no healthcheck"
        assert probe not in (["NONE"], "NONE"), f"{name}: healthcheck disabled"


def test_one_shot_services_are_not_restarted_after_they_finish() -> None:
    # Given the services others wait on to complete (migrate)
    found = services()
    one_shots = one_shot_services(found)
    assert one_shots, "expected the migrate one-shot"
    # When their restart policies are read / Then none restarts on a clean exit
    for name in one_shots:
        assert str(found[name].get("restart", "no")) in {"no", "on-failure"}, name


def test_depends_on_names_existing_services_with_sensible_conditions() -> None:
    # Given every dependency in the file
    found = services()
    one_shots = one_shot_services(found)
    for name, service in found.items():
        for dependency, condition in depends_on(service).items():
            # Then it is a service of this file, with a condition Compose knows
            assert dependency in found, f"{name} depends on unknown service {dependency}"
            assert dependency != name, f"{name} depends on itself"
            assert condition in CONDITIONS, f"{name} → {dependency}: unknown {condition}"
            # And a server is waited for until healthy, a one-shot until it has succeeded
            wanted = (
                "service_completed_successfully" if dependency in one_shots else ("service_healthy")
            )
            assert condition == wanted, f"{name} → {dependency}: use {wanted}"


def test_dependencies_form_no_cycle() -> None:
    # Given the dependency graph
    graph = {name: set(depends_on(svc)) for name, svc in services().items()}
    # When it is ordered the way Compose starts services
    order: list[str] = []
    while graph:
        ready = sorted(name for name, needs in graph.items() if needs <= set(order))
        # Then every service eventually has all it needs
        assert ready, f"dependency cycle among {sorted(graph)}"
        order += ready
        for name in ready:
            del graph[name]


def test_the_worker_starts_only_once_everything_it_talks_to_is_ready() -> None:
    # Given the worker service / When its dependencies are read
    needs = depends_on(services()["worker"])
    # Then broker, ledger and Stripe are healthy, and the migrations have succeeded
    assert needs == WORKER_NEEDS


def test_every_debit_worker_variable_maps_to_a_settings_field() -> None:
    # Given every DEBIT_WORKER_* name anywhere in the file (keys, values, commands, comments)
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    named = set(re.findall(rf"\b{ENV_PREFIX}[A-Z0-9_]+\b", text))
    for service in services().values():
        named |= {key for key in environment(service) if key.startswith(ENV_PREFIX)}
    assert named, "the compose file configures no DEBIT_WORKER_* variable"
    # When each is mapped to the setting it would set
    fields = set(Settings.model_fields)
    unknown = {
        name
        for name in named - READ_OUTSIDE_SETTINGS
        if name.removeprefix(ENV_PREFIX).lower() not in fields
    }
    # Then the worker reads every one of them (none is silently ignored)
    assert unknown == set(), f"not fields of worker.settings.Settings: {sorted(unknown)}"


@pytest.mark.parametrize("name", ["worker", "migrate"])
def test_the_environment_given_to_the_worker_image_is_a_valid_configuration(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given a process environment holding only what compose gives the service, with every
    # ${VAR:-default} resolved as in a shell where VAR is unset, and no .env file around
    for key in [key for key in os.environ if key.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in environment(services()[name]).items():
        if value is not None:  # no value: passed through from the shell only if set there
            monkeypatch.setenv(key, interpolated(value))
    monkeypatch.chdir(tmp_path)
    # When the worker loads its settings
    settings = load_settings()
    # Then they validate, and point at the sandbox in test mode
    assert settings.require_stripe_key().get_secret_value().startswith(("sk_test_", "rk_test_"))
    assert not settings.live_mode


def test_the_worker_reaches_broker_ledger_and_stripe_by_compose_service_names() -> None:
    # Given the worker's environment
    found = services()
    env = {key: interpolated(value or "") for key, value in environment(found["worker"]).items()}
    broker = urlsplit(env["DEBIT_WORKER_BROKER_URL"])
    database = urlsplit(env["DEBIT_WORKER_DATABASE_URL"])
    stripe_base = urlsplit(env["DEBIT_WORKER_STRIPE_API_BASE"])
    # Then each address is a service of this file
    assert broker.scheme == "amqp"
    assert broker.hostname == "rabbitmq"
    assert "rabbitmq" in found
    assert database.scheme == "postgresql+psycopg"
    assert database.hostname == "postgres"
    assert "postgres" in found
    assert stripe_base.hostname == "sandbox"
    assert "sandbox" in found
    # And the ledger URL matches the database PostgreSQL creates
    postgres = environment(found["postgres"])
    assert database.username == postgres.get("POSTGRES_USER", "postgres")
    assert database.password == postgres["POSTGRES_PASSWORD"]
    assert database.path.lstrip("/") == postgres["POSTGRES_DB"]
    # And the sandbox listens where the worker calls it, accepting the worker's key
    sandbox_args = command(found["sandbox"])
    assert str(stripe_base.port) == sandbox_args[sandbox_args.index("--port") + 1]
    expected_key = (
        sandbox_args[sandbox_args.index("--api-key") + 1]
        if "--api-key" in sandbox_args
        else DEFAULT_API_KEY
    )
    assert env["DEBIT_WORKER_STRIPE_API_KEY"] == expected_key


def test_every_url_in_a_service_names_a_compose_service_or_the_container_itself() -> None:
    # Given every URL in environments, commands and healthchecks
    found = services()
    for name, service in found.items():
        for text in strings_in(service):
            for url in re.findall(r"[a-z][a-z0-9+.-]*://[^\s'\"]+", interpolated(text)):
                # Then its host is another service, or the container's own loopback
                host = urlsplit(url).hostname
                assert host in found or host in LOOPBACK, f"{name}: {url} names no service"


def test_services_built_here_run_real_debit_worker_subcommands() -> None:
    # Given the CLI the image runs (Dockerfile ENTRYPOINT debit-worker → worker.ops.cli:main)
    main = cli_main()
    built = {name: svc for name, svc in services().items() if built_here(svc)}
    assert {"worker", "migrate", "sandbox"} <= set(built)
    for name, service in built.items():
        argv = command(service) or ["run"]  # the image's default CMD
        # When the service's command is resolved and parsed as the CLI would
        path, found, rest = resolve(main, argv)
        # Then it names a subcommand, whose options exist and accept these values
        assert path, f"{name}: {argv} names no subcommand"
        try:
            found.make_context(path[-1], rest)
        except click.ClickException as exc:
            pytest.fail(f"{name}: `debit-worker {' '.join(argv)}`: {exc.format_message()}")


def test_published_host_ports_do_not_collide() -> None:
    # Given every port published on the host
    published = Counter(port for svc in services().values() for port in host_ports(svc))
    # Then no two services (or two mappings) claim the same one
    assert [port for port, count in published.items() if count > 1] == []
    # And the ports operators are told about are there
    assert {(5672, "tcp"), (15672, "tcp"), (5555, "tcp")} <= set(published)


@pytest.mark.parametrize(
    ("entry", "address"),
    [
        ("5672:5672", None),
        ("5672", None),
        ("5672:5672/tcp", None),
        ({"target": 5672, "published": 5672}, None),
        ("127.0.0.1:5672:5672", "127.0.0.1"),
        ("0.0.0.0:5672:5672", "0.0.0.0"),
        ({"target": 5672, "published": 5672, "host_ip": "127.0.0.1"}, "127.0.0.1"),
    ],
)
def test_the_port_check_reads_every_compose_port_form(
    entry: str | dict[str, object], address: str | None
) -> None:
    [(_, found)] = host_addresses({"ports": [entry]})
    assert found == address


def test_every_published_port_is_bound_to_localhost_only() -> None:
    # Given every port mapping of every service
    found = services()
    # Then each is published on 127.0.0.1 only: the broker, its management UI, Flower and
    # the sandbox's unauthenticated admin routes are out of reach of other machines
    beyond = [
        f"{name}: {entry}"
        for name, service in found.items()
        for entry, address in host_addresses(service)
        if address != "127.0.0.1"
    ]
    assert beyond == []
    # And no service shares the host's network, which would bypass the mappings
    assert [name for name, svc in found.items() if svc.get("network_mode") == "host"] == []


def flower_entrypoint_run(secrets: Path) -> subprocess.CompletedProcess[str]:
    """Flower's entrypoint with `secrets` where Compose mounts them (/run/secrets), starting
    a program that prints its arguments and FLOWER_BASIC_AUTH instead of Flower."""
    flower = services()["flower"]
    entrypoint = [interpolated(part) for part in flower["entrypoint"]]
    assert entrypoint[:2] == ["sh", "-c"]
    script = entrypoint[2].replace("/run/secrets/", f"{secrets}/")
    probe = "import json,os,sys; print(json.dumps([sys.argv[1:], os.getenv('FLOWER_BASIC_AUTH')]))"
    return subprocess.run(
        ["sh", "-c", script, *entrypoint[3:], sys.executable, "-c", probe, *command(flower)],
        capture_output=True,
        check=False,
        text=True,
    )


def test_flower_asks_for_the_password_of_its_secret_file(tmp_path: Path) -> None:
    # Given Flower's secret file, user:password, mounted into its container
    flower = services()["flower"]
    secret = "flower_basic_auth"
    assert secret in flower.get("secrets", [])
    credentials = (ROOT / compose()["secrets"][secret]["file"]).read_text(encoding="utf-8")
    user, colon, password = credentials.strip().partition(":")
    assert colon, "the secret holds user:password"
    assert user
    assert password
    # When its entrypoint runs with the secret mounted
    (tmp_path / secret).write_text(credentials, encoding="utf-8")
    done = flower_entrypoint_run(tmp_path)
    assert done.returncode == 0, done.stderr
    # Then Flower starts with its command unchanged, and basic auth set from the secret
    # (Flower reads FLOWER_BASIC_AUTH as its --basic_auth option)
    argv, basic_auth = json.loads(done.stdout)
    assert argv == command(flower)
    assert basic_auth == f"{user}:{password}"
    # And the password is in no command line or environment of the compose file
    assert all(password not in text for text in strings_in(flower))
    # And the healthcheck still calls /healthcheck, which Flower answers without auth
    assert any("http://127.0.0.1:5555/healthcheck" in text for text in strings_in(flower))


def test_without_its_secret_flower_does_not_start(tmp_path: Path) -> None:
    # Given no secret mounted / When Flower's entrypoint runs
    done = flower_entrypoint_run(tmp_path)
    # Then it fails before starting Flower, rather than start it without a password
    assert done.returncode != 0
    assert done.stdout == ""


def test_the_image_runs_the_debit_worker_cli_and_ships_what_the_build_needs() -> None:
    # Given the Dockerfile and pyproject.toml
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    # Then the entrypoint is the console script, and `run` the default command
    assert project["scripts"]["debit-worker"] == "worker.ops.cli:main"
    assert re.search(r'^ENTRYPOINT \["debit-worker"\]$', dockerfile, re.MULTILINE)
    assert re.search(r'^CMD \["run"\]$', dockerfile, re.MULTILINE)
    # And every file the wheel build reads is copied in (hatchling fails without the readme)
    copied = " ".join(re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.MULTILINE))
    for needed in ("pyproject.toml", "uv.lock", project["readme"], "worker/", "schemas/"):
        assert needed in copied, f"the Dockerfile does not COPY {needed}"
    # And it runs as a non-root user
    users = re.findall(r"^USER (\S+)$", dockerfile, re.MULTILINE)
    assert users, "the image runs as root"
    assert users[-1].partition(":")[0] not in {"root", "0"}, "the image runs as root"


# --- broker users and permissions (rabbitmq/definitions.json) --------------------------------

DEFINITIONS: Final = ROOT / "rabbitmq" / "definitions.json"


class DeclarationRecorder:
    """A channel that only remembers the names declared on it (kombu calls these)."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def exchange_declare(self, exchange: str, **_: Any) -> None:
        self.names.add(exchange)

    def prepare_queue_arguments(self, arguments: Any, **_: Any) -> Any:
        return arguments

    def queue_declare(self, queue: str, **_: Any) -> tuple[str, int, int]:
        self.names.add(queue)
        return queue, 0, 0

    def queue_bind(self, **_: Any) -> None:
        pass


def declared_by_the_worker() -> set[str]:
    """Every exchange and queue the worker declares at start (topology.declare_all)."""
    channel = DeclarationRecorder()
    declare_all(channel)
    assert {COMMAND_EXCHANGE, COMMAND_QUEUE} <= channel.names, channel.names
    return channel.names


# Names no producer or consumer may touch beyond its own: every exchange and queue the worker
# declares but the command exchange (producers write to it), Celery's default queue, and the
# default exchange "" as RabbitMQ names it in permission checks.
OTHER_NAMES: Final = (
    *sorted(declared_by_the_worker() - {COMMAND_EXCHANGE}),
    str(CELERY_DEFAULTS["task_default_queue"]),
    "amq.default",
)


def definitions() -> dict[str, Any]:
    loaded = json.loads(DEFINITIONS.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def permissions_of(user: str) -> dict[str, str]:
    found = [p for p in definitions()["permissions"] if p["user"] == user]
    assert len(found) == 1, f"{user} has {len(found)} permission entries"
    return {str(key): str(value) for key, value in found[0].items()}


def allows(pattern: str, name: str) -> bool:
    return re.search(pattern, name) is not None


def password_matches(user: str, password: str) -> bool:
    entry = next(u for u in definitions()["users"] if u["name"] == user)
    assert entry["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    raw = base64.b64decode(entry["password_hash"])
    salt, digest = raw[:4], raw[4:]
    return hashlib.sha256(salt + password.encode()).digest() == digest


def test_rabbitmq_loads_the_definitions_at_boot() -> None:
    # Given the rabbitmq service / Then its config and definitions are mounted and loaded
    mounts = " ".join(str(v) for v in services()["rabbitmq"].get("volumes", []))
    assert "./rabbitmq/definitions.json:/etc/rabbitmq/definitions.json" in mounts
    assert "./rabbitmq/rabbitmq.conf:/etc/rabbitmq/rabbitmq.conf" in mounts
    conf = (ROOT / "rabbitmq" / "rabbitmq.conf").read_text(encoding="utf-8")
    assert re.search(r"^load_definitions = /etc/rabbitmq/definitions.json$", conf, re.M)


def test_rabbitmq_caps_message_size_well_above_the_largest_command() -> None:
    # Given the broker config compose mounts
    conf = (ROOT / "rabbitmq" / "rabbitmq.conf").read_text(encoding="utf-8")
    found = re.findall(r"^max_message_size = (\d+)$", conf, re.M)
    # Then it caps message size, once, in bytes, below RabbitMQ's own 128 MiB default
    assert len(found) == 1, "rabbitmq.conf sets no max_message_size"
    cap = int(found[0])
    assert cap < 128 * 1024 * 1024
    # And far above the largest command the worker reads, and a later attempt's task
    # message carrying it (a JSON string escaped up to ~3x)
    assert cap >= 4 * MAX_BODY_BYTES


def test_there_is_no_guest_user() -> None:
    assert "guest" not in {u["name"] for u in definitions()["users"]}


@pytest.mark.parametrize("user", ["producer-billing", "producer-corrections", "producer-refunds"])
def test_each_producer_may_only_publish_to_the_command_exchange(user: str) -> None:
    # Given a producer's permissions
    perms = permissions_of(user)
    # Then it may write the command exchange and nothing else, and configure and read nothing
    assert allows(perms["write"], COMMAND_EXCHANGE)
    for name in OTHER_NAMES:
        assert not allows(perms["write"], name), f"{user} may write {name!r}"
    for name in (COMMAND_EXCHANGE, *OTHER_NAMES):
        assert not allows(perms["configure"], name), f"{user} may configure {name!r}"
        assert not allows(perms["read"], name), f"{user} may read {name!r}"


def test_each_consumer_may_only_read_its_own_bound_queue() -> None:
    # Given the consumer user and its queue
    perms = permissions_of("consumer-ledger-sync")
    queue = "events.ledger-sync"
    # Then it reads that queue only, and configures and writes nothing
    assert allows(perms["read"], queue)
    for name in (COMMAND_EXCHANGE, *OTHER_NAMES):
        assert not allows(perms["read"], name)
        assert not allows(perms["configure"], name)
        assert not allows(perms["write"], name)
    # And the queue exists, bound to the events, so the consumer need not declare anything
    assert queue in {q["name"] for q in definitions()["queues"]}
    assert {(b["source"], b["destination"]) for b in definitions()["bindings"]} >= {
        (EVENT_EXCHANGE, queue)
    }


def test_exchanges_in_the_definitions_match_what_the_worker_declares() -> None:
    # Given the worker's own declarations (a mismatch would fail its redeclare at start)
    declared = {e.name: e for e in (event_exchange, unrouted_events_exchange)}
    for exchange in definitions()["exchanges"]:
        ours = declared[exchange["name"]]
        assert exchange["type"] == ours.type
        assert exchange["durable"] is True
        assert exchange["arguments"] == (ours.arguments or {})


def test_the_worker_and_flower_connect_as_their_own_users_with_the_defined_passwords() -> None:
    found = services()
    worker_url = urlsplit(
        interpolated(environment(found["worker"])["DEBIT_WORKER_BROKER_URL"] or "")
    )
    flower_url = urlsplit(
        next(a for a in command(found["flower"]) if a.startswith("--broker=")).partition("=")[2]
    )
    for url, user in ((worker_url, "debit-worker"), (flower_url, "flower")):
        assert url.username == user
        assert url.password is not None
        assert password_matches(user, url.password)


def test_the_producer_keys_reach_the_worker_as_secret_files() -> None:
    worker = services()["worker"]
    env = environment(worker)
    assert env["DEBIT_WORKER_SECRETS_DIR"] == "/run/secrets"
    assert {"debit_worker_producer_keys", "debit_worker_producer_secret"} <= set(
        worker.get("secrets", [])
    )
    for name, spec in compose()["secrets"].items():
        assert (ROOT / spec["file"]).is_file(), name
