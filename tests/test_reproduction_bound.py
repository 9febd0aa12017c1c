"""benchmarks/reproduction/bound.py (the bound claim) against float64 NumPy references, and its record step."""

import doctest
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jacuap
from benchmarks.reproduction import bound, bound_claim, bound_records, stats
from jacuap import attacks, metrics

SHAPE = (4, 4, 1)
D, K, N = 16, 3, 30


def _linear(sigmas, top):
    """``W`` (d x K) of the linear model ``f(x) = x W + b`` whose J = W^T has singular values ``sigmas``
    and top right singular vector ``top`` (unit, length d)."""
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(np.column_stack([top, rng.normal(size=(D, K - 1))]))[0]  # column 0 = +-top
    basis[:, 0] = top
    u = np.linalg.qr(rng.normal(size=(K, K)))[0]
    jac = u @ np.diag(sigmas) @ basis.T  # K x d
    return jac.T


def _apply(params, x):
    return x.reshape(x.shape[0], -1) @ params["w"] + params["b"]


def _linear_case(x_low=0.3, x_high=0.7):
    rng = np.random.default_rng(0)
    signs = np.where(rng.random(D) < 0.5, -1.0, 1.0)
    w = _linear([3.0, 1.0, 0.5], signs / np.sqrt(D))
    params = {"w": jnp.asarray(w, jnp.float32), "b": jnp.asarray([0.1, -0.2, 0.05], jnp.float32)}
    x = rng.uniform(x_low, x_high, (N,) + SHAPE).astype(np.float32)
    return w, params, x, signs


def _reference(w, b, x, v):
    """float64: per input ||J v||^2, ||f(clip(x + v)) - f(x)||^2, margins (a linear model: J = W^T)."""
    x64, v64 = x.reshape(len(x), -1).astype(np.float64), np.asarray(v, np.float64).ravel()
    f = lambda z: z @ w + b
    first = np.sum(np.square(np.tile(v64 @ w, (len(x), 1))), axis=1)
    observed = np.sum(np.square(f(np.clip(x64 + v64, 0, 1)) - f(x64)), axis=1)
    z = np.sort(f(x64), axis=1)
    return first, observed, z[:, -1] - z[:, -2]


def test_linear_linf_bound_is_exact_for_the_top_singular_sign_vector():
    # J's top right singular vector is s / sqrt(d) for a sign vector s: v = eps s is in the l_inf ball, has
    # ||v||_2 = eps sqrt(d) = r, and reaches ||J_X v||^2 = sigma_max(J_X)^2 r^2: tightness 1.
    w, params, x, signs = _linear_case()
    eps = 0.05
    other = (eps * np.where(np.arange(D) % 3 == 0, 1.0, -0.5)).reshape(SHAPE).astype(np.float32)
    out = bound.uap_bound(_apply, params, x, [(eps, (eps * signs).reshape(SHAPE).astype(np.float32)),
                                              (2 * eps, 2 * other)], "linf", reps=100)
    assert out["sigma_max"] == pytest.approx(np.sqrt(N) * 3.0, rel=1e-5)  # sigma_max(J_X) = sqrt(N) sigma_max(J)
    assert out["input_dim"] == D and out["num_inputs"] == N and out["holds"]
    top, rand = out["budgets"]
    assert top["bound"] == pytest.approx(N * 9.0 * eps**2 * D, rel=1e-5)
    assert top["tightness"]["estimate"] == pytest.approx(1.0, rel=1e-5)
    assert top["fill"] == pytest.approx(1.0, rel=1e-6) and top["alignment"] == pytest.approx(1.0, rel=1e-5)
    # No pixel clips (x in [0.3, 0.7], |v| <= 0.1) and the model is linear: observed == first order.
    for row, v, e in ((top, eps * signs, eps), (rand, 2 * other.ravel(), 2 * eps)):
        first, observed, margins = _reference(w, np.asarray(params["b"], np.float64), x, v)
        assert row["first_order"] == pytest.approx(first.sum(), rel=1e-5)
        assert row["observed"] == pytest.approx(observed.sum(), rel=1e-4)
        assert row["bound"] == pytest.approx(N * 9.0 * e**2 * D, rel=1e-5)
        assert row["tightness"]["estimate"] == pytest.approx(first.sum() / row["bound"], rel=1e-5)
        assert row["observed_over_first_order"]["estimate"] == pytest.approx(1.0, abs=1e-4) and row["in_band"]
        assert row["unclipped"] == pytest.approx(row["observed"], rel=1e-6)
        assert row["implied_fooled"] == bound.implied_fooling_count(margins, row["bound"])
    assert rand["tightness"]["estimate"] < 0.9 and out["first_order_breaks_at_eps"] is None
    json.dumps(out, allow_nan=False)  # JSON-able


