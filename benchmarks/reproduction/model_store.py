"""A committed store of the sweep's finished models: ``<out>/<dataset>/weights/<arch>/<name>.npz``.

Why it exists: the sweep trains in a git-ignored workroot (``runs/reproduce``)
and every work session starts from a fresh clone, so the workdirs vanish
between sessions while the records (``<out>/<dataset>/models/``) stay.  The
steps that need a model after its record is written (the transfer matrix,
the bound step, the fooling-rate backfill) then find nothing, and training
the model again does not bring it back: XLA:CPU compiles for the host's
instruction set, so the same config on another CPU gives other parameters
(another ``params_fingerprint``).  So each finished model's parameters are
committed beside its record (a Fashion-MNIST CNN's are about 1.7 MB of
float32), and a missing workdir is recreated from them when a step needs it.

One entry, written by :func:`store` with ``numpy.savez_compressed`` (plain
arrays only: it loads with ``allow_pickle=False``)::

    format              "jacuap.reproduction.weights/1"
    id                  the record's id
    params_fingerprint  the record's (jacuap.evaluation.store.model_fingerprint), checked on store and restore
    step                the checkpoint step
    config.json         the workdir's config.json, its text
    meta.json           the checkpoint's meta (JSON: model spec, steps per epoch, history, the config's
                        fingerprint): what rebuilds the model and its train state
    params/<path>       one array per parameter leaf, as trained (float32), keyed by
                        jax.tree_util.keystr of its path ("params/['dense0']['kernel']")
    state.uap, state.jr_vec   the train state's other small leaves, where the state has them
    suite/<name>        the bytes of the suite run's results.json, request.json and every .npy file
                        results.json names (its rows', worst cases' and targeted matrices' UAPs)

No optimizer state is stored.  A workdir restored by :func:`restore_workdir`
holds ``config.json``, one checkpoint written by the train code's own writer
(:func:`jacuap.train.checkpoints.save`; its optimizer state is a fresh one,
because the writer's tree has one) and ``suite/``: what
:func:`jacuap.evaluation.restore` and the sweep's steps on finished models
read.  It is for evaluation only: training it further would not continue the
original run, and its ``validation/``, ``sgd_grid/``, logs and summary are
not kept.  The sweep (``benchmarks/reproduce.py``) runs :func:`store_missing`
after each model's record and bound are written, and :func:`restore_missing`
before the steps that need a finished model's workdir.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
import zlib
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np

__all__ = ["FORMAT", "weights_path", "has_entry", "holds", "has_checkpoint", "finished_here", "store",
           "restore_workdir", "load_entry", "store_missing", "restore_missing"]

FORMAT = "jacuap.reproduction.weights/1"
_STATE_LEAVES = ("uap", "jr_vec")  # the train state's small leaves besides params, step and opt_state


def weights_path(out: str, rid: str) -> str:
    """Where the entry of record ``rid`` lives under ``out``.

    >>> weights_path("results", "fashion_mnist/cnn/jr_0.1_s0")
    'results/fashion_mnist/weights/cnn/jr_0.1_s0.npz'
    """
    dataset, arch, name = rid.split("/")
    return os.path.join(out, dataset, "weights", arch, name + ".npz")


def has_entry(out: str, rid: str) -> bool:
    """Whether the store under ``out`` has an entry for record ``rid``."""
    return os.path.isfile(weights_path(out, rid))


def holds(out: str, record: Dict[str, Any]) -> bool:
    """Whether the store under ``out`` has an entry for ``record`` with the record's params fingerprint (an entry
    left by a record since replaced, e.g. by a re-run, does not count)."""
    path = weights_path(out, record["id"])
    if not os.path.isfile(path):
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            return str(z["params_fingerprint"]) == record.get("params_fingerprint")
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error):
        return False


def has_checkpoint(workdir: str) -> bool:
    """Whether ``workdir`` holds a complete checkpoint (an all-digit step folder; no JAX imported)."""
    folder = os.path.join(workdir, "checkpoints")
    return os.path.isdir(folder) and any(n.isdigit() and os.path.isdir(os.path.join(folder, n))
                                         for n in os.listdir(folder))


def finished_here(workdir: str) -> bool:
    """Whether ``workdir`` holds a checkpoint and a finished suite run: what :func:`store` reads."""
    return has_checkpoint(workdir) and os.path.isfile(os.path.join(workdir, "suite", "results.json"))


def _template(config: Dict[str, Any], meta: Dict[str, Any]) -> Any:
    """The train state a checkpoint of ``config`` and ``meta`` restores into (the train code's own template)."""
    from jacuap.train import checkpoints

    return checkpoints.state_template(config, meta)[1]


def _npy_names(value: Any) -> set:
    """Every ``"file": "<name>.npy"`` in a suite's results.json (rows, worst cases, targeted matrices)."""
    found = set()
    if isinstance(value, dict):
        name = value.get("file")
        if isinstance(name, str) and name.endswith(".npy"):
            found.add(name)
        for v in value.values():
            found |= _npy_names(v)
    elif isinstance(value, list):
        for v in value:
            found |= _npy_names(v)
    return found


def _suite_files(workdir: str) -> Dict[str, bytes]:
    """The suite run's files an entry keeps, by name: results.json, request.json and the .npy files it names."""
    suite = os.path.join(workdir, "suite")
    try:
        with open(os.path.join(suite, "results.json"), "rb") as f:
            files = {"results.json": f.read()}
        names = sorted(_npy_names(json.loads(files["results.json"])))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{suite} holds no finished suite run (results.json: {type(exc).__name__})") from None
    bad = [n for n in names if os.path.basename(n) != n or n.startswith(".")]
    if bad:
        raise ValueError(f"{suite}/results.json names files outside its folder: {', '.join(bad[:3])}")
    optional = ["request.json"] if os.path.isfile(os.path.join(suite, "request.json")) else []
    for name in optional + names:
        try:
            with open(os.path.join(suite, name), "rb") as f:
                files[name] = f.read()
        except OSError as exc:
            raise ValueError(f"{suite}: {name}, which results.json names, cannot be read ({exc.strerror})") from None
    return files


def store(out: str, record: Dict[str, Any], workdir: str) -> str:
    """Writes the entry of ``record``'s model from ``workdir`` (atomically: a temp file, then a rename); its path.

    Raises:
      ValueError: ``workdir``'s parameters are not the record's (their fingerprint differs: another model,
        e.g. the same config retrained on another CPU), or its checkpoint or suite run cannot be read
        (jacuap's CheckpointError is a ValueError).
    """
    from jax import tree_util

    from jacuap import io
    from jacuap.evaluation import store as run_store
    from jacuap.train import checkpoints

    rid, want = record["id"], record.get("params_fingerprint")
    if not want:
        raise ValueError(f"{rid}: the record has no params_fingerprint; its model cannot be matched to a workdir")
    io.read_workdir_config(workdir)  # a CheckpointError naming a missing or unreadable config.json
    with open(os.path.join(workdir, "config.json")) as f:
        config_text = f.read()
    _, meta = checkpoints.restore_meta(workdir)
    step, state, meta = checkpoints.restore(workdir, _template(json.loads(config_text), meta))
    found = run_store.model_fingerprint(state.params)
    if found != want:
        raise ValueError(f"{rid}: {workdir} holds another model (params fingerprint {found}, the record's {want}); "
                         f"not stored")
    arrays = {"format": np.array(FORMAT), "id": np.array(rid), "params_fingerprint": np.array(want),
              "step": np.array(int(step), np.int64), "config.json": np.array(config_text),
              "meta.json": np.array(json.dumps(meta, sort_keys=True))}
    for path, leaf in tree_util.tree_leaves_with_path(state.params):
        arrays["params/" + tree_util.keystr(path)] = np.asarray(leaf)
    for name in _STATE_LEAVES:
        if getattr(state, name, None) is not None:
            arrays[f"state.{name}"] = np.asarray(getattr(state, name))
    for name, data in _suite_files(workdir).items():
        arrays[f"suite/{name}"] = np.frombuffer(data, np.uint8)
    path = weights_path(out, rid)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    io.atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
    return path


def load_entry(path: str) -> Dict[str, np.ndarray]:
    """Every array of the entry at ``path``, read whole (``allow_pickle=False``); ValueError if it is corrupt."""
    try:
        with np.load(path, allow_pickle=False) as z:
            entry = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"{path} is not a readable model store entry ({type(exc).__name__}: {exc})") from None
    if str(entry.get("format", "")) != FORMAT:
        raise ValueError(f"{path} is not a model store entry of format {FORMAT}")
    return entry


