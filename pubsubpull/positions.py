"""Positions in the change log: ``(txid, id)``, rendered as an opaque string.

Readers only see changes whose ``txid`` is below the safe horizon
``pg_snapshot_xmin(pg_current_snapshot())``: every transaction with a smaller txid
has ended, so no change can later appear behind a position already read.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_FORMAT = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")  # each number also below 2**63
#: Positions as this server writes them (a change ``id``, a ``cursor``), as a regular
#: expression.
SHAPE = "[0-9]+-[0-9]+"
#: Positions :meth:`Position.parse` accepts, as a regular expression for an API schema:
#: numbers of up to 18 digits, all below 2**63 (parse also takes longer ones below it).
PATTERN = "[0-9]{1,18}-[0-9]{1,18}"


class InvalidPosition(ValueError):
    """A string that is not a position this server produced."""


class Position(NamedTuple):
    txid: int
    id: int

    def __str__(self) -> str:
        return f"{self.txid}-{self.id}"

    @classmethod
    def parse(cls, value: str) -> Position:
        """The position a ``cursor``/``id`` string stands for."""
        match = _FORMAT.fullmatch(value or "")
        if not match or int(match[1]) >= 2**63 or int(match[2]) >= 2**63:
            raise InvalidPosition(
                f"{value!r} is not a position: use the 'cursor' or a change 'id' from this server"
            )
        return cls(int(match[1]), int(match[2]))


START = Position(0, 0)
