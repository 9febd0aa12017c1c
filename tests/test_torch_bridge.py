"""jacuap.from_torch: a PyTorch classifier computes what its Flax twin computes, through both mechanisms.

The twin is jacuap's ``cnn`` (narrowed, 4 classes, random weights, on 8x8x1
sklearn digits) and ``benchmarks.torch_reference.TorchCNN`` holding a copy of its
weights (``from_flax``).  ``from_torch`` makes the torch module back into an
``(apply_fn, params)`` pair, by converting its ``torch.fx`` graph to JAX
(``"convert"``) or by calling torch through ``jax.pure_callback``
(``"callback"``); logits, the kernels and the attacks must then agree with
the Flax model to float32 rounding.  Each test prints the largest difference
it measured (``pytest -s``).
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import jacuap
from benchmarks import torch_reference
from jacuap.errors import ModelError
from jacuap.models import from_torch, load_torch_weights, torch_factory, torch_ops

SHAPE = (8, 8, 1)
MEAN, STD = (0.3,), (0.4,)
MECHANISMS = ("convert", "callback")
N = 64  # the crafting set
K = 4  # classes: few, as every Jacobian (DeepFool's, in its loop) is K VJPs to compile


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.fixture(scope="module")
def twin():
    """The Flax cnn (K classes, random weights), its torch copy, the two converted pairs, and 64 digits.

    No training: the random network's logits are centred on the digits (the
    median logit subtracted from the last bias) so that it predicts every
    class, and the labels are its own predictions, so evasion rates are
    fooling rates.
    """
    x = jnp.asarray((load_digits().images[:1000] / 16.0).astype(np.float32)[..., None])
    model = jacuap.models.create_model("cnn", K, MEAN, STD, kwargs={"features": (4, 8), "dense": 16})
    apply_fn = jacuap.make_apply_fn(model)

    @jax.jit
    def build(key):  # one compilation
        params = jacuap.init_params(model, key, SHAPE)
        params["logits"]["bias"] = params["logits"]["bias"] - jnp.median(apply_fn(params, x), axis=0)
        return params, jnp.argmax(apply_fn(params, x[:N]), axis=-1)

    params, y = build(jax.random.PRNGKey(0))
    module = torch_reference.from_flax(params, MEAN, STD, SHAPE).eval()
    pairs = {"flax": (apply_fn, params)}
    for mechanism in MECHANISMS:
        pairs[mechanism] = from_torch(module, SHAPE, mechanism=mechanism)
    return dict(pairs=pairs, module=module, x=x[:N], y=y)


_RESULTS = {}


def _results(twin, name):
    """Kernels and attacks of one model, computed once per model and shared by the tests.

    Few compilations: one for the per-example kernels, one for the Gram
    matrix's chunk (its top eigenvector is the SV-UAP's direction), one per
    attack, one for the evasion rates.
    """
    if name not in _RESULTS:
        apply_fn, params = twin["pairs"][name]
        x, y, key = twin["x"], twin["y"], jax.random.PRNGKey(3)
        kernels = jax.jit(lambda p, xb: (apply_fn(p, xb), jacuap.input_jacobian(apply_fn, p, xb),
                                         jacuap.frobenius_sq(apply_fn, p, xb)))
        logits, jac, fro = kernels(params, x[:16])
        sigma, u = jacuap.stacked_spectral_norm(apply_fn, params, x, method="gram", batch_size=N, loop="host")
        uer = lambda v: jacuap.universal_evasion_rate(apply_fn, params, x, y, v)
        sgd = jacuap.sgd_uap(apply_fn, params, x, y, eps=0.1, key=key, num_epochs=2, batch_size=32).v
        deepfool = jacuap.deepfool_uap(apply_fn, params, x, y, eps=0.1, key=key, max_passes=2, batch_size=32,
                                       deepfool_max_iter=5, num_classes=2).v
        sv = jacuap.singular_vector_uap(apply_fn, params, x, y, eps=0.1, direction=u).v
        _RESULTS[name] = dict(logits=logits, jac=jac, fro=fro, sigma=sigma, sgd=sgd, sgd_uer=uer(sgd),
                              deepfool_uer=uer(deepfool), sv=sv, sv_uer=uer(sv))
    return _RESULTS[name]


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_logits_and_kernels_equal_the_flax_models(twin, mechanism):
    got, want = _results(twin, mechanism), _results(twin, "flax")
    scale = float(np.max(np.abs(want["logits"])))
    diffs = {k: _max_diff(got[k], want[k]) for k in ("logits", "jac", "fro", "sigma")}
    print(f"\n{mechanism}: max |diff| {diffs}; max |logit| {scale:.3g}")
    assert diffs["logits"] <= 1e-5 * (1 + scale)
    np.testing.assert_allclose(got["jac"], want["jac"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["fro"], want["fro"], rtol=1e-4)
    np.testing.assert_allclose(got["sigma"], want["sigma"], rtol=1e-4)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_attacks_give_the_flax_models_uaps(twin, mechanism):
    got, want = _results(twin, mechanism), _results(twin, "flax")
    same = {k: float(np.mean(np.abs(np.asarray(got[k]) - np.asarray(want[k])) <= 1e-6)) for k in ("sgd", "sv")}
    uers = {k: (got[k], want[k]) for k in ("sgd_uer", "deepfool_uer", "sv_uer")}
    print(f"\n{mechanism}: share of equal pixels {same}, max |diff| sgd {_max_diff(got['sgd'], want['sgd'])}, "
          f"sv {_max_diff(got['sv'], want['sv'])}; UER (got, flax) {uers}")
    # SGD-UAP steps by sign(grad) and the SV-UAP is eps * sign(u): a sign can flip only where a component is
    # at float rounding of 0, so (nearly) every pixel is equal, and so are the evasion rates.
    assert same["sgd"] >= 0.97 and same["sv"] >= 0.97
    assert abs(got["sgd_uer"] - want["sgd_uer"]) <= 2 / N and abs(got["sv_uer"] - want["sv_uer"]) <= 2 / N
    assert abs(got["deepfool_uer"] - want["deepfool_uer"]) <= 4 / N  # DeepFool's minimal steps: within noise
    assert 0 < want["sgd_uer"] < 1  # the attack does something, and not everything


def test_convert_supports_forward_mode_jit_and_vmap(twin):
    apply_fn, params = twin["pairs"]["convert"]
    x = twin["x"][:16]
    t = jnp.asarray(np.random.RandomState(1).normal(size=x.shape).astype(np.float32))

    @jax.jit
    def run(p):
        jvp = jax.jvp(lambda z: apply_fn(p, z), (x,), (t,))[1]
        return jvp, jax.vmap(lambda xi: apply_fn(p, xi[None])[0])(x), apply_fn(p, x)

    jvp, per_example, logits = run(params)
    want = jnp.einsum("bkhwc,bhwc->bk", _results(twin, "flax")["jac"], t)  # J t from the Flax model's Jacobian
    print(f"\nconvert: max |JVP diff| {_max_diff(jvp, want)}, vmap {_max_diff(per_example, logits)}")
    np.testing.assert_allclose(jvp, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(per_example, logits, atol=1e-5)
    assert sorted(params) == ["conv0.bias", "conv0.weight", "conv1.bias", "conv1.weight", "dense.bias",
                              "dense.weight", "logits.bias", "logits.weight", "mean", "std"]


def test_callback_supports_vjp_jit_and_vmap_but_not_forward_mode(twin):
    (apply_fn, params), module = twin["pairs"]["callback"], twin["module"]
    x = twin["x"][:8]
    assert params == {}
    g = np.random.RandomState(2).normal(size=(8, K)).astype(np.float32)
    xt = torch_reference.to_nchw(x).requires_grad_(True)
    (want,) = torch.autograd.grad(module(xt), xt, torch.from_numpy(g))
    got = jax.jit(lambda z: jax.vjp(lambda z: apply_fn(params, z), z)[1](g)[0])(x)
    per_example = jax.vmap(lambda xi, gi: jax.grad(lambda z: jnp.vdot(apply_fn(params, z[None])[0], gi))(xi))(x, g)
    print(f"\ncallback: max |VJP diff| vs torch {_max_diff(got, want.numpy().transpose(0, 2, 3, 1))}, "
          f"vmap {_max_diff(per_example, got)}")
    np.testing.assert_allclose(got, want.numpy().transpose(0, 2, 3, 1), atol=1e-6)
    np.testing.assert_allclose(per_example, got, atol=1e-6)
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda z: apply_fn(params, z), (x,), (x,))
    with pytest.raises(TypeError, match="custom_vjp"):  # the documented limitation: power iteration needs JVPs
        jacuap.stacked_spectral_norm(apply_fn, params, x, jax.random.PRNGKey(0), method="power", num_iters=2)


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock, as written there."""

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TinyResNet(nn.Module):
    """torchvision's ResNet layout, two stages of one block, width 8, 5 classes."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(8, 8))
        down = nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2, down))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _randomised(module, seed=0):
    """``module`` with random weights and BatchNorm running statistics, in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=gen) * 0.5 + 0.5 if name.endswith("running_var")
                        else torch.randn(t.shape, generator=gen) * 0.3)
    return module.eval()


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_resnet_basic_block_with_batch_norm_equals_torch(mechanism):
    module = _randomised(TinyResNet())
    x = np.random.RandomState(0).uniform(size=(4, 16, 16, 3)).astype(np.float32)
    apply_fn, params = from_torch(module, (16, 16, 3), mechanism=mechanism, check=False)
    xt = torch_reference.to_nchw(x).requires_grad_(True)
    want = module(xt)
    g = np.random.RandomState(1).normal(size=(4, 5)).astype(np.float32)
    (grad,) = torch.autograd.grad(want, xt, torch.from_numpy(g))

    @jax.jit
    def logits_and_vjp(p, z, ct):
        out, vjp = jax.vjp(lambda z: apply_fn(p, z), z)
        return out, vjp(ct)[0]

    logits, got_grad = logits_and_vjp(params, jnp.asarray(x), jnp.asarray(g))
    print(f"\n{mechanism} ResNet: max |logit diff| {_max_diff(logits, want.detach())}, "
          f"max |VJP diff| {_max_diff(got_grad, grad.numpy().transpose(0, 2, 3, 1))}")
    np.testing.assert_allclose(logits, want.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_grad, grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-5)
    if mechanism == "convert":
        assert "layer2.0.downsample.1.running_var" in params and "layer1.0.bn1.num_batches_tracked" not in params


