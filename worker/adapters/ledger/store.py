"""What every ledger store starts from: its engine, the way its database runs statements
(chosen here, once), and its clock."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Engine

from worker.adapters.ledger.database import single_statements
from worker.adapters.ledger.statements import runner_for


class Store:
    def __init__(self, engine: Engine, clock: Callable[[], datetime]) -> None:
        self._engine = engine
        self._single = single_statements(engine)  # lone statements through SQLAlchemy
        self._run = runner_for(engine)  # statements and transitions, each alone
        self._clock = clock
