"""Fault injection against real RabbitMQ, PostgreSQL, the sandbox and real worker processes.

`python -m faults.harness` (make faults) runs debits while killing and restarting things;
`python -m faults.poison` (make poison) sends malformed and adversarial messages. See
docs/reliability.md.
"""