def _entry_state(path: str, entry: Dict[str, np.ndarray]) -> Tuple[int, Any, Dict[str, Any], str]:
    """``(step, train state, meta, config text)`` of an entry: its arrays in the train state's tree."""
    import jax.numpy as jnp
    from jax import tree_util

    config_text, meta = str(entry["config.json"]), json.loads(str(entry["meta.json"]))
    template = _template(json.loads(config_text), meta)
    leaves = {"params/" + tree_util.keystr(p): leaf for p, leaf in tree_util.tree_leaves_with_path(template.params)}
    stored = {k for k in entry if k.startswith("params/")}
    if stored != set(leaves):
        raise ValueError(f"{path}: its parameters are not the tree its config builds (missing "
                         f"{sorted(set(leaves) - stored)[:3]}, extra {sorted(stored - set(leaves))[:3]})")
    for key, leaf in leaves.items():
        a = entry[key]
        if a.shape != tuple(leaf.shape) or a.dtype != leaf.dtype:
            raise ValueError(f"{path}: {key} is {a.dtype}{list(a.shape)}, the model's {leaf.dtype}{list(leaf.shape)}")
    params = tree_util.tree_map_with_path(lambda p, _: jnp.asarray(entry["params/" + tree_util.keystr(p)]),
                                          template.params)
    extra = {n: jnp.asarray(entry[f"state.{n}"]) for n in _STATE_LEAVES
             if getattr(template, n, None) is not None and f"state.{n}" in entry}
    step = int(entry["step"])
    state = template.replace(step=jnp.asarray(step, jnp.int32), params=params, **extra)
    return step, state, meta, config_text


