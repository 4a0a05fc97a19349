"""`python -m worker …` is `debit-worker …` (the supervisor starts its processes this way)."""

from worker.ops.cli import main

main()
