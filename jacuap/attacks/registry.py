"""The attack registry: every attack declares an :class:`AttackSpec`, and the programs dispatch on it.

An attack is one module that defines its function and ends with ONE line,

    register(AttackSpec("my_uap", my_uap, settings={"num_epochs": 5}, ...))

after which ``attack.py --attack=my_uap``, the suites, the evaluation job
and the benchmarks all run it: :func:`craft` looks the spec up and calls
``spec.craft(Crafting(...))``.  The spec says what the programs need to
know without reading the code: whether the attack returns ONE perturbation
(universal) or one per input, whether it reads the crafting inputs and their
labels, which norms and whether a targeted form it has, whether it attacks
hidden layers, its settings and their defaults (``settings``: the keywords a
suite member may set; ``request_settings``: which request fields fill which
setting, e.g. ``attack.py --sgd_epochs`` fills ``num_epochs``), and its
gradient budget.

A spec's ``craft`` maps a :class:`Crafting` to the attack's call.  The
default is the common signature of every universal attack,

    fn(apply_fn, params, x, y, eps=eps, norm=norm, key=key, **settings)

and attacks with more to wire (a cache shared by budgets, hidden layers,
data-free priors, progress messages) give their own.  Attacks outside the
package register the same way, in a module that ``attack.py
--attack_modules=pkg.mod`` imports.

>>> spec = ATTACKS["sgd_uap"]
>>> spec.universal, spec.needs_labels, spec.targeted, dict(spec.settings)["num_epochs"]
(True, True, True, 5)
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import jax

from jacuap.attacks.balls import NORMS
from jacuap.attacks.result import UAPResult

__all__ = ["AttackSpec", "Crafting", "Layers", "LayerError", "ATTACKS", "register", "get", "craft", "universal_names",
           "per_input_names", "epochs_progress"]

GradientCount = Callable[[Mapping[str, Any], int, int], int]


class LayerError(ValueError):
    """A layer attack's layers cannot be found: an unknown name, or a model with no hidden layer."""


class Layers:
    """The hidden layers of the attacked model, for the attacks that read them.

    ``names()`` lists the submodules in call order (the last is the
    classifier); ``feature(name)`` is a ``features_fn(params, x)`` giving one
    layer's output and ``features(names)`` the tuple of several, from one
    forward pass.  Built from ``names`` (a function listing them) and
    ``capture`` (``names tuple -> features_fn`` returning a tuple); the
    evaluation job builds one per model, for Linen and NNX models alike.
    The functions are cached, so every budget reuses one compiled attack.
    """

    def __init__(self, names: Callable[[], Sequence[str]], capture: Callable[[Tuple[str, ...]], Callable]):
        self._names, self._capture, self._cache = names, capture, {}

    def names(self) -> List[str]:
        if "names" not in self._cache:
            self._cache["names"] = list(self._names())
        return self._cache["names"]

    def features(self, names: Sequence[str]) -> Callable:
        key = tuple(str(n).strip("/") for n in names)
        if not key:
            raise LayerError("give at least one layer")
        if key not in self._cache:
            known = self.names()
            unknown = [n for n in key if n not in known]
            if unknown:
                raise LayerError(f"no layer {unknown[0]!r} in the model; choose from {', '.join(known)}")
            self._cache[key] = self._capture(key)
        return self._cache[key]

    def feature(self, name: str) -> Callable:
        key = ("one", str(name).strip("/"))
        if key not in self._cache:
            many = self.features([name])
            self._cache[key] = lambda params, x: many(params, x)[0]
        return self._cache[key]


