"""Frozen records for the modules every ``forkhost`` command and primary
imports: what ``@dataclass(frozen=True)`` gives (construction by position
or keyword, defaults for the last fields, repr, equality and hashing by
value, ``vars()``, no assignment), without importing dataclasses, which
imports inspect, ast and dis that nothing else on those paths needs."""

from __future__ import annotations


class Record:
    """Subclasses name their fields in ``_fields`` and the defaults of the
    last ones in ``_defaults``."""

    _fields: tuple[str, ...] = ()
    _defaults: tuple = ()

    def __init__(self, *args, **kwargs):
        name, fields = type(self).__name__, self._fields
        if len(args) > len(fields):
            raise TypeError(f"{name}() takes {len(fields)} arguments, {len(args)} given")
        values = dict(zip(fields, args))
        for key, value in kwargs.items():
            if key not in fields or key in values:
                raise TypeError(f"{name}() got an unexpected or repeated argument {key!r}")
            values[key] = value
        first_default = len(fields) - len(self._defaults)
        for i, field in enumerate(fields):
            if field not in values:
                if i < first_default:
                    raise TypeError(f"{name}() missing argument {field!r}")
                values[field] = self._defaults[i - first_default]
        object.__setattr__(self, "__dict__", values)

    def __setattr__(self, name, value):
        raise AttributeError(f"cannot assign to field {name!r}")

    def __delattr__(self, name):
        raise AttributeError(f"cannot delete field {name!r}")

    def _values(self) -> tuple:
        return tuple(self.__dict__[f] for f in self._fields)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(" + ", ".join(
            f"{f}={v!r}" for f, v in zip(self._fields, self._values())) + ")"

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def _replace(self, **changes):
        """A copy with some fields changed."""
        return type(self)(**{**self.__dict__, **changes})