def restore_workdir(out: str, record: Dict[str, Any], workdir: str) -> bool:
    """Recreates ``workdir`` (config.json, a checkpoint, suite/) from ``record``'s entry; False if there is none.

    Built in a temporary folder beside ``workdir``, then moved into place,
    then checked: the restored checkpoint's parameters must have the record's
    fingerprint.  The workdir is for evaluation (see the module docstring).

    Raises:
      ValueError: the entry is corrupt, is another model's (its id or fingerprint is not the record's), or
        the restored parameters do not have the record's fingerprint (nothing is left in place then); or
        ``workdir`` holds a checkpoint already (it is never overwritten).
    """
    from jacuap.evaluation import store as run_store
    from jacuap.train import checkpoints

    path = weights_path(out, record["id"])
    if not os.path.isfile(path):
        return False
    if has_checkpoint(workdir):
        raise ValueError(f"{workdir} holds a checkpoint already; the store restores only a missing workdir")
    entry = load_entry(path)
    want = record.get("params_fingerprint")
    if str(entry["id"]) != record["id"] or str(entry["params_fingerprint"]) != want:
        raise ValueError(f"{path} holds another model ({entry['id']}, params fingerprint "
                         f"{entry['params_fingerprint']}; the record {record['id']}'s is {want})")
    suite = {k[len("suite/"):]: v for k, v in entry.items() if k.startswith("suite/")}
    if "results.json" not in suite or any(os.path.basename(n) != n or n.startswith(".") for n in suite):
        raise ValueError(f"{path}: its suite files are not a suite run's ({', '.join(sorted(suite)[:4])})")
    step, state, meta, config_text = _entry_state(path, entry)
    parent = os.path.dirname(os.path.abspath(workdir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(workdir)}.restoring-")
    created, placed = not os.path.exists(workdir), []
    try:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            f.write(config_text)
        with checkpoints.manager(tmp, max_to_keep=1) as mngr:
            checkpoints.save(mngr, step, state, meta)
        os.makedirs(os.path.join(tmp, "suite"))
        for name, data in suite.items():
            with open(os.path.join(tmp, "suite", name), "wb") as f:
                f.write(data.tobytes())
        os.makedirs(workdir, exist_ok=True)
        for name in os.listdir(tmp):  # a workdir left without a checkpoint: what the entry holds replaces its own
            dst = os.path.join(workdir, name)
            if os.path.isdir(dst):
                shutil.rmtree(dst)
            elif os.path.exists(dst):
                os.unlink(dst)
            os.rename(os.path.join(tmp, name), dst)
            placed.append(dst)
        found = run_store.model_fingerprint(checkpoints.restore_model(workdir).params)
        if found != want:
            raise ValueError(f"{workdir}: the restored parameters have fingerprint {found}, not the record's {want}")
    except BaseException:
        for dst in placed:
            if os.path.isdir(dst):
                shutil.rmtree(dst, ignore_errors=True)
            else:
                os.unlink(dst)
        if created and os.path.isdir(workdir) and not os.listdir(workdir):
            os.rmdir(workdir)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def store_missing(out: str, workroot: str, found: Sequence[Dict[str, Any]],
                  log: Callable[[str], None] = print) -> List[str]:
    """Stores each model of ``found`` whose workdir (under ``workroot``) is here and whose entry is not yet
    written; returns their ids.  An entry of another model (a record since replaced) is replaced; a workdir
    holding another model than its record's is logged and skipped."""
    from benchmarks.reproduction import bound_records

    done = []
    for record in found:
        workdir = bound_records.workdir_of_record(workroot, record)
        if holds(out, record) or not finished_here(workdir):
            continue
        try:
            path = store(out, record, workdir)
        except ValueError as exc:
            log(f"  {record['id']}: weights not stored ({exc})")
            continue
        log(f"  {record['id']}: weights stored ({os.path.getsize(path) / 2**20:.2f} MiB)")
        done.append(record["id"])
    return done


def restore_missing(out: str, workroot: str, found: Sequence[Dict[str, Any]],
                    log: Callable[[str], None] = print) -> List[str]:
    """Recreates, from the store, the workdir of each record of ``found`` that has no checkpoint under
    ``workroot``; returns their ids.  A workdir with a checkpoint is left alone (the steps check whose model
    it holds); an entry that cannot be restored (corrupt, another model's) is logged and skipped."""
    from benchmarks.reproduction import bound_records

    done = []
    for record in found:
        workdir = bound_records.workdir_of_record(workroot, record)
        if has_checkpoint(workdir) or not has_entry(out, record["id"]):
            continue
        try:
            restore_workdir(out, record, workdir)
        except ValueError as exc:
            log(f"  {record['id']}: workdir not restored from the store ({exc})")
            continue
        log(f"  {record['id']}: workdir restored from the store")
        done.append(record["id"])
    return done