def test_linear_l2_bound_is_exact_for_the_top_singular_vector_and_clipping_shrinks_the_observed():
    w, params, x, _ = _linear_case()
    top = np.linalg.svd(w.T)[2][0]
    out = bound.uap_bound(_apply, params, x, [(0.2, (0.2 * top).reshape(SHAPE).astype(np.float32))], "l2", reps=50)
    assert out["budgets"][0]["tightness"]["estimate"] == pytest.approx(1.0, rel=1e-5)
    assert out["budgets"][0]["bound"] == pytest.approx(N * 9.0 * 0.04, rel=1e-5)
    # Inputs near 1: v's positive pixels clip, so the UAP does less than its first-order effect.
    w, params, x, signs = _linear_case(0.95, 1.0)
    v = (0.3 * signs).reshape(SHAPE).astype(np.float32)
    out = bound.uap_bound(_apply, params, x, [(0.3, v)], "linf", reps=50)
    first, observed, _ = _reference(w, np.asarray(params["b"], np.float64), x, v)
    row = out["budgets"][0]
    assert row["observed"] == pytest.approx(observed.sum(), rel=1e-4) and observed.sum() < 0.8 * first.sum()
    assert row["in_band"] is False and out["first_order_breaks_at_eps"] == 0.3
    assert row["unclipped_over_first_order"]["estimate"] == pytest.approx(1.0, abs=1e-4)  # linear: clipping alone
    assert row["tightness"]["estimate"] == pytest.approx(1.0, rel=1e-5)  # the bound is on the unclipped effect


@pytest.fixture(scope="module")
def mlp(trained_digits):
    """The suite's trained digits MLP (conftest's ``trained_digits``) and SGD-UAPs at three budgets."""
    apply_fn, params = trained_digits["apply_fn"], trained_digits["params"]
    x = np.asarray(trained_digits["xe"][:200])
    assert metrics.accuracy(apply_fn, params, x, trained_digits["ye"][:200]) > 0.85
    xa, ya = trained_digits["xa"], trained_digits["ya"]
    uaps = [(e, np.asarray(attacks.sgd_uap(apply_fn, params, xa, ya, eps=e, key=jax.random.PRNGKey(1),
                                                 num_epochs=3).v))
            for e in (0.05, 0.1, 0.2)]
    return apply_fn, params, x, uaps


