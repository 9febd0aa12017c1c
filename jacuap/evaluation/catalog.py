"""What ``attack.py`` can name before JAX loads: the registry's plain facts, and a snapshot of the built-in ones.

The attack modules import JAX (seconds), so a request that read
:data:`jacuap.attacks.ATTACKS` to check ``--attack=sgd_uapp`` would make
``attack.py --help`` and every flag mistake wait for it.  :func:`facts` gives
each attack's :class:`AttackFacts` (its name, whether it is universal, what
it reads, its norms, layers and setting names): from the live registry once
``jacuap.attacks`` is loaded (a user's ``--attack_modules`` load it), else
from :mod:`.catalog_snapshot`, which this module writes::

    python -m jacuap.evaluation.catalog    # after changing a built-in attack's AttackSpec

``tests/test_catalog.py`` fails, naming that command, while the snapshot and
the registry differ: each fact still has one definition, the spec.

>>> facts()["sgd_uap"].norms, facts()["sv_uap"].settings
(('linf', 'l2'), ())
>>> label_losses(), priors()
(('ce', 'margin'), ('data', 'range', 'none'))
"""

from __future__ import annotations

import os
import pprint
import sys
from typing import Mapping, NamedTuple, Tuple

__all__ = ["AttackFacts", "facts", "label_losses", "priors", "describe", "snapshot_source"]


class AttackFacts(NamedTuple):
    """The JAX-free part of an :class:`jacuap.attacks.AttackSpec`: what a request is checked against."""

    name: str
    universal: bool
    needs_data: bool
    needs_labels: bool
    norms: Tuple[str, ...]
    targeted: bool
    layers: str
    settings: Tuple[str, ...]  # the setting names (a request's --loss, --prior, --layer go to these)
    summary: str


def _loaded() -> bool:
    return "jacuap.attacks" in sys.modules


def facts() -> Mapping[str, AttackFacts]:
    """``name -> AttackFacts`` of every registered attack, in registration order (universal ones first)."""
    if _loaded():
        from jacuap import attacks

        return describe(attacks.ATTACKS)
    from jacuap.evaluation import catalog_snapshot

    return {name: AttackFacts(name=name, **fields) for name, fields in catalog_snapshot.ATTACKS.items()}


def label_losses() -> Tuple[str, ...]:
    """The losses of the label attacks (``--loss``): :data:`jacuap.attacks.LABEL_LOSSES`."""
    if _loaded():
        from jacuap import attacks

        return tuple(attacks.LABEL_LOSSES)
    from jacuap.evaluation import catalog_snapshot

    return tuple(catalog_snapshot.LABEL_LOSSES)


def priors() -> Tuple[str, ...]:
    """What the prior attacks craft on (``--prior``): :data:`jacuap.attacks.PRIORS`."""
    if _loaded():
        from jacuap import attacks

        return tuple(attacks.PRIORS)
    from jacuap.evaluation import catalog_snapshot

    return tuple(catalog_snapshot.PRIORS)


def describe(specs: Mapping) -> dict:
    """``name -> AttackFacts`` of a registry of ``AttackSpec`` (universal ones first, each in its order)."""
    ordered = [s for s in specs.values() if s.universal] + [s for s in specs.values() if not s.universal]
    return {s.name: AttackFacts(s.name, bool(s.universal), bool(s.needs_data), bool(s.needs_labels),
                                tuple(s.norms), bool(s.targeted), s.layers, tuple(s.settings), s.summary)
            for s in ordered}


def snapshot_source() -> str:
    """The text of :mod:`.catalog_snapshot` for the registry as loaded now (the built-in attacks)."""
    from jacuap import attacks

    entries = {name: {k: v for k, v in f._asdict().items() if k != "name"}
               for name, f in describe(attacks.ATTACKS).items()}
    return ('"""The built-in attacks\' plain facts, written by ``python -m jacuap.evaluation.catalog``: '
            'do not edit."""\n\n'
            f"LABEL_LOSSES = {tuple(attacks.LABEL_LOSSES)!r}\n"
            f"PRIORS = {tuple(attacks.PRIORS)!r}\n"
            f"ATTACKS = {pprint.pformat(entries, width=116, sort_dicts=False)}\n")


if __name__ == "__main__":
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "catalog_snapshot.py")
    with open(path, "w") as f:
        f.write(snapshot_source())
    print(f"wrote {path}")
