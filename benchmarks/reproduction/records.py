"""One model of the sweep as a JSON record: ``results/<dataset>/models/<arch>/<method>_<strength>_s<seed>.json``.

A record is written once, atomically, when everything about its model is
measured; a rerun finds it and does no finished work.  It holds the trained
parameters' SHA-256 (``params_fingerprint``), so a record can be matched to a
checkpoint, and per-input outcomes on the test evaluation set as packed bits
(:func:`pack_bits`), so that intervals can resample test inputs later without
the model.

Schema ``jacuap.reproduction.model/1`` (every number a float or int, ``None`` when undefined)::

    id            "fashion_mnist/cnn/jr_0.1_s0"
    dataset, arch "fashion_mnist", "cnn"
    method        "jr" (strength = jr_lambda; "jr" at 0 is the undefended model),
                  "stacked_spectral" (jr_lambda), "uat", "cw_uat", "sat", "pgd", "trades"
                  (strength = adv_eps for the adversarial ones, trades_beta for trades)
    strength      float
    seed          int
    config        the train.py overrides the model was trained with ({field: value})
    params_fingerprint  jacuap.evaluation.store.model_fingerprint of the trained parameters ("sha256:<16 hex>")
    train         {"test_accuracy", "validation_accuracy", "num_epochs", "steps", "seconds"}
    validation    {"eps": 0.1, "accuracy", "sgd_uap_uer", "sgd_uap_fooling_rate", "num_inputs"}
                  (SGD-UAP crafted on training inputs, evaluated on the held-out validation split:
                  what strengths are chosen by; the test split is never used for a choice)
    test          {
      "num_eval": N,                       the first N test inputs
      "clean_correct": bits, length N (prediction == label, no perturbation)
      "worst_case": [{"eps", "attack", "seed", "uer", "fooling_rate", "craft_uer",
                      "wrong": bits (prediction != label under the UAP),
                      "changed": bits (prediction under the UAP != clean prediction)}],   one per suite budget:
                    the suite's row with the highest crafting-split UER
      "worst_case_by_fooling_rate": the same, the row with the highest crafting-split fooling rate (with its
                    "craft_fooling_rate"; absent from records made before it was recorded)
      "sgd_uap":    [{"eps", "uer", "fooling_rate", "wrong": bits, "changed": bits}],     the finer grid
      "targeted":   [{"eps", "success": K x K (None on the diagonal), "source_counts": [K]}],
      "metrics":    jacuap.metrics.jacobian_metrics's dict (with the *_by_class K x K tables)
      "bound":      optional, added later by the bound step (bound_records.py) where the model's workdir is:
                    benchmarks.reproduction.bound.uap_bound's dict on the metric inputs, per worst-case budget
    }
    seconds       {"train", "evaluate"}
    machine       {"platform", "cpu", "backend", "devices"}   (cpu: the host's model name; absent in old
                  records.  XLA:CPU compiles for the host's instruction set, so retraining on another CPU
                  gives another fingerprint)

Bits are ``base64(numpy.packbits(bool_array))``; :func:`unpack_bits` needs the length.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any, Dict, Optional

import numpy as np

SCHEMA = "jacuap.reproduction.model/1"


def pack_bits(values: Any) -> str:
    """A boolean vector as base64 text (8 values a byte).

    >>> pack_bits([True, False, True])
    'oA=='
    >>> unpack_bits('oA==', 3).tolist()
    [True, False, True]
    """
    a = np.asarray(values)
    if a.ndim != 1:
        raise ValueError(f"values must be a vector, got shape {a.shape}")
    return base64.b64encode(np.packbits(a.astype(bool)).tobytes()).decode("ascii")


def unpack_bits(text: str, length: int) -> np.ndarray:
    """The ``bool[length]`` vector :func:`pack_bits` wrote."""
    raw = np.frombuffer(base64.b64decode(text.encode("ascii")), np.uint8)
    if raw.size != (length + 7) // 8:
        raise ValueError(f"packed bits hold {raw.size * 8} values, not {length}")
    return np.unpackbits(raw)[:length].astype(bool)


def strength_tag(strength: float) -> str:
    """``0.1 -> '0.1'``, ``0.0 -> '0'``: the strength as it appears in ids and file names."""
    return f"{float(strength):g}"


def model_id(dataset: str, arch: str, method: str, strength: float, seed: int) -> str:
    """``'fashion_mnist/cnn/jr_0.1_s0'``."""
    return f"{dataset}/{arch}/{method}_{strength_tag(strength)}_s{int(seed)}"


def record_path(results_dir: str, rid: str) -> str:
    """Where the record with id ``rid`` lives under ``results_dir``."""
    dataset, arch, name = rid.split("/")
    return os.path.join(results_dir, dataset, "models", arch, name + ".json")


def load_record(results_dir: str, rid: str) -> Optional[Dict[str, Any]]:
    """The finished record ``rid``, or None (absent, or another schema)."""
    path = record_path(results_dir, rid)
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("schema") == SCHEMA else None


def save_record(results_dir: str, record: Dict[str, Any]) -> str:
    """Writes ``record`` atomically (temp file, then rename); returns its path."""
    path = record_path(results_dir, record["id"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"schema": SCHEMA, **record}, f, indent=1, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)
    return path