class Zoo(nn.Module):
    """The other supported layers, functions and methods in one graph."""

    def __init__(self):
        super().__init__()
        self.conv_same = nn.Conv2d(3, 6, 3, padding="same", dilation=2, groups=3)
        self.conv_stride = nn.Conv2d(6, 6, (3, 1), stride=2, padding=(1, 0))
        self.conv_reflect = nn.Conv2d(3, 2, 3, padding=1, padding_mode="reflect")
        self.acts = nn.Sequential(nn.GELU(), nn.LeakyReLU(0.2), nn.ELU(), nn.Softplus(), nn.SiLU(), nn.Tanh(),
                                  nn.Sigmoid(), nn.Dropout(0.5), nn.Identity())
        self.gn = nn.GroupNorm(2, 6)
        self.avg = nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False)  # 7x7 -> 4x4
        self.max = nn.MaxPool2d(2, ceil_mode=True)
        self.adaptive = nn.AdaptiveAvgPool2d((3, 3))
        self.bn1d = nn.BatchNorm1d(6 * 9 + 2)
        self.ln = nn.LayerNorm(6 * 9 + 2)
        self.fc = nn.Linear(6 * 9 + 2, 4)

    def forward(self, x):
        y = self.acts(self.gn(self.conv_stride(F.relu(self.conv_same(x)))))
        y = torch.cat([self.avg(y), F.avg_pool2d(y, 2, ceil_mode=True)], dim=1)[:, ::2]
        y = self.adaptive(y).contiguous()  # 4x4 -> 3x3
        side = self.max(self.conv_reflect(x)).mean((2, 3))
        z = torch.cat([y.view(y.size(0), -1), side], 1)
        return self.fc(F.gelu(self.ln(self.bn1d(z)), approximate="tanh")) + x.flatten(1).sum(1, keepdim=True)


