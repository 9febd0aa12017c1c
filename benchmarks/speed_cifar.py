"""The CIFAR-size and ImageNet-size rows of ``benchmarks/speed.py`` (``speed_rows.CIFAR_ROWS``).

The Fashion-MNIST CNN at batch 128 is small: on a GPU it measures launch
overhead rather than kernels, and the field's workloads are CIFAR-10 ResNets
and ImageNet-size inputs.  These rows run the same kernels there:

* ``cifar_*``: a ResNet-20 (jacuap's pre-activation ``resnet`` with
  ``stage_sizes=(3, 3, 3), width=16``: 19 convolutions, GroupNorm, 0.27 M
  parameters; ``benchmarks/torch_resnet.py`` is its weight-for-weight
  PyTorch twin) on 32x32x3 at batch 128: the plain training step, the JR
  step with one projection, the exact per-batch Jacobian, one SGD-UAP step
  (an epoch over one minibatch, shuffle included on both sides) and one
  DeepFool-UAP pass (``--cifar-deepfool-size`` inputs, default 256).  The
  images are CIFAR-10's test images when ``--cifar-dir`` holds the binary
  version, else uniform random images and labels of the same shape (the
  kernels' work does not depend on the pixels, except DeepFool's number of
  iterations, which is reported); the weights are the initial ones.
* ``imagenet224_*``: 3x224x224 inputs on a small CNN (jacuap's ``cnn`` with
  ``features=(8, 16), dense=32``; the same ``TorchCNN`` twin as the main
  rows): the Jacobian-vector product on a batch of ``--imagenet-batch`` (32),
  and the top singular value of the stacked Jacobian of
  ``--imagenet-set-size`` (256) inputs, ``d = 150,528``.  jacuap runs its
  matrix-free LOBPCG (``stacked_singular_pairs``, relative residual 1e-2,
  at most 50 iterations); PyTorch has no matrix-free LOBPCG (``torch.lobpcg``
  takes the ``d x d`` matrix: 90 GB here), so its side is power iteration
  (``--imagenet-power-iters``, 10) on ``v -> sum_i J_i^T J_i v``.  Both
  sides' ``sigma`` and certified residual ``||G v - sigma^2 v|| / sigma^2``
  are in the row, so the times are read with the accuracy each reached.

Every row times jacuap against every selected PyTorch form
(``benchmarks/torch_func_reference.py``), interleaved, as the main rows.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, Dict, List

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jacuap
from jacuap import attacks, jacobian, models, train
from jacuap.data.cifar10 import find_cifar10_dir
from benchmarks import speed as S

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RESNET20 = {"stage_sizes": (3, 3, 3), "width": 16}
QUICK_RESNET = {"stage_sizes": (1, 1), "width": 8}  # --quick: seconds, not minutes, to compile
SMALL_CNN = {"features": (8, 16), "dense": 32}
LOBPCG_RTOL, LOBPCG_MAX_ITERS = 1e-2, 50


def cifar_data(cifar_dir, n: int, seed: int = 0):
    """``(x (n, 32, 32, 3), y (n,), mean, std, source)``: CIFAR-10's test images, else random ones."""
    if cifar_dir:
        found, why = find_cifar10_dir(cifar_dir)
        if found:
            ds = jacuap.load_dataset("cifar10", data_dir=cifar_dir)
            return ds.test_images[:n], ds.test_labels[:n], ds.mean, ds.std, ds.source
        reason = f"CIFAR-10 not found in {cifar_dir} ({why})"
    else:
        reason = "CIFAR-10 not given (--cifar-dir)"
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    return x, y, CIFAR_MEAN, CIFAR_STD, f"random uniform images and labels: {reason}"


def run_rows(bench: S.Bench, rows, info: Dict[str, Any], args, *, quick: bool, reps: int, slow_reps: int,
             torch_refs, dev) -> None:
    """Runs the selected ``CIFAR_ROWS`` into ``bench`` and records their set-up in ``info``."""
    if any(r.startswith("cifar_") for r in rows):
        _cifar_rows(bench, rows, info, args, quick=quick, slow_reps=slow_reps, torch_refs=torch_refs, dev=dev)
    if any(r.startswith("imagenet224_") for r in rows):
        _imagenet_rows(bench, rows, info, args, quick=quick, slow_reps=slow_reps, torch_refs=torch_refs, dev=dev)


