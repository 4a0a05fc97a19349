"""schemas/asyncapi.yaml: its references resolve, its examples are valid, and its RabbitMQ
names are the ones in schemas/topology.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from schemas import topology
from schemas.events import FAILED_TYPE, SUCCEEDED_TYPE
from schemas.generate import JSON_DIR

SCHEMAS_DIR = JSON_DIR.parent
ASYNCAPI_PATH = SCHEMAS_DIR / "asyncapi.yaml"


def load_asyncapi() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(ASYNCAPI_PATH.read_text(encoding="utf-8"))
    return document


ASYNCAPI = load_asyncapi()


def refs(node: object, where: str = "#") -> Iterator[tuple[str, str]]:
    """Every ($ref value, location) pair in the document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value, where
            else:
                yield from refs(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from refs(value, f"{where}/{index}")


def pointer(document: Any, fragment: str) -> Any:
    """Resolve a JSON pointer (RFC 6901) such as /components/messages/x."""
    node = document
    for raw in fragment.lstrip("/").split("/") if fragment.strip("/") else []:
        part = raw.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def resolve(ref: str) -> Any:
    """What a $ref in asyncapi.yaml points at: a file relative to it, and/or a pointer."""
    target, _, fragment = ref.partition("#")
    if target:
        path = (ASYNCAPI_PATH.parent / target).resolve()
        assert path.is_file(), f"{ref}: no file {path}"
        document = json.loads(path.read_text(encoding="utf-8"))
    else:
        document = ASYNCAPI
    return pointer(document, fragment)


def messages() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = ASYNCAPI["components"]["messages"]
    return found


def amqp(channel: str) -> dict[str, Any]:
    binding: dict[str, Any] = ASYNCAPI["channels"][channel]["bindings"]["amqp"]
    return binding


ALL_REFS = sorted(set(refs(ASYNCAPI)))


def test_the_document_is_asyncapi_3() -> None:
    assert ASYNCAPI["asyncapi"].startswith("3.0")
    assert {"info", "channels", "operations", "components"} <= set(ASYNCAPI)


@pytest.mark.parametrize(("ref", "where"), ALL_REFS, ids=[f"{w}={r}" for r, w in ALL_REFS])
def test_every_ref_resolves(ref: str, where: str) -> None:
    # Given a $ref anywhere in the document / When followed / Then it reaches something
    assert resolve(ref) is not None, f"{where}: {ref}"


def test_payloads_point_at_the_generated_json_schema_files() -> None:
    payload_files = {
        name: message["payload"]["schema"]["$ref"] for name, message in messages().items()
    }
    assert payload_files == {
        "debitRequested": "./json/debit-requested.v1.json",
        "debitSucceeded": "./json/debit-succeeded-event.v1.json",
        "debitFailed": "./json/debit-failed-event.v1.json",
    }


@pytest.mark.parametrize("name", ["debitRequested", "debitSucceeded", "debitFailed"])
def test_every_example_validates_against_its_message_schema(name: str) -> None:
    # Given a message and its examples / When each example is checked against the payload
    message = messages()[name]
    validator = Draft202012Validator(resolve(message["payload"]["schema"]["$ref"]))
    assert message["examples"], f"{name} has no example"
    for example in message["examples"]:
        payload = example["payload"]
        document = resolve(payload["$ref"]) if "$ref" in payload else payload
        # Then it is valid
        assert [error.message for error in validator.iter_errors(document)] == []


def test_content_types_are_the_topology_ones() -> None:
    assert messages()["debitRequested"]["contentType"] == topology.CONTENT_TYPE
    assert messages()["debitSucceeded"]["contentType"] == topology.EVENT_CONTENT_TYPE
    assert messages()["debitFailed"]["contentType"] == topology.EVENT_CONTENT_TYPE


def test_the_command_channel_is_the_command_exchange_and_routing_key() -> None:
    channel = ASYNCAPI["channels"]["debitRequested"]
    binding = amqp("debitRequested")
    assert channel["address"] == topology.COMMAND_ROUTING_KEY
    assert binding["is"] == "routingKey"
    assert binding["exchange"]["name"] == topology.COMMAND_EXCHANGE
    assert (binding["exchange"]["type"], binding["exchange"]["durable"]) == ("topic", True)


def test_the_command_queue_is_a_durable_quorum_queue_dead_lettering_to_the_dlx() -> None:
    binding = amqp("debitCommandsQueue")
    assert ASYNCAPI["channels"]["debitCommandsQueue"]["address"] == topology.COMMAND_QUEUE
    assert binding["is"] == "queue"
    assert binding["queue"]["name"] == topology.COMMAND_QUEUE
    assert binding["queue"]["durable"] is True
    assert binding["x-bound-to"] == {
        "exchange": topology.COMMAND_EXCHANGE,
        "routingKey": topology.COMMAND_ROUTING_KEY,
    }
    assert binding["x-arguments"] == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": topology.DEAD_LETTER_EXCHANGE,
    }