def test_the_supported_operations_equal_torch():
    module = _randomised(Zoo())
    x = np.random.RandomState(0).uniform(size=(3, 13, 13, 3)).astype(np.float32)
    apply_fn, params = from_torch(module, (13, 13, 3), check=False)
    want = module(torch_reference.to_nchw(x)).detach().numpy()
    got = jax.jit(apply_fn)(params, jnp.asarray(x))
    print(f"\nconvert zoo: max |logit diff| {_max_diff(got, want)}")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


class Cumsum(nn.Module):
    def forward(self, x):
        return x.flatten(1).cumsum(1)[:, :3]


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        x = x.flatten(1)
        return self.fc(x) if float(x.sum()) > 0 else -self.fc(x)  # data-dependent: torch.fx cannot trace it


def test_unsupported_operations_are_named_and_the_callback_runs_them():
    with pytest.raises(ModelError, match=r"node 'cumsum' \(call_method Tensor.cumsum\) is not supported .*"
                                         r"supported: modules .*Conv2d.*use mechanism='callback'") as info:
        from_torch(Cumsum().eval(), (2, 2, 3))
    assert "\n" not in str(info.value)
    with pytest.raises(ModelError, match="torch.fx cannot trace Branchy"):
        from_torch(Branchy().eval(), (2, 2, 3))
    x = np.random.RandomState(0).uniform(size=(2, 2, 2, 3)).astype(np.float32)
    for module in (Cumsum().eval(), Branchy().eval()):
        apply_fn, params = from_torch(module, (2, 2, 3), mechanism="callback")
        np.testing.assert_allclose(apply_fn(params, jnp.asarray(x)),
                                   module(torch_reference.to_nchw(x)).detach().numpy(), atol=1e-6)


