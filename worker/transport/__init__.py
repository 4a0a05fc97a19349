"""RabbitMQ in and out: the intake (bytes → one verified command), the attempt engine, the
Celery task, the topology, event publishing (pump, relay)."""
