"""RabbitMQ names that form the public interface. Changing one is a breaking change."""

from typing import Final

COMMAND_EXCHANGE: Final = "debits.commands"
COMMAND_ROUTING_KEY: Final = "debit.requested"
COMMAND_QUEUE: Final = "debits.commands.worker"

EVENT_EXCHANGE: Final = "debits.events"
SUCCEEDED_ROUTING_KEY: Final = "debit.succeeded"
FAILED_ROUTING_KEY: Final = "debit.failed"

DEAD_LETTER_EXCHANGE: Final = "debits.dlx"
DEAD_LETTER_QUEUE: Final = "debits.dead-letter"

CONTENT_TYPE: Final = "application/json"
EVENT_CONTENT_TYPE: Final = "application/cloudevents+json"
