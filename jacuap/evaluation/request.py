"""What ``attack.py`` is asked: an :class:`AttackRequest`, validated on construction, and the attacks
it may name (the registry, and the modules that ``--attack_modules`` import to register more)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
import os
import sys
from typing import Optional, Sequence, Tuple

from jacuap import io
from jacuap.budgets import NORMS, budget_problem, canonical_eps
from jacuap.errors import AttackError
from jacuap.evaluation import catalog, suite

__all__ = ["AttackRequest", "TorchModel", "TORCH_MECHANISMS", "attack_names", "import_attack_modules", "request_folder", "check_out_path", "REQUEST_KEYS"]


def attack_names() -> tuple:
    """What ``--attack`` accepts: every registered attack (:data:`jacuap.attacks.ATTACKS`), universal first.

    Read from :func:`jacuap.evaluation.catalog.facts`: no JAX until the attacks run.
    """
    return tuple(catalog.facts())


def import_attack_modules(names: Sequence[str]) -> None:
    """Imports each module of ``names`` (``pkg.mod``), whose ``register(AttackSpec(...))`` lines add attacks.

    AttackError (one line) when a module cannot be imported; the folder a
    run starts in is searched first, as ``python -m`` does.
    """
    import importlib

    if names and "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in (n.strip() for n in names if n.strip()):
        try:
            importlib.import_module(name)
        except Exception as exc:  # ImportError, or the module's own error (a bad AttackSpec) while importing
            raise AttackError(f"--attack_modules: cannot import {name!r} ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def check_out_path(out: str) -> None:
    """AttackError (one line) when ``out`` is, or lies under, something that is not a folder."""
    path = io.existing_ancestor(out)
    if os.path.exists(path) and not os.path.isdir(path):
        where = "is" if path == os.path.abspath(out) else f"lies under {path}, which is"
        raise AttackError(f"--out {out} {where} a file, not a folder; choose a folder")


def request_folder(out: str, request: "AttackRequest") -> str:
    """Where ``attack.py`` writes ``request`` given ``--out`` ``out``: one folder holds many requests.

    ``out`` itself when it is fresh (no ``request.json``) or holds this
    request already (its rows resume there); else the sub-folder
    ``out/<request.folder_name()>``, so that a suite, then one attack, then
    other budgets into one ``--out`` each keep their own outputs.  Reads
    ``out/request.json`` only (no JAX).
    """
    old = store_request(out)
    if old is None or {k: old[k] for k in REQUEST_KEYS if k in old} == request.fields():
        return out
    return os.path.join(out, request.folder_name())


def store_request(folder: str):
    """The ``request.json`` of ``folder`` as a dict, or None when absent or unreadable."""
    try:
        with open(os.path.join(folder, "request.json")) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


#: The fields of ``request.json`` that the request decides (the others say which model and data it ran on).
REQUEST_KEYS = ("attacks", "norm", "eps", "seed", "num_craft", "num_eval", "craft_split", "num_metrics", "sgd_epochs",
                "deepfool_passes", "suite", "targeted", "layer", "loss", "prior", "eval_split", "torch")


@dataclasses.dataclass(frozen=True)
class TorchModel:
    """A PyTorch model to attack in place of a workdir's (``attack.py --torch_model``; :func:`jacuap.from_torch`).

    ``factory`` is ``"pkg.mod:fn"``, called with no arguments to build the
    ``torch.nn.Module``; ``weights`` a state dict (``torch.save(model.state_dict())``,
    read with ``weights_only=True``, or ``.safetensors``), "" to keep the
    factory's; ``mechanism`` how JAX runs it (``convert``: traced into a pure
    JAX function; ``callback``: torch called from JAX, VJPs only); ``layout``
    the layout the module takes (jacuap always passes NHWC pixels in [0, 1] and
    transposes); ``mean``/``std`` its input normalisation when it lives outside
    the module (empty: the module takes [0, 1] pixels); ``dataset`` (a
    :data:`jacuap.data.DATASETS` name, ``npz:PATH`` or ``folder:PATH``) and
    ``data_dir`` what it is evaluated on, which fixes the input shape.

    >>> TorchModel("mypkg.nets:resnet20", "cifar10", mechanism="jit")
    Traceback (most recent call last):
    jacuap.errors.AttackError: --torch_mechanism must be convert or callback, got 'jit'
    """

    factory: str
    dataset: str
    weights: str = ""
    mechanism: str = "convert"
    layout: str = "NCHW"
    mean: Tuple[float, ...] = ()
    std: Tuple[float, ...] = ()
    data_dir: str = ""

    def __post_init__(self):
        module, _, attr = self.factory.partition(":")
        if not module or not attr:
            raise AttackError(f"--torch_model must be 'package.module:factory', got {self.factory!r}")
        if not self.dataset:
            raise AttackError("--torch_model needs --dataset (what the model is evaluated on: cifar10, npz:PATH, ...)")
        if self.mechanism not in TORCH_MECHANISMS:
            raise AttackError(f"--torch_mechanism must be {' or '.join(TORCH_MECHANISMS)}, got {self.mechanism!r}")
        if self.layout not in ("NCHW", "NHWC"):
            raise AttackError(f"--torch_layout must be NCHW or NHWC, got {self.layout!r}")
        if self.weights and not os.path.isfile(self.weights):
            raise AttackError(f"--torch_weights {self.weights!r} is not a file")
        if len(self.mean) != len(self.std):
            raise AttackError(f"--torch_mean and --torch_std need one value per channel each, got {len(self.mean)} "
                              f"and {len(self.std)}")
        if any(not s > 0 for s in self.std):
            raise AttackError(f"--torch_std must be positive, got {list(self.std)}")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(m) for m in self.std))

    def record(self) -> dict:
        """What ``request.json`` says of it (the weights' content is in the model fingerprint)."""
        return {"factory": self.factory, "weights": os.path.abspath(self.weights) if self.weights else "",
                "mechanism": self.mechanism, "layout": self.layout, "mean": list(self.mean), "std": list(self.std),
                "dataset": self.dataset}


#: How :func:`jacuap.from_torch` runs a PyTorch module (jacuap.models.torch_bridge).
TORCH_MECHANISMS = ("convert", "callback")


def _reads_layers(request, known) -> bool:
    names = [a for a, _, _ in suite.suite_tasks(request.suite, 0)] if request.suite else request.attacks
    return any(known[a].layers for a in names if a in known)


@dataclasses.dataclass(frozen=True)
class AttackRequest:
    """Everything one attack run needs; validated on construction (``AttackError``, one line).

    ``attacks`` are names of ``jacuap.attacks.ATTACKS``, ``norm`` one of
    ``jacuap.attacks.NORMS``, ``eps`` the budgets in pixel units (l_inf
    ``eps`` in ``[0, 1]``), rounded to 6 significant digits (two budgets equal
    then are refused); ``out`` is the output folder; ``overwrite`` lets a run
    replace the outputs of another request there.

    >>> AttackRequest(workdir="w", attacks=["sgd_uap"], norm="linf", eps=[0.1], out="o").num_craft
    5000
    >>> AttackRequest(workdir="w", attacks=["carlini"], norm="linf", eps=[0.1], out="o")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    jacuap.errors.AttackError: unknown attack carlini; choose from sgd_uap, sga_uap, sgd_uap_restarts, deepfool_uap, ...
    >>> AttackRequest(workdir="w", attacks=["sgd_uap"], norm="linf", eps=[0.1, 0.1000001], out="o")
    Traceback (most recent call last):
    jacuap.errors.AttackError: eps 0.1 is given twice (budgets are compared to 6 significant digits)
    """

    workdir: str
    attacks: Sequence[str]
    norm: str
    eps: Sequence[float]
    out: str
    num_craft: int = 5000
    num_eval: int = 10000
    craft_split: str = "train"
    eval_split: str = "test"  # "validation": the held-out training inputs of a model trained with num_validation
    num_metrics: int = 500
    sgd_epochs: int = 5
    deepfool_passes: int = 5
    seed: int = 0
    progress: bool = True
    overwrite: bool = False
    suite: str = ""  # a name of jacuap.evaluation.suite.SUITES: its members replace `attacks` (which must be empty)
    targeted: bool = False  # also the K x K targeted matrix per budget (on with a suite that has one)
    layer: str = ""  # the hidden layer(s) the layer attacks read (layer_max, fg_uap, gd_uap); "" = their default
    loss: str = ""  # the label attacks' loss (sgd_uap, sga_uap, sgd_uap_restarts): ce or margin; "" = ce
    prior: str = ""  # what cosine_uap and gd_uap craft on: data, range or none; "" = each one's default
    source_workdir: str = ""  # craft on this workdir's model and crafting split (transfer); "" = workdir
    uap_file: str = ""  # evaluate this .npy perturbation (no attack)
    torch: Optional[TorchModel] = None  # attack this PyTorch model instead of a workdir's (workdir "")

    def __post_init__(self):
        if bool(self.workdir) == bool(self.torch):
            raise AttackError("give --workdir (a train.py run) or --torch_model (a PyTorch model), one of them")
        known = catalog.facts()  # the registry's facts: checked before JAX loads
        unknown = [a for a in self.attacks if a not in known]
        if unknown or not (self.attacks or self.suite or self.uap_file):
            raise AttackError(f"unknown attack {', '.join(unknown) or '(none)'}; "
                              f"choose from {', '.join(attack_names())}")
        if self.suite and self.suite not in suite.SUITES:
            raise AttackError(f"unknown suite {self.suite!r}; choose from {', '.join(suite.SUITES)}")
        if self.suite and self.attacks:
            raise AttackError("--suite and --attack are exclusive (a suite fixes its attacks); drop one")
        if self.uap_file and (self.attacks or self.suite or self.targeted):
            raise AttackError("--uap_file evaluates the given perturbation only; drop --attack/--suite/--targeted")
        if self.uap_file and len(self.eps) != 1:
            raise AttackError("--uap_file takes one --eps, the budget the perturbation is checked against")
        if self.loss:
            if self.loss not in catalog.label_losses():
                raise AttackError(f"unknown loss {self.loss!r}; choose {' or '.join(catalog.label_losses())}")
            if self.suite or not any("loss" in known[a].settings for a in self.attacks):
                raise AttackError("--loss is read by sgd_uap, sga_uap and sgd_uap_restarts only (a suite fixes its "
                                  "members' losses); drop it or add one of them")
        if self.prior:
            if self.prior not in catalog.priors():
                raise AttackError(f"unknown prior {self.prior!r}; choose from {', '.join(catalog.priors())}")
            if self.suite or not any("prior" in known[a].settings for a in self.attacks):
                raise AttackError("--prior is read by cosine_uap and gd_uap only (a suite fixes its members' "
                                  "priors); drop it or add one of them")
        if self.layer and not _reads_layers(self, known):
            layered = [n for n, a in known.items() if a.layers]
            raise AttackError(f"--layer is read by the attacks on hidden layers only ({', '.join(layered)}); "
                              f"drop it or add one of them")
        if self.norm not in NORMS:
            raise AttackError(f"unknown norm {self.norm!r}; choose {' or '.join(NORMS)}")
        for name in self.attacks:
            if self.norm not in known[name].norms:
                raise AttackError(f"{name} supports {', '.join(known[name].norms)}, not --norm={self.norm}")
        if not self.eps:
            raise AttackError("give at least one eps")
        for e in self.eps:
            problem = budget_problem(e, self.norm)  # the rule every budget shares (jacuap.budgets)
            if problem:
                raise AttackError(f"{problem} (pixel units)")
        eps = [canonical_eps(e) for e in self.eps]
        for twice in (e for i, e in enumerate(eps) if e in eps[:i]):
            raise AttackError(f"eps {twice:g} is given twice (budgets are compared to 6 significant digits)")
        for twice in (a for i, a in enumerate(self.attacks) if a in self.attacks[:i]):
            raise AttackError(f"attack {twice} is given twice")
        object.__setattr__(self, "eps", eps)
        object.__setattr__(self, "attacks", list(self.attacks))
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or not 0 <= self.seed < 2**63:
            raise AttackError(f"seed must be an integer >= 0, got {self.seed}")
        for name in ("num_craft", "num_eval", "sgd_epochs", "deepfool_passes"):
            if getattr(self, name) <= 0:
                raise AttackError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_metrics < 0:
            raise AttackError(f"num_metrics must be >= 0, got {self.num_metrics}")
        if self.craft_split not in ("train", "test"):
            raise AttackError(f"craft_split must be train or test, got {self.craft_split!r}")
        if self.eval_split not in ("test", "validation"):
            raise AttackError(f"eval_split must be test or validation, got {self.eval_split!r}")
        if self.eval_split == "validation" and self.craft_split != "train":
            raise AttackError("eval_split=validation crafts on the training split; drop craft_split=test")

    def fields(self) -> dict:
        """What decides this request's rows (JSON-ready; not where it reads or writes): ``request.json``'s part.

        >>> AttackRequest(workdir="w", attacks=["sgd_uap"], norm="l2", eps=[1], out="o", loss="margin").fields()["loss"]
        'margin'
        """
        fields = {"attacks": list(self.attacks), "norm": self.norm, "eps": [canonical_eps(e) for e in self.eps],
                  "seed": int(self.seed), "num_craft": int(self.num_craft), "num_eval": int(self.num_eval),
                  "craft_split": self.craft_split, "num_metrics": int(self.num_metrics),
                  "sgd_epochs": int(self.sgd_epochs), "deepfool_passes": int(self.deepfool_passes)}
        fields.update({k: v for k, v in (("suite", self.suite), ("targeted", self.targeted), ("layer", self.layer),
                                         ("loss", self.loss), ("prior", self.prior),
                                         ("eval_split", self.eval_split != "test" and self.eval_split),
                                         ("torch", self.torch and self.torch.record())) if v})
        return fields

    def model_source(self) -> str:
        """Where the attacked model comes from: the workdir's absolute path, or ``torch:<factory>``."""
        return f"torch:{self.torch.factory}" if self.torch else os.path.abspath(self.workdir)

    def folder_name(self) -> str:
        """The request in a folder name: what it runs, the norm, the budgets, and 6 hex digits of everything else.

        >>> AttackRequest(workdir="w", attacks=[], suite="quick", norm="linf", eps=[0.05, 0.1], out="o").folder_name()
        'quick_suite_linf_eps0.05,0.1_25e37f'
        """
        what = f"{self.suite}_suite" if self.suite else "+".join(self.attacks) or "uap_file"
        if len(what) > 48:
            what = f"{len(self.attacks)}_attacks"
        eps = ",".join(f"{e:g}" for e in self.eps)
        if len(eps) > 32:
            eps = f"{min(self.eps):g}-{max(self.eps):g}x{len(self.eps)}"
        sources = {k: os.path.abspath(v) for k, v in (("source_workdir", self.source_workdir),
                                                      ("uap_file", self.uap_file)) if v}
        digest = hashlib.sha256(json.dumps({**self.fields(), **sources}, sort_keys=True).encode()).hexdigest()[:6]
        return f"{what}_{self.norm}_eps{eps}_{digest}"

    @classmethod
    def from_flags(cls, flags, attack_given: bool = True) -> "AttackRequest":
        """The request of ``attack.py``'s flags (``--eps`` a comma list of numbers).

        ``attack_given`` says ``--attack`` was on the command line: without it,
        ``--suite`` and ``--uap_file`` replace the default attacks.
        """
        extra = {k: getattr(flags, k, d) or d for k, d in (("suite", ""), ("targeted", False), ("layer", ""), ("loss", ""), ("prior", ""),
                                                            ("source_workdir", ""), ("uap_file", ""))}
        try:
            eps = [float(e) for e in flags.eps]
        except ValueError:
            raise AttackError(f"eps must be a comma list of numbers, got {','.join(flags.eps)!r}") from None
        torch = None
        if getattr(flags, "torch_model", ""):
            if flags.workdir:
                raise AttackError("--workdir and --torch_model are exclusive: attack a train.py run or a PyTorch model")
            if not flags.out:
                raise AttackError("--torch_model needs --out (there is no workdir to write into)")
            try:
                mean, std = ([float(v) for v in getattr(flags, k) or []] for k in ("torch_mean", "torch_std"))
            except ValueError:
                raise AttackError("--torch_mean and --torch_std must be comma lists of numbers") from None
            torch = TorchModel(flags.torch_model, flags.dataset or "", flags.torch_weights or "", flags.torch_mechanism,
                               flags.torch_layout, tuple(mean), tuple(std), flags.data_dir or "")
        elif not flags.workdir:
            raise AttackError("give --workdir (a train.py run) or --torch_model (a PyTorch model), one of them")
        return cls(
            workdir=flags.workdir or "",
            torch=torch,
            attacks=[a.strip() for a in flags.attack if a.strip()]
            if attack_given or not (extra["suite"] or extra["uap_file"]) else [],
            norm=flags.norm,
            eps=eps,
            out=flags.out or os.path.join(flags.workdir, "attack"),
            num_craft=flags.num_craft,
            num_eval=flags.num_eval,
            craft_split=flags.craft_split,
            eval_split=getattr(flags, "eval_split", "test") or "test",
            num_metrics=flags.num_metrics,
            sgd_epochs=flags.sgd_epochs,
            deepfool_passes=flags.deepfool_passes,
            seed=flags.seed,
            progress=flags.progress,
            overwrite=bool(getattr(flags, "overwrite", False)),
            **extra,
        )
