"""What ``attack.py`` keeps in its output folder, and how a rerun finds it again.

The layout of an output folder ``OUT`` (every file written whole through
:mod:`jacuap.io`, with the permissions of a normally created file)::

    OUT/.lock                              io.exclusive_lock: one run per folder
    OUT/request.json                       what was asked, written when the run starts
    OUT/rows/<stem>.json                   one finished (attack, eps) row, written as soon as it is done
    OUT/<stem>.npy                         the UAP of a universal row, written just before its row
    OUT/<stem>.png                         the same UAP as an image at its own scale (0.5 + 0.5 v / max|v|)
    OUT/rows/metrics.json                  the Jacobian metrics, once computed
    OUT/uaps.png                           the figure of every UAP
    OUT/results.json                       written last: the whole run, ``"complete": true``

with ``<stem>`` = ``<attack>_<norm>_eps<eps>_seed<seed>`` (:func:`stem`),
``eps`` rounded to 6 significant digits, so the name is unique per budget.

The resume rule: a run whose request (:func:`request_record`: attacks, norm,
eps, seed, set sizes, attack settings, the checkpoint step and a fingerprint of
its parameters) equals the one in ``request.json`` reuses every finished row
and computes only the others; a different request is refused unless
``overwrite``, which first removes what jacuap wrote there (:func:`jacuap_files`),
never anything else.  ``results.json`` exists only while it describes the rows
beside it: it is removed before any row is (re)computed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence

import jax
import numpy as np

from jacuap import attacks, io, parallel
from jacuap.budgets import EPS_DIGITS, canonical_eps
from jacuap.errors import AttackError
from jacuap.evaluation.request import check_out_path  # noqa: F401  (JAX-free: attack.py checks it first)

__all__ = [
    "REQUEST_NAME", "RESULTS_NAME", "FIGURE_NAME", "ROWS_DIR", "METRICS_NAME", "EPS_DIGITS", "canonical_eps",
    "stem", "model_fingerprint", "check_out_path", "request_record", "difference", "claim", "jacuap_files", "load_row",
    "save_row", "load_metrics", "save_metrics", "remove_results", "write_results", "finite_or_null"
]

REQUEST_NAME = "request.json"
RESULTS_NAME = "results.json"
FIGURE_NAME = "uaps.png"
ROWS_DIR = "rows"
METRICS_NAME = "metrics.json"
_FORMAT = 1

# Row names are the registered attacks (any module may register one), a suite member's label, "uap_file" and
# "targeted": lower-case words joined by "_", as AttackSpec requires.
_NAME = r"[a-z0-9]+(?:_[a-z0-9]+)*"
_STEM = re.compile(r"^%s_(?:%s)_eps[0-9.e+-]+_seed[0-9]+$" % (_NAME, "|".join(map(re.escape, attacks.NORMS))))
_TARGETED_FIGURE = re.compile(r"^targeted_eps[0-9.e+-]+\.png$")
# Names of the previous layout (before the seed was in the name): "<attack>_<norm>_eps<eps>.npy".
_OLD_STEM = re.compile(r"^%s_(?:%s)_eps[0-9.e+-]+$" % (_NAME, "|".join(map(re.escape, attacks.NORMS))))
_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp-[A-Za-z0-9_]+$")  # io.atomic_write's temporary files



def stem(attack: str, norm: str, eps: float, seed: int) -> str:
    """The file stem of one row.

    >>> stem("sgd_uap", "linf", 0.1, 0)
    'sgd_uap_linf_eps0.1_seed0'
    """
    return f"{attack}_{norm}_eps{canonical_eps(eps):.{EPS_DIGITS}g}_seed{seed}"


def model_fingerprint(params: Any) -> str:
    """``sha256:<16 hex>`` of a parameter tree (paths, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return "sha256:" + h.hexdigest()[:16]


def request_record(request: Any, checkpoint_step: int, fingerprint: str, dataset: str) -> Dict[str, Any]:
    """What ``request.json`` holds: everything that decides the rows (``workdir`` only informs)."""
    return {
        "format": _FORMAT,
        **request.fields(),
        "dataset": dataset,
        "checkpoint_step": int(checkpoint_step),
        "model_fingerprint": fingerprint,
        "workdir": request.model_source(),
    }


_WORDS = {"checkpoint_step": "checkpoint step", "model_fingerprint": "model parameters", "num_craft": "crafting inputs",
          "num_eval": "evaluation inputs", "num_metrics": "metric inputs", "sgd_epochs": "SGD epochs",
          "deepfool_passes": "DeepFool passes", "craft_split": "crafting split", "eval_split": "evaluation split",
          "source_model_fingerprint": "source model's parameters", "uap_file_sha256": "perturbation file"}


def difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """The request ``old`` in words, by what differs from ``new`` (``request.json`` records).

    >>> difference({"attacks": [], "suite": "quick", "eps": [0.1]}, {"attacks": ["sgd_uap"], "eps": [0.1]})
    'another request (attacks: the quick suite, not sgd_uap)'
    >>> difference({"checkpoint_step": 430, "model_fingerprint": "a"}, {"checkpoint_step": 860, "model_fingerprint": "b"})
    'this request on another model (checkpoint step: 430, not 860; model parameters differ)'
    """
    def shown(record, key):
        value = record.get(key)
        if key == "attacks" and not value:
            return f"the {record['suite']} suite" if record.get("suite") else "none"
        if isinstance(value, list):
            return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) or "none"
        return "none" if value in (None, "", False) else str(value)

    keys = [k for k in dict.fromkeys([*old, *new]) if k not in ("workdir", "format") and old.get(k) != new.get(k)]
    model = {"checkpoint_step", "model_fingerprint", "dataset", "source_model_fingerprint"}
    skip = {"suite"} if "attacks" in keys else set()
    words = [f"{_WORDS.get(k, k)} differ" if k.endswith(("fingerprint", "sha256"))
             else f"{_WORDS.get(k, k)}: {shown(old, k)}, not {shown(new, k)}" for k in keys if k not in skip]
    who = "this request on another model" if keys and set(keys) <= model else "another request"
    return f"{who} ({'; '.join(words[:4])})" if words else who


