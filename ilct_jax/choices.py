"""The one check of a name-valued setting (a loss, a norm, a data source...).

Every module that takes a name from the config checks it here, so a typo
fails at once with the same one-line message: the field, the value and the
names it could be.
"""

from collections.abc import Sequence
from typing import Any


def check(field: str, value: Any, choices: Sequence[Any]) -> None:
  """Raises ValueError unless `value` is one of `choices`.

  Args:
    field: the setting's name as the user writes it (e.g. "ct.loss").
    value: its value.
    choices: the accepted values.
  """
  if value not in choices:
    names = ", ".join(str(c) if c != "" else "''" for c in choices)
    raise ValueError(f"{field}={value!r} is unknown; choose one of {names}")