@dataclasses.dataclass(frozen=True)
class Crafting:
    """Everything one universal attack is crafted with (what a spec's ``craft`` reads).

    ``x``/``y`` are the crafting set (the attacker's data; data-free attacks
    ignore them and use ``input_shape`` and ``len(x)`` only); ``settings``
    are the spec's defaults updated by the request's and the suite member's;
    ``progress(message)`` hears a short status; ``cache`` is kept across the
    budgets of one (model, crafting set, seed); ``layers`` is None for a bare
    ``apply_fn`` with no named submodules.
    """

    apply_fn: Callable
    params: Any
    x: Any
    y: Any
    eps: float
    norm: str
    key: jax.Array
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    progress: Optional[Callable[[str], None]] = None
    cache: Dict[str, Any] = dataclasses.field(default_factory=dict)
    layers: Optional[Layers] = None

    @property
    def input_shape(self) -> Tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)

    def require_layers(self, attack: str) -> Layers:
        if self.layers is None:
            raise LayerError(f"{attack} attacks hidden layers: it needs a model with named submodules "
                             f"(a Linen or NNX module), not a bare apply_fn")
        return self.layers

    def layer_names(self, attack: str, default: str) -> List[str]:
        """The ``layer`` setting (a name, a comma list or a list), else a default of the model's layers.

        ``default="penultimate"``: the layer before the classifier (the
        second-to-last submodule called); ``"hidden"``: every submodule with
        parameters but the last (the classifier), so that a fixed input
        normalisation is not counted as a layer.
        """
        names = self.require_layers(attack).names()
        given = self.settings.get("layer")
        if given:
            return [n.strip().strip("/") for n in (given.split(",") if isinstance(given, str) else given) if n.strip()]
        hidden = names[:-1] if default == "penultimate" else [n for n in names[:-1] if _has_params(self.params, n)]
        if not hidden:
            raise LayerError(f"{attack}: the model has no hidden layer to attack (submodules: {', '.join(names)})")
        return [hidden[-1]] if default == "penultimate" else hidden


def _has_params(params: Any, name: str) -> bool:
    node = params
    for part in name.split("/"):
        if not isinstance(node, Mapping):
            return False
        key = part if part in node else (int(part) if part.isdigit() and int(part) in node else None)
        if key is None:
            return False
        node = node[key]
    return bool(jax.tree_util.tree_leaves(node))


def _default_craft(fn: Callable) -> Callable[[Crafting], UAPResult]:
    def run(c: Crafting) -> UAPResult:
        return fn(c.apply_fn, c.params, c.x, c.y, eps=c.eps, norm=c.norm, key=c.key, **dict(c.settings))

    return run


