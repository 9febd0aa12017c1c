"""An NNX CNN and its Linen twin through jacuap: the same numbers, step for step.

    python benchmarks/nnx_vs_linen.py [--steps 200]

Both nets (conv 3x3 stride 2, width 16 -> dense 10, on sklearn's 8x8 digits)
share one parameter tree: the NNX module's, split by
``jacuap.models.as_apply_fn``.  Each is trained ``--steps`` steps with
``jacuap.train.train_step`` (JR lambda 0.1, one projection, Adam 3e-3, batch
128, the same batches and keys), then attacked with SGD-UAP (l_inf eps 0.1,
1,000 crafting inputs); the script prints the largest differences (logits,
Jacobians, trained parameters), both sigma_max of the stacked Jacobian, test
accuracies, UERs, and the share of equal UAP pixels, as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

import jacuap  # noqa: E402
from jacuap import attacks, jacobian, metrics, models, train  # noqa: E402


class NNXCNN(nnx.Module):
    def __init__(self, num_classes, *, rngs, width=16):
        self.conv = nnx.Conv(1, width, (3, 3), strides=2, rngs=rngs)
        self.dense = nnx.Linear(width * 16, num_classes, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.conv(x - 0.5))
        return self.dense(h.reshape(len(h), -1))


class LinenCNN(nn.Module):
    num_classes: int
    width: int = 16

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(self.width, (3, 3), strides=2, name="conv")(x - 0.5))
        return nn.Dense(self.num_classes, name="dense")(h.reshape(len(h), -1))


def _max_diff(a, b):
    return max(float(jnp.max(jnp.abs(p - q))) for p, q in zip(jax.tree_util.tree_leaves(a),
                                                                 jax.tree_util.tree_leaves(b)))


def compare(steps: int) -> dict:
    ds = jacuap.load_dataset("digits")
    fn_nnx, params = models.as_apply_fn(NNXCNN(10, rngs=nnx.Rngs(0)))
    fn_linen, _ = models.as_apply_fn(LinenCNN(10), params)
    x = jnp.asarray(ds.test_images[:256])
    out = {"logits_max_abs_diff": _max_diff(fn_nnx(params, x), fn_linen(params, x)),
           "jacobian_max_abs_diff": _max_diff(jacobian.input_jacobian(fn_nnx, params, x[:32]),
                                              jacobian.input_jacobian(fn_linen, params, x[:32])),
           "stacked_sigma": [float(jacobian.stacked_spectral_norm(f, params, x, method="gram")[0])
                             for f in (fn_nnx, fn_linen)]}
    step = jax.jit(train.train_step, static_argnames=train.STATIC_ARGNAMES)
    trained = []
    for fn in (fn_nnx, fn_linen):
        state = train.TrainState.create(apply_fn=fn, params=params, tx=optax.adam(3e-3), uap=jnp.zeros((8, 8, 1)))
        rng = np.random.default_rng(0)
        for i in range(steps):
            idx = rng.choice(len(ds.train_images), 128, replace=False)
            state, _ = step(state, ds.train_images[idx], ds.train_labels[idx], train.step_key(0, i), 0.1, 1)
        trained.append(state.params)
    out["trained_params_max_abs_diff"] = _max_diff(*trained)
    xt, yt, xc, yc = ds.test_images, ds.test_labels, ds.train_images[:1000], ds.train_labels[:1000]
    uaps = [attacks.sgd_uap(f, p, xc, yc, eps=0.1, key=jax.random.PRNGKey(0))[0]
            for f, p in zip((fn_nnx, fn_linen), trained)]
    out["test_accuracy"] = [metrics.accuracy(f, p, xt, yt) for f, p in zip((fn_nnx, fn_linen), trained)]
    out["sgd_uap_uer_eps0.1"] = [metrics.universal_evasion_rate(f, p, xt, yt, v)
                                 for f, p, v in zip((fn_nnx, fn_linen), trained, uaps)]
    out["uap_equal_pixels"] = float(jnp.mean(uaps[0] == uaps[1]))
    return {"steps": steps, **out}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    print(json.dumps(compare(parser.parse_args(argv).steps), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