def _mlp_reference(params, x, v):
    """float64 NumPy: per-input J (N, K, d), ||J v||^2, ||f(clip(x + v)) - f(x)||^2, margins, clean and perturbed
    logits, ||f(x + v) - f(x)||^2."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    w0, b0, w1, b1 = p["dense0"]["kernel"], p["dense0"]["bias"], p["logits"]["kernel"], p["logits"]["bias"]
    flat = lambda z: (z.reshape(len(z), -1).astype(np.float64) - 0.5) / 0.5  # Normalize(0.5, 0.5)
    f = lambda z: np.maximum(flat(z) @ w0 + b0, 0) @ w1 + b1
    active = (flat(x) @ w0 + b0) > 0
    jac = np.einsum("dh,nh,hk->nkd", w0, active.astype(np.float64), w1) / 0.5
    v64 = np.asarray(v, np.float64).ravel()
    first = np.sum(np.square(jac @ v64), axis=1)
    clean, pert = f(x), f(np.clip(x.astype(np.float64) + v.astype(np.float64), 0, 1))
    z = np.sort(clean, axis=1)
    unclipped = np.sum(np.square(f(x.astype(np.float64) + v.astype(np.float64)) - clean), axis=1)
    return jac, first, np.sum(np.square(pert - clean), axis=1), z[:, -1] - z[:, -2], clean, pert, unclipped


def test_mlp_on_digits_matches_the_float64_reference(mlp):
    apply_fn, params, x, uaps = mlp
    n, reps = len(x), 200
    out = bound.uap_bound(apply_fn, params, x, uaps, "linf", reps=reps, seed=3)
    jac = _mlp_reference(params, x, uaps[0][1])[0]
    sigma = np.linalg.svd(jac.reshape(-1, jac.shape[-1]), compute_uv=False)[0]
    assert out["sigma_max"] == pytest.approx(sigma, rel=1e-4)
    assert out["holds"] and [b["eps"] for b in out["budgets"]] == [0.05, 0.1, 0.2]
    draws = np.random.default_rng(3).integers(0, n, (reps, n))  # the bootstrap's input draws, one block
    for row, (eps, v) in zip(out["budgets"], uaps):
        _, first, observed, margins, clean, pert, unclipped = _mlp_reference(params, x, v)
        b = sigma**2 * eps**2 * 64
        assert row["bound"] == pytest.approx(b, rel=2e-4)
        assert row["first_order"] == pytest.approx(first.sum(), rel=1e-4)
        assert row["observed"] == pytest.approx(observed.sum(), rel=1e-3)
        assert row["unclipped"] == pytest.approx(unclipped.sum(), rel=1e-3)
        assert row["first_order"] <= row["bound"]
        for key, num, den in (("tightness", first, np.full(n, b / n)), ("observed_over_first_order", observed, first),
                              ("unclipped_over_first_order", unclipped, first)):
            ratios = np.sort(num[draws].sum(1) / den[draws].sum(1))
            got = row[key]
            assert got["estimate"] == pytest.approx(num.sum() / den.sum(), rel=1e-3)
            assert got["low"] == pytest.approx(np.quantile(ratios, 0.025), rel=1e-3)
            assert got["high"] == pytest.approx(np.quantile(ratios, 0.975), rel=1e-3)
            assert got["low"] <= got["estimate"] <= got["high"] and got["reps"] == reps
        assert abs(row["implied_fooled"] - bound.implied_fooling_count(margins, b)) <= 1
        fooled = np.argmax(pert, 1) != np.argmax(clean, 1)
        assert row["fooling_rate"] == metrics.fooling_rate(apply_fn, params, x, v)
        assert abs(row["fooled"] - int(fooled.sum())) <= 1
        # The bound's fooling rate is at least the UAP's; so is the one the observed change allows (no approximation).
        assert row["implied_fooling_rate"] >= row["fooling_rate"]
        assert row["implied_fooling_rate_observed"] >= row["fooling_rate"]
        # Every flipped input moved its logits by at least m / sqrt(2).
        assert np.all(observed[fooled] >= np.square(margins[fooled]) / 2 - 1e-9)
        assert row["v_l2_sq"] <= eps**2 * 64 * (1 + 1e-5)
    breaks = next((r["eps"] for r in out["budgets"] if r["in_band"] is False), None)
    assert out["first_order_breaks_at_eps"] == breaks
    json.dumps(out, allow_nan=False)


def test_implied_fooling_count_is_the_largest_affordable_set():
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = rng.exponential(1.0, 7)
        budget = float(rng.uniform(0, 6))
        best = max(len(s) for r in range(8) for s in itertools.combinations(range(7), r)
                   if sum(m[i] ** 2 / 2 for i in s) <= budget)
        assert bound.implied_fooling_count(m, budget) == best
    # The margin argument: a flip needs ||D||^2 >= m^2 / 2 (random logits and changes; equality is reachable).
    z, delta = rng.normal(size=(5000, 4)), rng.normal(size=(5000, 4)) * rng.exponential(1.0, (5000, 1))
    flipped = np.argmax(z + delta, 1) != np.argmax(z, 1)
    assert flipped.any() and np.all(np.sum(delta[flipped] ** 2, 1) >= bound.margins_of(z)[flipped] ** 2 / 2)
    assert bound.implied_fooling_count([1.0, 1.0], 1.0) == 2 and bound.implied_fooling_count([3.0], 0.0) == 0


@pytest.mark.parametrize("call,name", [
    (lambda v: bound.uap_bound(_apply, _linear_case()[1], _linear_case()[2], [(0.1, v)], "l1"), "norm"),
    (lambda v: bound.uap_bound(_apply, _linear_case()[1], _linear_case()[2], [(0.05, v)]), "uaps"),  # outside
    (lambda v: bound.uap_bound(_apply, _linear_case()[1], _linear_case()[2], [(0.1, v[:2])]), "uaps"),
    (lambda v: bound.uap_bound(_apply, _linear_case()[1], _linear_case()[2], []), "uaps"),
    (lambda v: bound.uap_bound(_apply, _linear_case()[1], _linear_case()[2], [(0.1, v), (0.1, v)]), "uaps"),
    (lambda v: bound.uap_bound(_apply, _linear_case()[1], _linear_case()[2], [(-0.1, v)]), "eps"),
    (lambda v: bound.uap_bound(_apply, _linear_case()[1], _linear_case()[2], [(0.1, v)], reps=0), "reps"),
    (lambda v: bound.uap_bound(_apply, _linear_case()[1], _linear_case()[2], [(0.1, v)], level=1.5), "level"),
    (lambda v: bound.uap_bound(_apply, _linear_case()[1], _linear_case()[2] + 2, [(0.1, v)]), "x"),
    (lambda v: bound.per_input_effects(_apply, _linear_case()[1], _linear_case()[2], v), "vs"),
    (lambda v: bound.per_input_effects(_apply, _linear_case()[1], _linear_case()[2], v[None], 0), "batch_size"),
    (lambda v: bound.implied_fooling_count([-1.0], 1.0), "margins"),
    (lambda v: bound.implied_fooling_count([1.0], float("nan")), "budget"),
    (lambda v: bound.margins_of([1.0, 2.0]), "logits"),
    (lambda v: stats.ratio_of_sums_interval([1.0, 2.0], [1.0]), "denominator"),
    (lambda v: stats.median_interval([]), "values"),
    (lambda v: bound_records.workdir_of_record("/w", {"id": "d/mlp/jr_0_s0"}), "record"),
    (lambda v: bound_claim.analyse_bound({"test": {}}), "recs"),
])
def test_bad_arguments_raise_value_errors_naming_them(call, name):
    v = np.full(SHAPE, 0.1, np.float32)
    with pytest.raises(ValueError, match=name):
        call(v)


def test_doctests():
    for module in (bound, stats, bound_records):
        failed, attempted = doctest.testmod(module)
        assert attempted > 0 and failed == 0, module.__name__


# -- the sweep's bound step (benchmarks/reproduction/bound_records.py) on a real workdir ------------------------------

@pytest.fixture(scope="module")
def workroot(tmp_path_factory):
    """A 1-epoch 8-unit digits MLP where the sweep keeps it (``<root>/digits/mlp/e1/jr_0_s0``), and its record
    with two suite worst cases whose UAPs are saved in ``suite/`` (no attack: sign vectors)."""
    from jacuap import train
    from jacuap.configs import default
    from jacuap.evaluation import restore, store

    from benchmarks.reproduction import records

    root = tmp_path_factory.mktemp("work")
    workdir = root / "digits" / "mlp" / "e1" / "jr_0_s0"
    config = default.get_config()
    config.update(dataset="digits", model="mlp", jr_lambda=0.0, num_epochs=1, progress=False, eval_num_inputs=20)
    config.model_kwargs = {"hidden": (8,)}
    train.train_and_evaluate(config, str(workdir))
    _, ds, apply_fn, params = restore(str(workdir))
    num_eval, n = 40, 30
    x = np.asarray(ds.test_images[:num_eval])
    (workdir / "suite").mkdir()
    rng = np.random.default_rng(0)
    clean = metrics.predict(apply_fn, params, x)
    worst = []
    for eps, attack, seed in ((0.1, "sgd_uap", 1), (0.2, "sgd_uap_restarts", 0)):
        v = (eps * np.sign(rng.normal(size=ds.image_shape))).astype(np.float32)
        np.save(workdir / "suite" / (store.stem(attack, "linf", eps, seed) + ".npy"), v)
        changed = metrics.predict(apply_fn, params, np.clip(x + v, 0, 1)) != clean
        worst.append({"eps": eps, "attack": attack, "seed": seed, "uer": 0.5, "fooling_rate": float(changed.mean()),
                      "craft_uer": 0.5, "wrong": records.pack_bits(changed), "changed": records.pack_bits(changed)})
    record = {"id": "digits/mlp/jr_0_s0", "dataset": "digits", "arch": "mlp", "method": "jr", "strength": 0.0,
              "seed": 0, "config": {"num_epochs": 1}, "params_fingerprint": store.model_fingerprint(params),
              "train": {"num_epochs": 1},
              "test": {"num_eval": num_eval, "worst_case": worst, "clean_correct": records.pack_bits(clean == clean),
                       "metrics": {"num_inputs": n,
                                   "stacked_spectral_norm": metrics.stacked_sigma_max(apply_fn, params, x[:n])}}}
    return str(root), record


def test_the_bound_step_adds_test_bound_once_and_leaves_what_it_cannot_measure(workroot, tmp_path):
    import copy

    from benchmarks.reproduction import records

    br = bound_records
    root, record = workroot
    results = str(tmp_path / "results")
    mine = copy.deepcopy(record)
    missing = copy.deepcopy(record)
    missing.update(id="digits/mlp/jr_0_s1", seed=1)  # trained elsewhere: no workdir here
    other = copy.deepcopy(record)
    other["params_fingerprint"] = "sha256:0000000000000000"  # its workdir holds another model
    for r in (mine, missing):
        records.save_record(results, r)
    assert [br.bound_status(root, r) for r in (mine, missing)] == [br.PENDING, br.MISSING]
    logged = []
    assert br.add_bounds(results, root, [other], reps=50, log=logged.append) == []
    assert "holds another model" in logged[0] and "bound" not in other["test"]
    before_missing = open(records.record_path(results, missing["id"]), "rb").read()
    assert br.add_bounds(results, root, [mine, missing], reps=50, log=logged.append) == [mine["id"]]
    saved = records.load_record(results, mine["id"])
    b = saved["test"]["bound"]
    assert br.bound_status(root, saved) == br.MEASURED and b["num_inputs"] == 30 and b["input_dim"] == 64
    assert [(r["eps"], r["attack"], r["seed"], r["file"]) for r in b["budgets"]] == [
        (0.1, "sgd_uap", 1, "sgd_uap_linf_eps0.1_seed1.npy"), (0.2, "sgd_uap_restarts", 0,
                                                              "sgd_uap_restarts_linf_eps0.2_seed0.npy")]
    assert b["sigma_max"] == pytest.approx(b["sigma_max_record"], rel=1e-5) and b["holds"]
    for r in b["budgets"]:
        assert r["fooling_rate"] == pytest.approx(r["fooling_rate_record"], abs=1 / 30 + 1e-12)
        assert r["first_order"] <= r["bound"] and r["tightness"]["reps"] == 50
    # Idempotent: a rerun measures nothing and rewrites nothing; the record without a workdir is untouched.
    before = open(records.record_path(results, mine["id"]), "rb").read()
    assert br.add_bounds(results, root, [saved, records.load_record(results, missing["id"])], reps=50) == []
    assert open(records.record_path(results, mine["id"]), "rb").read() == before
    assert open(records.record_path(results, missing["id"]), "rb").read() == before_missing


def test_plan_lists_records_whose_bound_cannot_be_measured(workroot):
    br = bound_records
    root, record = workroot
    missing = dict(record, id="digits/mlp/jr_0_s1", seed=1)
    lines = br.plan_lines(root, [record, missing])
    assert lines == ["  bound (test.bound): 0 measured, 1 to measure, 1 not measured (workdir missing)",
                     "    digits/mlp/jr_0_s0: bound: to measure",
                     "    digits/mlp/jr_0_s1: bound: not measured (workdir missing)"]
    measured = dict(record, test={**record["test"], "bound": {"budgets": []}})
    assert br.plan_lines(root, [measured])[1:] == []


def test_a_workdir_holding_another_model_is_named_and_skipped(tmp_path):
    """The same config retrained on another CPU leaves a workdir whose suite run names another fingerprint:
    the record's bound is "not measured (workdir holds another model)", never measured on the wrong model."""
    record = {"id": "d/mlp/jr_0_s0", "dataset": "d", "arch": "mlp", "method": "jr", "strength": 0.0, "seed": 0,
              "params_fingerprint": "sha256:aaaa", "config": {"num_epochs": 4},
              "test": {"worst_case": [{"eps": 0.1, "attack": "sgd_uap", "seed": 0}]}}
    workdir = tmp_path / "d" / "mlp" / "e4" / "jr_0_s0"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "suite").mkdir()
    (workdir / "suite" / "sgd_uap_linf_eps0.1_seed0.npy").write_bytes(b"")
    assert bound_records.bound_status(str(tmp_path), record) == bound_records.PENDING  # names no model
    for fingerprint, status in (("sha256:aaaa", bound_records.PENDING), ("sha256:bbbb", bound_records.OTHER)):
        (workdir / "suite" / "request.json").write_text(json.dumps({"model_fingerprint": fingerprint}))
        assert bound_records.bound_status(str(tmp_path), record) == status
    assert bound_records.add_bounds(str(tmp_path / "out"), str(tmp_path), [record]) == []
    assert "1 not measured (workdir holds another model)" in bound_records.plan_lines(str(tmp_path), [record])[0]
