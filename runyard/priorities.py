"""Queue priorities: the names users give and the integers the head orders by (higher goes first).

Users choose low, medium or high; admins may give any integer within +-1,000,000 to place a run between or
beyond them. The schema's column default (migration 0002) is MEDIUM.
"""

from __future__ import annotations

from runyard.errors import UsageError

LOW, MEDIUM, HIGH = 100, 200, 300
BY_NAME = {"low": LOW, "medium": MEDIUM, "high": HIGH}
LIMIT = 1_000_000


def parse(text: str) -> int:
    """`low`, `medium`, `high`, or an integer (admins only; the head checks)."""
    value = BY_NAME.get(text.strip().lower())
    if value is not None:
        return value
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"--priority {text!r}: use low, medium, high or (admins) an integer") from None
    if abs(value) > LIMIT:
        raise UsageError(f"--priority {value}: must be within +-{LIMIT:,}")
    return value


def name(value: int) -> str:
    """The name of a standard priority, else the integer as text."""
    return next((key for key, known in BY_NAME.items() if known == value), str(value))
