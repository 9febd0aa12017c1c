"""The ConfigDict of the packaged configs: a typo in a field name is one line naming the closest field.

A plain locked ``ml_collections.ConfigDict`` answers ``config.update(num_epoch=3)``
with a KeyError that lists every field of the config before its "did you
mean" hint.  :class:`LockedConfigDict` is that ConfigDict with one change:
setting, updating or reading a field it does not have raises
:class:`UnknownFieldError`, whose message is one line::

    unknown config field 'num_epoch' (did you mean 'num_epochs'?)

``UnknownFieldError`` is a :class:`jacuap.errors.ConfigError` and also a
``KeyError`` and an ``AttributeError``, so ``hasattr``, ``config.get``, absl's
``config_flags`` and code that catches ml_collections' errors behave as
before.  Everything else (locking, ``copy_and_resolve_references``,
``to_dict``, ``to_json``, equality with a plain ConfigDict) is ConfigDict's.

>>> config = LockedConfigDict({"num_epochs": 5, "seed": 0}).lock()
>>> config.update(num_epoch=3)
Traceback (most recent call last):
...
jacuap.configs.locked.UnknownFieldError: unknown config field 'num_epoch' (did you mean 'num_epochs'?)
>>> config.num_epochs = 3
>>> config.num_epochs, hasattr(config, "sed"), config.get("sed", "none")
(3, False, 'none')
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable, Optional

import ml_collections

from jacuap.errors import ConfigError

__all__ = ["LockedConfigDict", "UnknownFieldError", "unknown_field"]


class UnknownFieldError(ConfigError, KeyError, AttributeError):
    """A config field that does not exist: a ConfigError, and the KeyError/AttributeError ml_collections raises."""

    def __str__(self) -> str:  # KeyError's would quote the message
        return str(self.args[0]) if self.args else ""


def unknown_field(name: Any, fields: Iterable[str]) -> UnknownFieldError:
    """The one-line error for ``name``, naming the closest of ``fields`` (when there is one).

    >>> print(unknown_field("batchsize", ["batch_size", "seed"]))
    unknown config field 'batchsize' (did you mean 'batch_size'?)
    >>> print(unknown_field("width", []))
    unknown config field 'width' (this group has no fields)
    """
    fields = [str(f) for f in fields]
    if not fields:
        return UnknownFieldError(f"unknown config field {name!r} (this group has no fields)")
    # cutoff=0: always name a candidate, even for a name like nothing known.
    closest = difflib.get_close_matches(str(name), fields, n=1, cutoff=0.0)[0]
    return UnknownFieldError(f"unknown config field {name!r} (did you mean {closest!r}?)")


def _is_field_name(key: Any) -> bool:
    # Private and dunder names are Python's lookups (copy, pickle-free protocols), not fields.
    return isinstance(key, str) and "." not in key and not key.startswith("_")


class LockedConfigDict(ml_collections.ConfigDict):
    """An ``ml_collections.ConfigDict`` whose unknown-field errors are one line (module docstring)."""

    def _unknown(self, key: Any) -> Optional[UnknownFieldError]:
        if _is_field_name(key) and key not in self._fields:
            return unknown_field(key, self._fields)
        return None

    def __getitem__(self, key: str) -> Any:
        error = self._unknown(key)
        if error is not None:
            raise error
        return super().__getitem__(key)

    def __setitem__(self, key: str, value: Any) -> None:
        error = self._unknown(key) if self.is_locked else None
        if error is not None:
            raise error
        super().__setitem__(key, value)

    def __getattr__(self, attribute: str) -> Any:
        try:
            return super().__getattr__(attribute)
        except AttributeError as exc:  # ConfigDict wraps __getitem__'s error
            if isinstance(exc.args[0] if exc.args else None, UnknownFieldError):
                raise exc.args[0] from None
            raise

    def __setattr__(self, attribute: str, value: Any) -> None:
        try:
            super().__setattr__(attribute, value)
        except AttributeError as exc:
            if isinstance(exc.args[0] if exc.args else None, UnknownFieldError):
                raise exc.args[0] from None
            raise

    def update(self, *other: Any, **kwargs: Any) -> None:
        # Every key is checked before any is set: a typo leaves the config as it was.
        if self.is_locked:
            for mapping in other[:1] + (kwargs,):
                for key in (mapping.keys() if hasattr(mapping, "keys") else ()):
                    error = self._unknown(key)
                    if error is not None:
                        raise error
        super().update(*other, **kwargs)

    def __eq__(self, other: Any) -> bool:
        # ConfigDict's equality wants other's class to be self's: keep `locked == plain` as `plain == locked`.
        return (isinstance(other, ml_collections.ConfigDict) and self._fields == other._fields
                and self.is_locked == other.is_locked and self.is_type_safe == other.is_type_safe)

    __hash__ = None