def _same_request(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    strip = lambda r: {k: v for k, v in r.items() if k != "workdir"}
    return strip(a) == strip(b)


def _read_json(path: str) -> Optional[Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def jacuap_files(out: str) -> List[str]:
    """Paths in ``out`` that jacuap wrote (any run, any request, this layout or the previous one).

    Never anything else: user files, other programs' files and folders stay.
    The lock file is not listed (it is held while the folder is used).
    """
    found: List[str] = []
    if not os.path.isdir(out):
        return found
    legacy = _read_json(os.path.join(out, RESULTS_NAME))
    legacy_files = set()
    if isinstance(legacy, dict) and isinstance(legacy.get("results"), list):
        legacy_files = {r.get("file") for r in legacy["results"] if isinstance(r, dict)}
    top = {REQUEST_NAME, RESULTS_NAME, FIGURE_NAME}

    def ours(name: str, rows: bool) -> bool:
        base, ext = os.path.splitext(name)
        if rows:
            return ext == ".json" and (name == METRICS_NAME or bool(_STEM.match(base)))
        return (name in top or (ext in (".npy", ".png") and bool(_STEM.match(base))) or bool(_TARGETED_FIGURE.match(name))
                or (ext == ".npy" and bool(_OLD_STEM.match(base)) and name in legacy_files))

    for folder, rows in ((out, False), (os.path.join(out, ROWS_DIR), True)):
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            temp = _TEMP.match(name)
            if os.path.isfile(path) and (ours(name, rows) or (temp and ours(temp.group("name"), rows))):
                found.append(path)
    return found


def _remove(paths: Sequence[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def claim(out: str, record: Dict[str, Any], overwrite: bool) -> None:
    """Makes ``out`` hold ``record``'s run: keeps a matching one, refuses or (``overwrite``) clears another.

    Called with ``out``'s lock held, on every process (process 0 decides and
    writes).  Temporary files of a killed run are removed.
    """
    refusal = None
    if io.is_primary():
        old = _read_json(os.path.join(out, REQUEST_NAME))
        previous = jacuap_files(out)
        temps = [p for p in previous if _TEMP.match(os.path.basename(p))]
        same = isinstance(old, dict) and _same_request(old, record)
        leftovers = [p for p in previous if p not in temps]
        if same:
            _remove(temps)
        elif leftovers and not overwrite:
            what = f"the outputs of {difference(old, record)}" if isinstance(old, dict) else "an earlier run's outputs"
            refusal = (f"--out {out} holds {what}; rerun that command to resume it, pass --overwrite to replace "
                       f"them (only that request's files), or choose another --out")
        else:
            _remove(previous)
            rows = os.path.join(out, ROWS_DIR)
            if os.path.isdir(rows) and not os.listdir(rows):
                os.rmdir(rows)
            io.write_json_atomic(os.path.join(out, REQUEST_NAME), record)
    if parallel.any_process(refusal is not None):
        raise AttackError(refusal or f"--out {out} holds the outputs of another request (see process 0)")


def load_row(out: str, name: str, expected: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The finished row ``name`` if it is whole and matches ``expected`` (its UAP too), else None."""
    row = _read_json(os.path.join(out, ROWS_DIR, name + ".json"))
    if not isinstance(row, dict) or any(row.get(k) != v for k, v in expected.items()):
        return None
    if row.get("file"):
        try:
            np.load(os.path.join(out, row["file"]), allow_pickle=False)
        except (OSError, ValueError):
            return None
    return row


def save_row(out: str, name: str, row: Dict[str, Any], v: Optional[np.ndarray] = None) -> None:
    """Saves a finished row (and its UAP first): both atomically, so a kill leaves the row whole or absent."""
    if v is not None:
        io.save_npy_atomic(os.path.join(out, row["file"]), v)
    os.makedirs(os.path.join(out, ROWS_DIR), exist_ok=True)
    io.write_json_atomic(os.path.join(out, ROWS_DIR, name + ".json"), finite_or_null(row))


def load_metrics(out: str) -> Optional[Dict[str, Any]]:
    value = _read_json(os.path.join(out, ROWS_DIR, METRICS_NAME))
    return value if isinstance(value, dict) else None


def save_metrics(out: str, values: Dict[str, Any]) -> Dict[str, Any]:
    values = finite_or_null(values)
    os.makedirs(os.path.join(out, ROWS_DIR), exist_ok=True)
    io.write_json_atomic(os.path.join(out, ROWS_DIR, METRICS_NAME), values)
    return values


def remove_results(out: str) -> None:
    """Removes ``results.json``: the folder is about to hold rows it does not describe."""
    if io.is_primary():
        _remove([os.path.join(out, RESULTS_NAME)])


def write_results(out: str, results: Dict[str, Any]) -> bool:
    """Writes ``results.json`` (last); False when the file already holds exactly this."""
    path = os.path.join(out, RESULTS_NAME)
    text = io.to_json(results)
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return False
    except OSError:
        pass
    io.write_text_atomic(path, text)
    return True

_NOTES = {
    "uer": "undefined: no evaluation input",
    "fooling_rate": "undefined: no evaluation input",
    "clean_accuracy": "undefined: no evaluation input",
    "universality_ratio": "undefined: the Jacobians vanish on the metric inputs",
    "shared_perturbation_strength": "undefined: fewer than 2 metric inputs (raise --num_eval/--num_metrics)",
    "jacobian_cosine": "undefined: fewer than 2 metric inputs (raise --num_eval/--num_metrics)",
    "gram_cosine": "undefined: fewer than 2 metric inputs (raise --num_eval/--num_metrics)",
}


def finite_or_null(obj: Any) -> Any:
    """``obj`` with every NaN/infinity as None; a dict key ``k`` so nulled gets ``k_note`` (why).

    >>> finite_or_null({"gram_cosine": float("nan"), "x": [1.0, float("inf")]})
    {'gram_cosine': None, 'gram_cosine_note': 'undefined: fewer than 2 metric inputs (raise --num_eval/--num_metrics)', 'x': [1.0, None]}
    """
    if isinstance(obj, dict):
        out: Dict[str, Any] = {}
        for key, value in obj.items():
            if isinstance(value, (float, np.floating)) and not math.isfinite(value):
                out[key] = None
                out[f"{key}_note"] = _NOTES.get(key, f"undefined: the value is {float(value)}")
            else:
                out[key] = finite_or_null(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