def test_the_dead_letter_queue_is_bound_to_the_dlx() -> None:
    binding = amqp("deadLetters")
    assert ASYNCAPI["channels"]["deadLetters"]["address"] == topology.DEAD_LETTER_QUEUE
    assert binding["queue"]["name"] == topology.DEAD_LETTER_QUEUE
    assert binding["x-bound-to"]["exchange"] == topology.DEAD_LETTER_EXCHANGE


@pytest.mark.parametrize(
    ("channel", "routing_key"),
    [
        ("debitSucceeded", topology.SUCCEEDED_ROUTING_KEY),
        ("debitFailed", topology.FAILED_ROUTING_KEY),
    ],
)
def test_event_channels_are_routing_keys_on_the_event_exchange(
    channel: str, routing_key: str
) -> None:
    binding = amqp(channel)
    assert ASYNCAPI["channels"][channel]["address"] == routing_key
    assert binding["is"] == "routingKey"
    assert binding["exchange"]["name"] == topology.EVENT_EXCHANGE
    assert (binding["exchange"]["type"], binding["exchange"]["durable"]) == ("topic", True)


def test_every_amqp_name_in_the_document_is_a_topology_constant() -> None:
    # Given every exchange, queue, routing key and channel address the document names
    names: set[str] = set()
    for channel in ASYNCAPI["channels"].values():
        names.add(channel["address"])
        binding = channel["bindings"]["amqp"]
        names.update(binding[kind]["name"] for kind in ("exchange", "queue") if kind in binding)
        bound = binding.get("x-bound-to", {})
        names.update(bound[key] for key in ("exchange", "routingKey") if key in bound)
        arguments = binding.get("x-arguments", {})
        names.update(arguments[key] for key in ("x-dead-letter-exchange",) if key in arguments)
    constants = {
        value
        for key, value in vars(topology).items()
        if key.isupper() and not key.endswith("CONTENT_TYPE")
    }
    # Then each is one of schemas/topology.py's names ('#' is the catch-all DLX binding)
    assert names - {"#"} <= constants
    assert constants <= names


@pytest.mark.parametrize(
    "operation", ["receiveDebitRequested", "sendDebitSucceeded", "sendDebitFailed"]
)
def test_operations_use_persistent_acknowledged_delivery(operation: str) -> None:
    binding = ASYNCAPI["operations"][operation]["bindings"]["amqp"]
    assert binding["bindingVersion"] == "0.3.0"
    if ASYNCAPI["operations"][operation]["action"] == "send":
        assert (binding["deliveryMode"], binding["mandatory"]) == (2, True)
    else:
        assert binding["ack"] is True


def test_every_amqp_binding_declares_version_0_3_0() -> None:
    bindings = [channel["bindings"]["amqp"] for channel in ASYNCAPI["channels"].values()]
    bindings += [message["bindings"]["amqp"] for message in messages().values()]
    assert {binding["bindingVersion"] for binding in bindings} == {"0.3.0"}


def test_message_types_name_the_cloudevents_types() -> None:
    assert messages()["debitSucceeded"]["bindings"]["amqp"]["messageType"] == SUCCEEDED_TYPE
    assert messages()["debitFailed"]["bindings"]["amqp"]["messageType"] == FAILED_TYPE


def test_refs_point_inside_the_repository() -> None:
    for ref, _ in ALL_REFS:
        target = ref.partition("#")[0]
        if target:
            assert (ASYNCAPI_PATH.parent / target).resolve().is_relative_to(SCHEMAS_DIR)
