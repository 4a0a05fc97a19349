"""A plain py-amqp client for the harness: publishes with confirms and reconnects through
broker restarts; drains a queue at the end."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import amqp

from faults.services import RABBIT_HOST

COMMANDS = "debits.commands"
EVENTS = "debits.events"
DEAD_LETTERS = "debits.dead-letter"
_ERRORS = (OSError, socket.error, amqp.exceptions.AMQPError, AttributeError)


class Broker:
    def __init__(self, vhost: str) -> None:
        self.vhost = vhost
        self._conn: amqp.Connection | None = None
        self._channel: Any = None
        self.reconnects = 0

    def channel(self) -> Any:
        if self._channel is None:
            conn = amqp.Connection(
                RABBIT_HOST,
                userid="guest",
                password="guest",
                virtual_host=self.vhost,
                confirm_publish=True,
            )
            conn.connect()
            channel = conn.channel()
            channel.confirm_select()
            self._conn, self._channel = conn, channel
        return self._channel

    def reset(self) -> None:
        try:
            if self._conn is not None:
                self._conn.collect()
        except _ERRORS:
            pass
        self._conn = self._channel = None
        self.reconnects += 1

    def publish(
        self,
        body: bytes,
        *,
        exchange: str = COMMANDS,
        routing_key: str = "debit.requested",
        deadline: float = 300.0,
        **properties: Any,
    ) -> None:
        """Retry until the broker confirms (a resend after a lost confirm is a duplicate,
        which the worker must absorb)."""
        give_up = time.monotonic() + deadline
        properties.setdefault("delivery_mode", 2)
        while True:
            try:
                self.channel().basic_publish(
                    amqp.Message(body, **properties),
                    exchange=exchange,
                    routing_key=routing_key,
                    mandatory=True,
                )
            except _ERRORS:
                if time.monotonic() > give_up:
                    raise
                self.reset()
                time.sleep(0.5)
            else:
                return

    def bind_collector(self, queue: str, exchange: str = EVENTS) -> None:
        channel = self.channel()
        channel.queue_declare(
            queue, durable=True, auto_delete=False, arguments={"x-queue-type": "quorum"}
        )
        channel.queue_bind(queue, exchange, routing_key="#")

    def drain(self, queue: str, *, idle_seconds: float = 3.0) -> list[amqp.Message]:
        got: list[amqp.Message] = []
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < idle_seconds:
            try:
                message = self.channel().basic_get(queue, no_ack=True)
            except _ERRORS:
                self.reset()
                time.sleep(0.5)
                continue
            if message is None:
                time.sleep(0.1)
                continue
            got.append(message)
            idle_since = time.monotonic()
        return got

    def depth(self, queue: str) -> int:
        try:
            _, count, _ = self.channel().queue_declare(queue, passive=True)
        except _ERRORS:
            self.reset()
            return -1
        return int(count)

    def close(self) -> None:
        try:
            if self._conn is not None:
                self._conn.close()
        except _ERRORS:
            pass


def events_of(messages: list[amqp.Message]) -> list[dict[str, Any]]:
    return [json.loads(m.body) for m in messages]
