"""`python -m worker.sandbox`: the sandbox CLI."""

from worker.sandbox.cli import main

main()
