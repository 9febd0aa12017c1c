"""Random restarts for universal attacks: run an attack from several starts, keep the best.

:func:`best_of_restarts` wraps any universal attack that takes an ``init``
(:func:`~jacuap.attacks.sgd_uap.sgd_uap`,
:func:`~jacuap.attacks.sga.sga_uap`); :func:`sgd_uap_restarts` is SGD-UAP
with restarts.  Each restart calls the attack itself, whose compiled epoch
is keyed on the model function, the norm and the batch sizes, not on the
start or the key: every restart after the first reuses the same programs.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jacuap.attacks.balls import check_norm, random_in_ball
from jacuap.attacks.result import UAPResult
from jacuap.attacks.registry import AttackSpec, Crafting, epochs_progress, register
from jacuap.attacks.sgd_uap import sgd_uap
from jacuap.checks import check_budget, check_key, check_model_inputs, check_positive_int
from jacuap.jacobian import ApplyFn
from jacuap.metrics.rates import fooling_rate, predict, universal_evasion_rate

__all__ = ["restart_keys", "restart_score", "best_of_restarts", "sgd_uap_restarts"]


def restart_keys(key: jax.Array, restarts: int) -> jax.Array:
    """The ``(restarts, 2, 2)`` keys ``[init_key, attack_key]`` of each restart (``split(split(key, R)[r])``).

    >>> restart_keys(jax.random.PRNGKey(0), 3).shape
    (3, 2, 2)
    """
    return jax.vmap(jax.random.split)(jax.random.split(key, restarts))


def restart_score(
    apply_fn: ApplyFn, params: Any, x: jax.Array, y: Optional[jax.Array], v: jax.Array,
    targeted: Optional[int] = None,
) -> float:
    """How good a UAP is on the crafting set, the quantity restarts are ranked by.

    Untargeted: the universal evasion rate
    :func:`~jacuap.metrics.universal_evasion_rate` (share with
    ``argmax f(clip(x + v, 0, 1)) != y``).  Targeted (``targeted=t``): the
    share classified as ``t``.  Without labels (e.g. layer maximisation): the
    fooling rate (share whose prediction ``v`` changes).

    >>> W = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> x, y = jnp.array([[0.9, 0.1], [0.2, 0.7]]), jnp.array([0, 1])
    >>> restart_score(lambda W, x: x @ W, W, x, y, jnp.array([0.0, 0.85])), restart_score(lambda W, x: x @ W, W, x, y, jnp.zeros(2), 1)
    (0.5, 0.5)
    """
    if targeted is not None:
        z = jnp.clip(jnp.asarray(x) + jnp.asarray(v, jnp.asarray(x).dtype), 0.0, 1.0)
        return float(np.mean(predict(apply_fn, params, z) == int(targeted)))
    if y is None:
        return fooling_rate(apply_fn, params, x, v)
    return universal_evasion_rate(apply_fn, params, x, y, v)


def best_of_restarts(
    attack_fn: Callable[..., UAPResult],
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    y: Optional[jax.Array] = None,
    *,
    eps: float,
    norm: str = "linf",
    key: Optional[jax.Array] = None,
    restarts: int = 4,
    zero_start: bool = True,
    progress: Optional[Callable[[int, float], None]] = None,
    **attack_kwargs: Any,
) -> UAPResult:
    """The best of ``restarts`` runs of a universal attack, each from its own start.

    Restart ``r`` (``0 <= r < R``) draws ``(k_init, k_attack) =
    restart_keys(key, R)[r]``, starts at

        v0_r = random_in_ball(k_init)  uniform in [-eps, eps]^S     (l_inf)
               random direction times eps * U[0, 1)                 (l2)

    (``v0_0 = 0`` when ``zero_start``, the attack's own start, so that the
    result is never worse on the crafting set than one plain run with key
    ``k_attack`` of restart 0), and runs ``attack_fn(apply_fn, params, x, y,
    eps=eps, norm=norm, key=k_attack, init=v0_r, **attack_kwargs)``.  The
    kept UAP maximises :func:`restart_score` on the crafting set ``(x, y)``
    (the UER; the target's share when ``attack_kwargs`` has ``targeted``),
    the first one on ties:

        v = v_{r*},   r* = argmax_r score(v_r)

    Args:
      attack_fn: a universal attack taking ``init`` (``sgd_uap``, ``sga_uap``).
      apply_fn, params, x, y, eps, norm: as for the attack.
      key: PRNG key (required).
      restarts: number of runs ``R >= 1``.
      zero_start: whether restart 0 starts at ``v = 0`` (else at random too).
      progress: ``callable(restart, score)`` called after each run (for the
        attack's own per-epoch ``progress``, pass it in ``attack_kwargs``
        under the name ``epoch_progress``).
      **attack_kwargs: passed on to every run (e.g. ``num_epochs``,
        ``batch_size``, ``targeted``); not ``init``.

    Returns:
      ``UAPResult(v, history)``: the best run's ``v`` (within the budget, as
      every run's is) and ``history`` the ``(R,)`` crafting-set scores of the
      runs, in restart order (so ``score(v) == history.max()``).

    >>> import jax, jax.numpy as jnp
    >>> from jacuap.attacks.sgd_uap import sgd_uap
    >>> apply_fn = lambda w, x: x.reshape(len(x), -1) @ w
    >>> w = jnp.array([[1.0, -1.0], [-1.0, 1.0]])
    >>> x = jnp.array([[0.2, 0.6], [0.7, 0.1], [0.4, 0.5], [0.9, 0.3]])
    >>> y = jnp.array([1, 0, 1, 0])
    >>> v, history = best_of_restarts(sgd_uap, apply_fn, w, x, y, eps=0.3, key=jax.random.PRNGKey(0),
    ...                               restarts=3, num_epochs=2, batch_size=2)
    >>> history.shape, float(history.max()) == restart_score(apply_fn, w, x, y, v)
    ((3,), True)
    """
    if not callable(attack_fn):
        raise TypeError(f"attack_fn must be a universal attack function, got {type(attack_fn).__name__}")
    if "init" in attack_kwargs:
        raise ValueError("best_of_restarts draws each run's init itself; do not pass init")
    check_norm(norm)
    check_key(key, why="by best_of_restarts (the random starts)")
    check_budget(eps, norm)
    check_positive_int(restarts, "restarts")
    check_model_inputs(apply_fn, params, x)
    x = jnp.asarray(x)
    targeted = attack_kwargs.get("targeted")
    if "epoch_progress" in attack_kwargs:
        attack_kwargs["progress"] = attack_kwargs.pop("epoch_progress")
    best, scores = None, []
    for r, (init_key, attack_key) in enumerate(restart_keys(key, int(restarts))):
        init = None if (zero_start and r == 0) else random_in_ball(init_key, (1,) + x.shape[1:], norm, eps, x.dtype)[0]
        result = attack_fn(apply_fn, params, x, y, eps=eps, norm=norm, key=attack_key, init=init, **attack_kwargs)
        scores.append(restart_score(apply_fn, params, x, y, result.v, targeted))
        if best is None or scores[-1] > scores[best[0]]:
            best = (r, result.v)
        if progress is not None:
            progress(r, scores[-1])
    return UAPResult(best[1], np.asarray(scores))


def sgd_uap_restarts(
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    y: Optional[jax.Array] = None,
    *,
    eps: float,
    norm: str = "linf",
    key: Optional[jax.Array] = None,
    restarts: int = 4,
    zero_start: bool = True,
    progress: Optional[Callable[[int, float], None]] = None,
    **sgd_uap_kwargs: Any,
) -> UAPResult:
    """SGD-UAP with random restarts: :func:`best_of_restarts` of :func:`~jacuap.attacks.sgd_uap.sgd_uap`.

    Each run is SGD-UAP with its defaults (``num_epochs=5``,
    ``batch_size=128``, the step of
    :func:`~jacuap.attacks.sgd_uap.default_sgd_step_size` decayed by 0.7 per
    epoch, ``beta=12``) unless ``sgd_uap_kwargs`` says otherwise, from a
    random start ``v0_r`` in the ball (``v0_0 = 0`` when ``zero_start``);
    per minibatch ``v <- P_eps(v + alpha_e * sign(grad L))`` (l_inf) or
    ``... * grad L / ||grad L||_2`` (l2).  The run with the largest UER on
    the crafting set is kept; ``history`` holds the ``(restarts,)`` UERs.

    ``restarts=4`` by default: random starts matter mostly at small budgets
    and on small crafting sets, where a run can settle on a poor vertex; four
    runs cost four attacks, and the first (from 0) is the plain attack.

    >>> import jax, jax.numpy as jnp
    >>> apply_fn = lambda w, x: x.reshape(len(x), -1) @ w
    >>> w = jnp.array([[1.0, -1.0], [-1.0, 1.0]])
    >>> x = jnp.array([[0.2, 0.6], [0.7, 0.1], [0.4, 0.5], [0.9, 0.3]])
    >>> y = jnp.array([1, 0, 1, 0])
    >>> v, uers = sgd_uap_restarts(apply_fn, w, x, y, eps=0.1, key=jax.random.PRNGKey(0), restarts=2, batch_size=2)
    >>> print(v, uers)
    [ 0.1 -0.1] [0.25 0.25]
    """
    return best_of_restarts(sgd_uap, apply_fn, params, x, y, eps=eps, norm=norm, key=key, restarts=restarts,
                            zero_start=zero_start, progress=progress, **sgd_uap_kwargs)


def _craft(c: Crafting) -> UAPResult:
    restarts = int(c.settings["restarts"])
    current = [f"restart 1/{restarts} "]  # the restart in progress, shown before each epoch's status

    def on_restart(r, uer):
        current[0] = f"restart {min(r + 2, restarts)}/{restarts} "
        c.say(f"restart {r + 1}/{restarts} crafting UER {uer:.3f}")

    return sgd_uap_restarts(c.apply_fn, c.params, c.x, c.y, eps=c.eps, norm=c.norm, key=c.key,
                            progress=on_restart if c.progress is not None else None,
                            epoch_progress=epochs_progress(c, lambda: current[0]), **c.settings)


register(AttackSpec(
    "sgd_uap_restarts", sgd_uap_restarts, targeted=True,
    settings={"num_epochs": 5, "batch_size": 128, "restarts": 4, "loss": "ce"},
    request_settings={"num_epochs": "sgd_epochs", "loss": "loss"}, craft=_craft,
    gradient_evaluations=lambda s, n, k: s["restarts"] * s["num_epochs"] * n,
    summary="the best of R SGD-UAP runs from random starts in the ball, by crafting-set UER"))