class WithFlags(nn.Module):
    """A forward with keyword flags, as many PyTorch models have: convert traces them at their defaults."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 3)

    def forward(self, x, features=False, scale=2.0, mode="logits", extra=None):
        x = x.flatten(1)
        if features:
            return x
        out = self.fc(x) * scale
        return out if mode == "logits" and extra is None else -out


def test_convert_traces_keyword_flags_at_their_defaults():
    module = _randomised(WithFlags()).eval()
    x = np.random.RandomState(0).uniform(size=(2, 2, 2, 3)).astype(np.float32)
    apply_fn, params = from_torch(module, (2, 2, 3))
    np.testing.assert_allclose(apply_fn(params, jnp.asarray(x)), module(torch_reference.to_nchw(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-6)
    assert sorted(params) == ["fc.bias", "fc.weight"]


class ChannelsLast(nn.Module):
    """Takes (B, H, W, C): a 1x1 conv after a permute, then a linear layer on the NHWC flattening."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.fc = nn.Linear(4 * 5 * 3 + 2, 3)

    def forward(self, x):
        side = self.conv(x.permute(0, 3, 1, 2)).amax((2, 3))
        return self.fc(torch.cat([x.reshape(x.shape[0], -1), side], 1))


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_layout_and_normalisation(mechanism):
    x = np.random.RandomState(0).uniform(size=(2, 4, 5, 3)).astype(np.float32)
    mean, std = np.array([0.1, 0.2, 0.3], np.float32), np.array([0.5, 0.25, 2.0], np.float32)
    module = _randomised(ChannelsLast())
    apply_fn, params = from_torch(module, (4, 5, 3), mechanism=mechanism, torch_layout="NHWC", mean=mean, std=std)
    want = module(torch.from_numpy((x - mean) / std)).detach().numpy()
    np.testing.assert_allclose(apply_fn(params, jnp.asarray(x)), want, rtol=1e-5, atol=1e-6)
    nchw = nn.Sequential(nn.Flatten(), nn.Linear(60, 3)).eval()  # layout-sensitive: flattens (C, H, W)
    apply_fn, params = from_torch(nchw, (4, 5, 3), mechanism=mechanism, mean=(0.5,), std=(0.25,))
    want = nchw(torch_reference.to_nchw((x - 0.5) / 0.25)).detach().numpy()
    np.testing.assert_allclose(apply_fn(params, jnp.asarray(x)), want, rtol=1e-5, atol=1e-6)


