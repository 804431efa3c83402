"""A method's hyper-parameters: each declared with its default, help and allowed values
(`HyperParameter`), converted and checked by `HyperParameter.coerce`, and held, once resolved by
`Method.resolve` (alignlab.objectives.registry), in a read-only `ResolvedParams` that the config
keeps and the loss takes as it is: a study's or command line's value is converted once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from alignlab.checks import Range, check_number
from alignlab.errors import AlignlabError
from alignlab.yaml_input import coerce_value


@dataclass(frozen=True)
class HyperParameter:
    name: str
    default: float | str | bool
    help: str
    choices: tuple[str, ...] | None = None
    allowed: Range | None = None  # where a number may lie (every number must at least be finite)

    def coerce(self, method: str, value):
        """The user's value converted to the default's type by `coerce_value` (the one converter of
        every setting) and checked (choices, range); an error names the parameter and the fix."""
        kind = type(self.default)
        try:
            value = coerce_value(self.name, value, kind, method)
        except AlignlabError as err:
            raise AlignlabError(f"{err}; {self.help}") from None
        if self.choices is not None and value not in self.choices:
            raise AlignlabError(f"{method}: hyper-parameter '{self.name}' must be one of "
                                f"{', '.join(self.choices)}; got {value!r}")
        if kind in (int, float):
            check_number(method, f"hyper-parameter '{self.name}'", value,
                         self.allowed or Range(integer=kind is int), self.help)
        return value


class ResolvedParams(Mapping):
    """A method's hyper-parameters as `Method.resolve` returns them: every one present (defaults
    filled in), of its default's type, checked (choices, ranges, the method's `check`). Read-only,
    so what a config holds is what was checked: TrainConfig.validate takes those of its own method
    as they are, and the trainer passes them to the loss as they are."""

    def __init__(self, method: str, values: dict):
        self.method = method
        self._values = dict(values)

    def __getitem__(self, name: str):
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"ResolvedParams({self.method!r}, {self._values!r})"

    def __reduce__(self):  # pickled to worker processes and copied by dataclasses.asdict
        return ResolvedParams, (self.method, self._values)