def _cifar_rows(bench, rows, info, args, *, quick, slow_reps, torch_refs, dev) -> None:
    use_torch = S.torch is not None and dev is not None
    batch = args.batch or (8 if quick else 128)
    df_size = args.cifar_deepfool_size or (2 * batch if quick else 256)
    arch = QUICK_RESNET if quick else RESNET20
    x, y, mean, std, source = cifar_data(args.cifar_dir, max(batch, df_size))
    image_shape = (32, 32, 3)
    model = models.create_model("resnet", 10, mean, std, kwargs=arch)
    if args.conv == "lax":
        model = model.clone(conv_general_dilated=jax.lax.conv_general_dilated)
    params = models.init_params(model, jax.random.PRNGKey(0), image_shape)
    apply_fn = models.make_apply_fn(model)
    xb, yb = jnp.asarray(x[:batch]), jnp.asarray(y[:batch])
    info["cifar"] = {"model": "resnet " + str(arch) + (" (ResNet-20)" if arch == RESNET20 else " (--quick)"),
                     "parameters": int(sum(a.size for a in jax.tree_util.tree_leaves(params))),
                     "data": source, "batch": batch, "deepfool_size": df_size, "weights": "initial (seed 0)"}
    print(f"cifar rows: {info['cifar']['model']}, {info['cifar']['parameters']} parameters, batch {batch}; "
          f"data: {source}", flush=True)
    if use_torch:
        from benchmarks import torch_resnet as trn

        make_tmodel = lambda: trn.from_flax(params, mean, std, **arch).to(dev)
        tmodel = make_tmodel()
        txb, tyb = S.tr.to_nchw(xb).to(dev), S.torch.from_numpy(np.asarray(yb, np.int64)).to(dev)
    key = jax.random.PRNGKey(1)
    input_std = tuple(float(s) for s in std)

    tx = optax.adam(1e-3)
    step_fn = jax.jit(train.train_step, static_argnames=("jr_lambda", "jr_num_proj", "input_std"), donate_argnums=0)
    for name, lam, num_proj in (("cifar_train_plain", 0.0, None), ("cifar_train_jr1", 0.5, 1)):
        if name not in rows:
            continue
        jstate = [train.create_train_state(model, jax.random.PRNGKey(0), image_shape, tx).replace(
            params=S._copy(params))]
        compiled, compile_s = S._aot(step_fn, jstate[0], xb, yb, key, lam, num_proj, input_std if lam else None)

        def jfn(compiled=compiled, jstate=jstate):
            jstate[0], aux = compiled(jstate[0], xb, yb, key)
            return aux

        def make(variant, lam=lam, num_proj=num_proj):  # each form trains its own copy
            tm = make_tmodel()
            step = S.tf.train_step_variant(variant, tm, S.tr.make_optimizer(tm), lam, num_proj)
            return lambda: step(txb, tyb)

        refs, errors = torch_refs(S.NO_JACREV, make)
        bench.run(name, jfn, refs, compile_s=compile_s, flops=S._flops(compiled), errors=errors)

    if "cifar_input_jacobian" in rows:
        jfun = jax.jit(jacobian.input_jacobian, static_argnums=0)
        compiled, compile_s = S._aot(jfun, apply_fn, params, xb)
        refs, errors = torch_refs(S.TORCH_VARIANTS,
                                  lambda v: functools.partial(S.tf.jacobian_variant(v, tmodel), txb))
        bench.run("cifar_input_jacobian", lambda: compiled(params, xb), refs, compile_s=compile_s,
                  flops=S._flops(compiled), errors=errors)

    eps = 8 / 255  # the CIFAR-10 l_inf budget of the literature
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    if "cifar_sgd_uap_step" in rows:
        alpha = attacks.default_sgd_step_size(eps, 1)
        v0 = jnp.zeros(image_shape)
        compiled, compile_s = S._aot(attacks.sgd_uap_epoch, apply_fn, None, params, v0, xb, yb, key, f32(eps),
                                     f32(alpha), f32(12.0), norm="linf", batch_size=batch, targeted=False)
        jfn = lambda: compiled(params, v0, xb, yb, key, f32(eps), f32(alpha), f32(12.0))[0]

        def make(variant):
            step = S.tf.sgd_step_variant(variant, tmodel)
            gen = S.torch.Generator().manual_seed(0)
            tv0 = S.torch.zeros(1, 3, 32, 32, device=dev)
            return lambda: S.tr.sgd_uap_epoch(tmodel, tv0, txb, tyb, eps, alpha, batch, generator=gen, step_fn=step)

        refs, errors = torch_refs(S.NO_JACREV, make)
        bench.run("cifar_sgd_uap_step", jfn, refs, compile_s=compile_s, flops=S._flops(compiled), errors=errors,
                  note="(one minibatch step, shuffle included)")

    if "cifar_deepfool_uap_pass" in rows:
        dx, dy = jnp.asarray(x[:df_size]), jnp.asarray(y[:df_size])
        clean = jnp.asarray(jacuap.metrics.predict(apply_fn, params, dx, batch_size=256), jnp.int32)
        kw = dict(norm="linf", inner="deepfool", aggregate="mean", batch_size=batch, deepfool_max_iter=20,
                  inner_steps=10, num_classes=None)
        _, compile_s = S._aot(attacks.deepfool_uap_pass, apply_fn, params, jnp.zeros(image_shape), dx, clean, key,
                              f32(eps), f32(0.02), f32(eps), **kw)

        def jfn():
            return attacks.deepfool_uap(apply_fn, params, dx, dy, eps=eps, max_passes=1, target_fooling_rate=1.0,
                                        batch_size=batch, key=key)[0]

        S._block(jfn())  # fill jit's cache (the compile time is the AOT figure above)
        counts: Dict[str, List[int]] = {}
        if use_torch:
            tset = S.tr.to_nchw(dx).to(dev)
            tclean = S.torch.from_numpy(np.asarray(clean, np.int64)).to(dev)
        refs, errors = torch_refs(S.TORCH_VARIANTS,
                                  lambda v: S.deepfool_ref(v, tmodel, tset, tclean, eps, batch, counts))
        row = bench.run("cifar_deepfool_uap_pass", jfn, refs, compile_s=compile_s, reps=slow_reps, warmup=0,
                        errors=errors)
        iters = S._iterations_per_pass(counts)
        if iters is not None:
            row["iterations_per_pass"] = iters