def test_bad_arguments_are_one_line_model_errors(twin):
    module = twin["module"]
    cases = [
        (dict(module=object(), input_shape=SHAPE), "module must be a torch.nn.Module"),
        (dict(module=module, input_shape=SHAPE, mechanism="trace"), "mechanism must be one of convert, callback"),
        (dict(module=module, input_shape=SHAPE, torch_layout="CHW"), "torch_layout must be one of NCHW, NHWC"),
        (dict(module=module, input_shape=(8, 8)), r"input_shape must be the image shape \(H, W, C\)"),
        (dict(module=module, input_shape=SHAPE, std=(0.0,)), "std must be 1 value, finite and > 0, got \\(0.0,\\)"),
        (dict(module=module, input_shape=SHAPE, mean=(0.1, 0.2)), "mean must be 1 value, finite, got \\(0.1, 0.2\\)"),
        (dict(module=module, input_shape=(8, 8, 3)), r"TorchCNN fails on \(2, 3, 8, 8\) NCHW inputs"),
        (dict(module=nn.Identity().eval(), input_shape=(2, 2, 1)), r"must return \(B, K\) floating logits"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ModelError, match=match) as info:
            from_torch(**kwargs)
        assert "\n" not in str(info.value)
    apply_fn, params = twin["pairs"]["convert"]
    with pytest.raises(ModelError, match=r"x must have shape \(B, 8, 8, 1\), got \(2, 8, 8\)"):
        apply_fn(params, jnp.zeros((2, 8, 8)))


def test_the_check_catches_an_operation_converted_wrongly(monkeypatch):
    module = _randomised(nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    monkeypatch.setitem(torch_ops.MODULES, "ReLU", lambda mod, params, prefix: lambda x: x)  # a wrong rule
    with pytest.raises(ModelError, match="mechanism='convert' gives logits that differ from torch's by"):
        from_torch(module, (2, 2, 1))
    from_torch(module, (2, 2, 1), check=False)  # unchecked: the caller's risk


def test_a_module_in_training_mode_is_switched_to_eval_with_a_warning():
    module = nn.Sequential(nn.Flatten(), nn.Dropout(0.9), nn.Linear(4, 2))
    with pytest.warns(UserWarning, match="was in training mode; switched to module.eval"):
        apply_fn, params = from_torch(module, (2, 2, 1))
    assert not module.training
    x = jnp.ones((3, 2, 2, 1))
    np.testing.assert_allclose(apply_fn(params, x), module(torch.ones(3, 1, 2, 2)).detach().numpy(), atol=1e-6)


class Pickled:
    """An arbitrary object: a weights file holding one must be refused, never unpickled."""


def test_load_torch_weights_reads_state_dicts_only(tmp_path):
    source, target = _randomised(ChannelsLast(), seed=1), ChannelsLast()
    torch.save(source.state_dict(), tmp_path / "w.pt")
    assert load_torch_weights(target, tmp_path / "w.pt") is target
    for name, t in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], t)
    torch.save({"state_dict": {"module." + k: v for k, v in source.state_dict().items()}, "epoch": 3},
               tmp_path / "wrapped.pt")
    load_torch_weights(ChannelsLast(), str(tmp_path / "wrapped.pt"))
    torch.save(source, tmp_path / "module.pt")  # a pickled module, not a state dict
    torch.save({"weights": Pickled()}, tmp_path / "object.pt")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    for name, match in (("module.pt", "not a state dict torch.load\\(weights_only=True\\) can read"),
                        ("object.pt", "not a state dict torch.load\\(weights_only=True\\) can read"),
                        ("other.pt", "does not fit ChannelsLast"), ("list.pt", "holds a list, not a state dict"),
                        ("missing.pt", "no such file")):
        with pytest.raises(ModelError, match=match) as info:
            load_torch_weights(ChannelsLast(), tmp_path / name)
        assert "\n" not in str(info.value)
    try:
        from safetensors.torch import save_file
    except ImportError:
        (tmp_path / "w.safetensors").write_bytes(b"x")
        with pytest.raises(ModelError, match="needs the safetensors package"):
            load_torch_weights(ChannelsLast(), tmp_path / "w.safetensors")
    else:
        save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
        loaded = load_torch_weights(ChannelsLast(), tmp_path / "w.safetensors")
        assert torch.equal(loaded.fc.weight, source.fc.weight)


def test_torch_factory():
    module = torch_factory("benchmarks.torch_reference:TorchCNN")
    assert isinstance(module, torch_reference.TorchCNN)
    for spec, match in (("no_such_package_xyz.nets:make", "PYTHONPATH"),
                        ("benchmarks.torch_reference", "expected 'package.module:Class'"),
                        ("benchmarks.torch_reference:to_nchw", "calling it with no arguments failed"),
                        ("collections:OrderedDict", "returned a OrderedDict, not a torch.nn.Module"),
                        ("benchmarks.torch_reference:DEEPFOOL_ITERATIONS", "list is not callable")):
        with pytest.raises(ModelError, match=match):
            torch_factory(spec)


def test_importing_jacuap_models_does_not_import_torch():
    code = ("import sys, jacuap; jacuap.models; jacuap.from_torch; import jacuap.models.torch_convert, "
            "jacuap.models.torch_callback; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.stdout.strip() == "False"


def test_readme_pytorch_example(tmp_path, monkeypatch):
    text = open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "README.md")).read()
    code = text.split("### PyTorch models", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128, 10))
    torch.save(net.state_dict(), tmp_path / "net.pt")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert torch.equal(namespace["net"][4].weight, net[4].weight)  # the weights file was loaded
    assert namespace["uap"].v.shape == (8, 8, 1) and float(namespace["sigma"]) > 0