def _no_gradients(settings: Mapping[str, Any], num_craft: int, num_classes: int) -> int:
    return 0


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One attack, as the programs see it (module docstring).

    Attributes:
      name: the name ``attack.py --attack`` and the suites use.
      fn: the library function.
      universal: returns ``UAPResult`` (one ``v``), else ``x_adv`` per input.
      needs_data: reads the crafting inputs under its default settings
        (False: data-free by default).
      needs_labels: reads the crafting labels.
      norms: the budgets it supports.
      targeted: has a targeted form (``targeted=t``).
      layers: ``""`` (the logits only), ``"one"`` or ``"many"`` hidden layers.
      settings: the keywords a request or suite member may set, with defaults.
      request_settings: ``{setting: request field}`` the request fills.
      craft: ``Crafting -> UAPResult`` (default: the common signature).
      gradient_evaluations: ``(settings, N, K) -> int``, an upper bound on
        per-input backward passes of one budget.
      report: ``(Crafting, v) -> dict`` of extra numbers for its row, or None.
      summary: one line: the objective.
    """

    name: str
    fn: Callable
    universal: bool = True
    needs_data: bool = True
    needs_labels: bool = True
    norms: Tuple[str, ...] = NORMS
    targeted: bool = False
    layers: str = ""
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    request_settings: Mapping[str, str] = dataclasses.field(default_factory=dict)
    craft: Optional[Callable[[Crafting], UAPResult]] = None
    gradient_evaluations: GradientCount = _no_gradients
    report: Optional[Callable[[Crafting, Any], Dict[str, Any]]] = None
    summary: str = ""

    def __post_init__(self):
        if not self.name or not self.name.replace("_", "").isalnum() or self.name != self.name.lower():
            raise ValueError(f"attack name must be lower-case letters, digits and '_', got {self.name!r}")
        if not callable(self.fn):
            raise TypeError(f"attack {self.name}: fn must be callable")
        if self.layers not in ("", "one", "many"):
            raise ValueError(f"attack {self.name}: layers must be '', 'one' or 'many', got {self.layers!r}")
        unknown = [n for n in self.norms if n not in NORMS]
        if unknown:
            raise ValueError(f"attack {self.name}: unknown norm {unknown[0]!r}; choose from {', '.join(NORMS)}")
        object.__setattr__(self, "settings", types.MappingProxyType(dict(self.settings)))
        object.__setattr__(self, "request_settings", types.MappingProxyType(dict(self.request_settings)))
        if self.craft is None:
            object.__setattr__(self, "craft", _default_craft(self.fn))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The attack itself: ``ATTACKS[name](apply_fn, params, x, y, eps=..., ...)``."""
        return self.fn(*args, **kwargs)

    def resolve(self, overrides: Mapping[str, Any] = (), request: Any = None) -> Dict[str, Any]:
        """The settings of one run: defaults, then the request's fields, then ``overrides``.

        ValueError naming the setting when ``overrides`` holds one this attack does not take.
        """
        overrides = dict(overrides)
        unknown = sorted(k for k in overrides if k not in self.settings)
        if unknown:
            raise ValueError(f"{self.name} has no setting {unknown[0]!r}; it takes "
                             f"{', '.join(sorted(self.settings)) or 'none'}")
        out = dict(self.settings)
        if request is not None:
            for setting, field in self.request_settings.items():
                value = getattr(request, field, None)
                if value is not None and value != "":  # "" is a flag left at its default
                    out[setting] = value
        out.update(overrides)
        return out


#: Every registered attack, by name, in registration order.
ATTACKS: Dict[str, AttackSpec] = {}


def register(spec: AttackSpec) -> AttackSpec:
    """Adds ``spec`` to :data:`ATTACKS` (ValueError when the name is taken by another attack); returns it."""
    if not isinstance(spec, AttackSpec):
        raise TypeError(f"register takes an AttackSpec, got {type(spec).__name__}")
    old = ATTACKS.get(spec.name)
    if old is not None and old.fn is not spec.fn:
        raise ValueError(f"attack {spec.name!r} is registered already (by {getattr(old.fn, '__module__', '?')})")
    ATTACKS[spec.name] = spec
    return spec


def get(name: str) -> AttackSpec:
    """The spec of ``name``; ValueError listing the registered names otherwise."""
    try:
        return ATTACKS[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}") from None


def universal_names() -> Tuple[str, ...]:
    return tuple(n for n, s in ATTACKS.items() if s.universal)


def per_input_names() -> Tuple[str, ...]:
    return tuple(n for n, s in ATTACKS.items() if not s.universal)


def craft(name: str, crafting: Crafting) -> UAPResult:
    """The universal perturbation of attack ``name``: ``get(name).craft(crafting)``, its budget checked."""
    spec = get(name)
    if not spec.universal:
        raise ValueError(f"{name} is a per-input attack, not a universal one")
    if crafting.norm not in spec.norms:
        raise ValueError(f"{name} supports {', '.join(spec.norms)}, not {crafting.norm}")
    return spec.craft(crafting)


def epochs_progress(c: Crafting, prefix: Callable[[], str] = lambda: "") -> Optional[Callable[[int, float], None]]:
    """An epoch attack's ``progress(e, objective)`` that says ``"epoch 2/5 objective 1.234"`` (None: silent)."""
    if c.progress is None:
        return None
    epochs = c.settings.get("num_epochs", "?")
    return lambda e, objective: c.say(f"{prefix()}epoch {e + 1}/{epochs} objective {objective:.3f}")