def _imagenet_rows(bench, rows, info, args, *, quick, slow_reps, torch_refs, dev) -> None:
    use_torch = S.torch is not None and dev is not None
    side = args.imagenet_size or (32 if quick else 224)
    n = args.imagenet_set_size or (16 if quick else 256)
    batch = args.imagenet_batch or (8 if quick else 32)
    power_iters = args.imagenet_power_iters or (2 if quick else 10)
    image_shape = (side, side, 3)
    model = models.create_model("cnn", 10, IMAGENET_MEAN, IMAGENET_STD, kwargs=SMALL_CNN)
    if args.conv == "lax":
        model = model.clone(conv_general_dilated=jax.lax.conv_general_dilated)
    params = models.init_params(model, jax.random.PRNGKey(0), image_shape)
    apply_fn = models.make_apply_fn(model)
    x = jax.random.uniform(jax.random.PRNGKey(1), (n,) + image_shape)
    info["imagenet224"] = {"model": f"cnn {SMALL_CNN}", "input_shape": list(image_shape), "d": math.prod(image_shape),
                           "set_size": n, "batch": batch, "torch_power_iters": power_iters,
                           "lobpcg_rtol": LOBPCG_RTOL, "lobpcg_max_iters": LOBPCG_MAX_ITERS,
                           "data": "random uniform images", "weights": "initial (seed 0)"}
    print(f"imagenet224 rows: {info['imagenet224']}", flush=True)
    if use_torch:
        tmodel = S.tr.from_flax(params, IMAGENET_MEAN, IMAGENET_STD, image_shape).to(dev)
        tx = S.tr.to_nchw(x).to(dev)
    key = jax.random.PRNGKey(2)

    if "imagenet224_jvp" in rows:
        xb = x[:batch]
        vb = jax.random.normal(jax.random.PRNGKey(3), xb.shape)
        jvp_fn = jax.jit(lambda p, u, t: jax.jvp(lambda w: apply_fn(p, w), (u,), (t,))[1])
        compiled, compile_s = S._aot(jvp_fn, params, xb, vb)
        if use_torch:
            txb, tvb = tx[:batch], S.tr.to_nchw(vb).to(dev)
        refs, errors = torch_refs(S.NO_JACREV, lambda v: functools.partial(S.tf.jvp_variant(v, tmodel), txb, tvb))
        bench.run("imagenet224_jvp", lambda: compiled(params, xb, vb), refs, compile_s=compile_s,
                  flops=S._flops(compiled), errors=errors)

    if "imagenet224_lobpcg" in rows:
        def jfn():
            return jacobian.stacked_singular_pairs(apply_fn, params, x, key, 1, rtol=LOBPCG_RTOL,
                                                   max_iters=LOBPCG_MAX_ITERS, batch_size=batch)

        first = time.perf_counter()
        sigmas, _, residuals = S._block(jfn())
        first = time.perf_counter() - first
        last: Dict[str, Any] = {}
        if use_torch:
            v0 = S.torch.from_numpy(np.asarray(jax.random.normal(key, image_shape)).transpose(2, 0, 1).copy()).to(dev)

        def make(variant):
            gram_times = S.tf.gram_times_variant(variant, tmodel)

            def run():
                last[variant] = S.tf.stacked_power(gram_times, tx, v0, power_iters, batch)
                return last[variant]

            return run

        refs, errors = torch_refs(S.NO_JACREV, make)
        row = bench.run("imagenet224_lobpcg", jfn, refs, reps=slow_reps, warmup=0, errors=errors,
                        note=f"(jacuap LOBPCG to rtol {LOBPCG_RTOL:g} vs PyTorch power x{power_iters})",
                        extra={"sigma": float(sigmas[0]), "relative_residual": float(residuals[0]),
                               "first_call_s": first})
        row["compile_s"] = max(first - row["jacuap_s"], 0.0)
        if last:  # the PyTorch side's accuracy: one more product on each form's last vector (untimed)
            check = S.tf.gram_times_variant("func", tmodel)
            row["torch_sigma"] = {v: float(out[0]) for v, out in last.items()}
            row["torch_relative_residual"] = {v: S.tf.relative_residual(check, tx, out[1], out[0], batch)
                                              for v, out in last.items()}
