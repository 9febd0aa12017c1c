"""Speed of the PyTorch bridge, ``jacuap.from_torch`` (issue 28 item 4), against native PyTorch.

    python benchmarks/torch_bridge.py              # ~5 minutes on 2 CPU cores
    python benchmarks/torch_bridge.py --quick      # tiny sizes, about a minute (the smoke test)
    python benchmarks/torch_bridge.py --reps 5 --batch 64

The model is a ResNet-20-size CIFAR network in PyTorch (:class:`TorchResNet20`:
torchvision-style post-activation BasicBlocks, BatchNorm in eval mode, a
1x1-conv + BatchNorm downsample shortcut, 3 stages of 16/32/64 channels with
3 blocks each, global average pooling, 10 classes; 32x32x3 inputs), randomly
initialised with a fixed seed; its BatchNorm affine parameters are drawn at
random and its running statistics set by forward passes on random inputs, so
eval-mode BatchNorm is not the identity.  The inputs are uniform random
pixels in [0, 1] (fixed seed); normalisation by the CIFAR-10 mean/std is the
bridge's ``mean``/``std`` on the bridge side and a wrapper module natively.

Rows, each one computation on one batch (default 128):

* ``sgd_uap_step``: one l_inf SGD-UAP step (gradient of the clipped mean CE
  w.r.t. a shared ``v``, ``clip(x + v, 0, 1)``, sign step, projection):
  ``jacuap.attacks.sgd_uap_epoch`` over exactly one minibatch, against
  ``benchmarks/torch_reference.sgd_uap_step``;
* ``input_jacobian``: the exact per-example input Jacobian, all ``K = 10``
  rows: ``jacuap.jacobian.input_jacobian`` against
  ``torch_reference.input_jacobian`` (one forward, ``K`` backward passes);
* ``deepfool_uap_pass``: one DeepFool-UAP pass (batched, ``aggregate="mean"``):
  ``jacuap.attacks.deepfool_uap_pass`` against
  ``torch_reference.deepfool_uap_pass``.

Columns: ``torch`` (native eager PyTorch, the reference), ``convert``
(``from_torch(..., mechanism="convert")``: the module traced by torch.fx into
a pure JAX function; it IS the converted pure-JAX function of this network),
``callback`` (``mechanism="callback"``: torch called from JAX through
``jax.pure_callback`` with a torch-autograd VJP; a row it cannot do is n/a
with the reason) and ``flax``: jacuap's own ``resnet`` at ResNet-20 size
(``stage_sizes=(3, 3, 3)``, ``width=16``).  jacuap's ResNet is NOT the same
network (pre-activation blocks, GroupNorm, its own random weights), so the
``flax`` column is a separate reference for what a native jacuap model of
this size costs: it has no check against PyTorch, and its DeepFool pass runs
its own number of iterations (reported; compare seconds per iteration).

Timing: each JAX column is compiled ahead of time (the compile reported on
its own), every column is run once and its result checked against native
PyTorch (max abs differences printed and saved; for the gradient and the
Jacobian also the relative error against native PyTorch in float64, beside
native float32 PyTorch's own, since this network's float32 results differ by
a few percent in their largest entries between any two correct
computations), then the columns' repetitions are interleaved (torch,
convert, callback, flax, torch, ...) and the median and min over the
repetitions reported, with ratios column / torch.  A column whose first run
takes longer than ``--slow-s`` is not repeated (that run is its sample).
``torch.set_num_threads(os.cpu_count())``; XLA's CPU client uses its default
intra-op pool, one thread per core, so both sides get every core.  The load
average is recorded at the start and the end; run it on a quiet machine
(both sides' thread pools spin, and on an oversubscribed machine single runs
were seen 5-20x slower than the median).

Results: ``benchmarks/results/torch_bridge.json`` (``--out``) and a Markdown
table beside it (same name, ``.md``).  No timing is ever asserted by the tests.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import jacuap  # noqa: E402
from jacuap import attacks, io, jacobian, models  # noqa: E402
from benchmarks import torch_reference as tr  # noqa: E402

ROWS = ("sgd_uap_step", "input_jacobian", "deepfool_uap_pass")
COLUMNS = ("torch", "convert", "callback", "flax")
MECHANISMS = ("convert", "callback")
GOAL_RATIO = 1.5  # issue 28: the chosen mechanism within 1.5x of native PyTorch on CPU
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGE_SHAPE = (32, 32, 3)  # (H, W, C): jacuap's layout
NUM_CLASSES = 10
EPS = 8.0 / 255.0
SGD_STEP = EPS / 4
BETA = 12.0
OVERSHOOT = 0.02
DEFAULT_REPS = {"sgd_uap_step": 21, "input_jacobian": 7, "deepfool_uap_pass": 3}
QUICK_REPS = {"sgd_uap_step": 2, "input_jacobian": 2, "deepfool_uap_pass": 1}


# ---------------------------------------------------------------------------
# The PyTorch model.
# ---------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: conv3x3-BN-relu-conv3x3-BN, + shortcut, relu."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class TorchResNet20(nn.Module):
    """ResNet-20 for CIFAR (He et al. 2016, with torchvision's 1x1-conv downsample); NCHW, normalised inputs."""

    def __init__(self, num_classes: int = NUM_CLASSES, blocks: int = 3, widths: Sequence[int] = (16, 32, 64)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        layers, in_planes = [], widths[0]
        for stage, planes in enumerate(widths):
            stride = 1 if stage == 0 else 2
            stage_blocks = []
            for b in range(blocks):
                stage_blocks.append(BasicBlock(in_planes, planes, stride if b == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*stage_blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class Normalized(nn.Module):
    """``net((x - mean) / std)``: the native side's model, taking pixels in [0, 1] (NCHW)."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def make_torch_model(blocks: int = 3, seed: int = 0) -> TorchResNet20:
    """The benchmark's network, in eval mode: random weights, random BN affine, BN statistics of random inputs."""
    torch.manual_seed(seed)
    net = TorchResNet20(blocks=blocks)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
                m.momentum = None  # a cumulative average over the calibration batches
        net.train()
        mean = torch.tensor(CIFAR_MEAN).reshape(1, -1, 1, 1)
        std = torch.tensor(CIFAR_STD).reshape(1, -1, 1, 1)
        for _ in range(4):
            net((torch.rand((64, 3, 32, 32), generator=gen) - mean) / std)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


# ---------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------


def _block(tree):
    return jax.tree_util.tree_map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, tree)


def _np(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _nhwc(a) -> np.ndarray:
    """A torch NCHW result (last three axes C, H, W) in jacuap's layout (H, W, C)."""
    a = _np(a)
    return np.moveaxis(a, -3, -1)


def _max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _rel(a, ref) -> float:
    scale = float(np.max(np.abs(ref)))
    return _max_abs(a, ref) / scale if scale > 0 else _max_abs(a, ref)


def _counting(apply_fn: Callable, counter: List[int]) -> Callable:
    """``apply_fn`` that adds 1 to ``counter[0]`` each time the compiled program calls it (not timed)."""

    def counted(params, x):
        jax.debug.callback(lambda: counter.__setitem__(0, counter[0] + 1))
        return apply_fn(params, x)

    return counted


def _deepfool_iterations_from_calls(calls: int) -> int:
    """DeepFool iterations of one :func:`jacuap.attacks.deepfool_uap_pass` over ONE minibatch, from its forward calls.

    The pass calls the model once for the unfooled mask, once for DeepFool's
    base logits, once for its initial ``still_correct``, twice per iteration
    (the linearised forward and ``still_correct``) and once for the fooling
    rate: ``4 + 2 * iterations``.
    """
    return (calls - 4) // 2


def _torch_sgd_grad(model, v, x, y, beta):
    """The gradient ``torch_reference.sgd_uap_step`` steps along (for the check)."""
    v = v.detach().requires_grad_(True)
    loss = F.cross_entropy(model(tr.clip01(x + v)), y, reduction="none").clamp(max=beta).mean()
    return torch.autograd.grad(loss, v)[0]


# ---------------------------------------------------------------------------
# One column: the three rows' callables.
# ---------------------------------------------------------------------------


class Problem:
    """The shared inputs, in both layouts."""

    def __init__(self, batch: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.x = rng.uniform(0.0, 1.0, (batch,) + IMAGE_SHAPE).astype(np.float32)
        self.y = rng.integers(0, NUM_CLASSES, batch).astype(np.int32)
        self.v0 = rng.uniform(-EPS, EPS, IMAGE_SHAPE).astype(np.float32)  # SGD-UAP's v: inside the ball
        self.xt = torch.from_numpy(np.ascontiguousarray(self.x.transpose(0, 3, 1, 2)))
        self.yt = torch.from_numpy(self.y.astype(np.int64))
        self.v0t = torch.from_numpy(np.ascontiguousarray(self.v0.transpose(2, 0, 1)))
        self.clean = None  # DeepFool's clean labels: the torch model's predictions (set once it exists)
        self.batch = batch


class Run:
    """One cell's computation: ``prepare()`` once (JAX: compile ahead of time), then ``()`` runs it."""

    compile_s: Optional[float] = None

    def prepare(self) -> None:
        pass

    def __call__(self) -> Any:
        raise NotImplementedError


class TorchRun(Run):
    def __init__(self, fn: Callable[[], Any]):
        self.fn = fn

    def __call__(self) -> Any:
        return self.fn()


class JaxRun(Run):
    """A jitted function compiled ahead of time at fixed arguments (``static`` of them left out of the call)."""

    def __init__(self, jitted, args: Tuple[Any, ...], kwargs: Dict[str, Any], static: Sequence[int],
                 pick: Callable[[Any], Any] = lambda out: out):
        self.jitted, self.args, self.kwargs, self.pick = jitted, args, kwargs, pick
        self.dynamic = tuple(a for i, a in enumerate(args) if i not in set(static))
        self.compiled = None

    def prepare(self) -> None:
        start = time.perf_counter()
        self.compiled = self.jitted.lower(*self.args, **self.kwargs).compile()
        self.compile_s = time.perf_counter() - start

    def __call__(self) -> Any:
        return self.pick(self.compiled(*self.dynamic))


def torch_column(model: nn.Module, pb: Problem, max_iter: int) -> Dict[str, Run]:
    zeros_t = torch.zeros_like(pb.v0t)
    clean_t = torch.from_numpy(pb.clean.astype(np.int64))
    return {
        "sgd_uap_step": TorchRun(lambda: tr.sgd_uap_step(model, pb.v0t, pb.xt, pb.yt, EPS, SGD_STEP, BETA)),
        "input_jacobian": TorchRun(lambda: tr.input_jacobian(model, pb.xt)),
        "deepfool_uap_pass": TorchRun(lambda: tr.deepfool_uap_pass(
            model, zeros_t, pb.xt, clean_t, EPS, batch_size=pb.batch, overshoot=OVERSHOOT, max_iter=max_iter)),
    }


def jax_column(apply_fn: Callable, params: Any, pb: Problem, max_iter: int,
               clean: Optional[np.ndarray] = None) -> Dict[str, Run]:
    """The three rows through jacuap's kernels for any ``apply_fn(params, x)`` (NHWC pixels -> logits).

    ``clean``: DeepFool-UAP's clean labels (default: the torch model's predictions, ``pb.clean``).
    """
    x, y, v0 = jnp.asarray(pb.x), jnp.asarray(pb.y), jnp.asarray(pb.v0)
    clean = jnp.asarray(pb.clean if clean is None else clean)
    key = jax.random.PRNGKey(0)
    scalar = lambda value: jnp.asarray(value, jnp.float32)
    return {
        "sgd_uap_step": JaxRun(
            attacks.sgd_uap_epoch,
            (apply_fn, None, params, v0, x, y, key, scalar(EPS), scalar(SGD_STEP), scalar(BETA)),
            dict(norm="linf", batch_size=pb.batch, targeted=False), static=(0, 1), pick=lambda out: out[0]),
        "input_jacobian": JaxRun(jax.jit(jacobian.input_jacobian, static_argnums=0), (apply_fn, params, x), {},
                                 static=(0,)),
        "deepfool_uap_pass": JaxRun(
            attacks.deepfool_uap_pass,
            (apply_fn, params, jnp.zeros_like(v0), x, clean, key, scalar(EPS), scalar(OVERSHOOT), scalar(0.0)),
            dict(norm="linf", inner="deepfool", aggregate="mean", batch_size=pb.batch, deepfool_max_iter=max_iter,
                 inner_steps=10, num_classes=None), static=(0,)),
    }


def float64_reference(row: str, native: nn.Module, pb: Problem) -> Optional[np.ndarray]:
    """Native PyTorch's gradient (SGD-UAP) or Jacobian in float64, NHWC: the truth float32 results are judged by.

    A ResNet-20 at float32 is chaotic enough (a ReLU whose input is within
    rounding of 0 switches) that two correct float32 computations differ by a
    few percent in their largest Jacobian entries; so each column's error is
    given against float64 beside native PyTorch's own float32 error.  None
    for DeepFool (its result is piecewise constant in the model's outputs).
    """
    if row == "deepfool_uap_pass":
        return None
    m64 = copy.deepcopy(native).double()
    if row == "sgd_uap_step":
        return _nhwc(_torch_sgd_grad(m64, pb.v0t.double(), pb.xt.double(), pb.yt, BETA))
    return _nhwc(tr.input_jacobian(m64, pb.xt.double()))


def _errors(a, ref64: np.ndarray, prefix: str) -> Dict[str, float]:
    a = np.asarray(a, np.float64)
    fro = float(np.linalg.norm(ref64))
    return {f"{prefix}rel_max_abs_err_vs_float64": _rel(a, ref64),
            f"{prefix}rel_fro_err_vs_float64": float(np.linalg.norm(a - ref64)) / fro if fro > 0 else 0.0}


def check_row(row: str, out: Any, ref: Any, extra: Dict[str, Any], ref64: Optional[np.ndarray] = None,
              torch_grad: Optional[np.ndarray] = None, grad: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """How far a column's result is from native PyTorch's (``ref``), and from float64; pixels compared in NHWC."""
    if row == "sgd_uap_step":
        v, vt = _np(out), _nhwc(ref)
        flipped = int(np.sum(np.abs(v - vt) > SGD_STEP / 2))
        check = {"v_max_abs_diff": _max_abs(v, vt), "v_sign_flips": flipped, "v_size": int(v.size)}
        if grad is not None:
            check.update(grad_max_abs_diff=_max_abs(grad, torch_grad), grad_rel_max_abs_diff=_rel(grad, torch_grad))
            if ref64 is not None:
                check.update(_errors(grad, ref64, "grad_"))
                check.update(_errors(torch_grad, ref64, "torch_grad_"))
        return {**check, **extra}
    if row == "input_jacobian":
        jt, j = _nhwc(ref), _np(out)
        check = {"max_abs_diff": _max_abs(j, jt), "rel_max_abs_diff": _rel(j, jt),
                 "max_abs_reference": float(np.max(np.abs(jt)))}
        if ref64 is not None:
            check.update(_errors(j, ref64, ""))
            check.update(_errors(jt, ref64, "torch_"))
        return check
    v, rate = out
    vt, rate_t = ref
    return {"v_max_abs_diff": _max_abs(_np(v), _nhwc(vt)), "fooling_rate": float(rate),
            "fooling_rate_diff": abs(float(rate) - float(rate_t)), **extra}


# ---------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------


def _versions() -> Dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "jaxlib": getattr(jax.lib, "__version__", None) or _pkg_version("jaxlib"),
        "flax": _pkg_version("flax"),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "jacuap": getattr(jacuap, "__version__", None),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }


def _pkg_version(name: str) -> Optional[str]:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # pragma: no cover
        return None


def _reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:300]


def _fmt_s(seconds: Optional[float]) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds:.4f}" if seconds < 1 else f"{seconds:.3f}"


def markdown(result: Dict[str, Any]) -> str:
    cfg, machine = result["config"], result["machine"]
    cols = [c for c in COLUMNS if c != "torch"]
    lines = [
        "# jacuap.from_torch: speed against native PyTorch (CPU)",
        "",
        f"ResNet-20-size CIFAR network ({cfg['blocks_per_stage']} BasicBlocks per stage, 16/32/64 channels, "
        f"BatchNorm eval), batch {cfg['batch']}, 32x32x3, 10 classes; random weights and inputs (seed 0). "
        f"Seconds per computation on one batch: median (min) over the reps; ratio = column / torch "
        f"(median; min in brackets). torch threads {machine['torch_threads']}, XLA: default pool "
        f"({machine['cpu_count']} cores). Load average at start {_load(machine['loadavg_at_start'])}, "
        f"at end {_load(machine['loadavg_at_end'])}; the whole run {result.get('wall_s', 0):.0f} s."
        + (" **--quick: toy sizes, not a measurement.**" if cfg["quick"] else ""),
        "",
        "| row | reps | torch s | " + " | ".join(f"{c} s | {c}/torch" for c in cols) + " |",
        "|---|---:|---:|" + "---:|---:|" * len(cols),
    ]
    for row in result["rows"]:
        r = result["rows"][row]
        cells = [row, str(r["reps"]), _cell(r["columns"]["torch"])]
        for c in cols:
            col = r["columns"][c]
            cells.append(_cell(col))
            cells.append(_ratio_cell(col))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Checks against native PyTorch (before timing; the JSON has every number):", ""]
    for row in result["rows"]:
        for c in cols:
            col = result["rows"][row]["columns"][c]
            if col.get("check"):
                lines.append(f"- {row}, {c}: {_check_text(row, col['check'])}")
    lines += ["", "n/a and notes:", ""]
    for row in result["rows"]:
        for c in COLUMNS:
            col = result["rows"][row]["columns"][c]
            if col.get("na"):
                lines.append(f"- {row}, {c}: n/a ({col['na']})")
            if col.get("note"):
                lines.append(f"- {row}, {c}: {col['note']}")
    lines += [f"- {note}" for note in result["notes"]]
    lines += ["", f"Goal (issue 28): the chosen mechanism within {GOAL_RATIO}x of native PyTorch. "
              + result["goal"]["summary"], ""]
    return "\n".join(lines)


def _check_text(row: str, c: Dict[str, Any]) -> str:
    """One check in words (the JSON has every number)."""
    if row == "sgd_uap_step":
        text = (f"v after the step: {c['v_sign_flips']} of {c['v_size']} entries differ "
                f"(max |dv| {_short(c['v_max_abs_diff'])})")
        if "grad_rel_max_abs_diff" in c:
            text += (f"; gradient: max abs diff {_short(c['grad_max_abs_diff'])} "
                     f"(relative {_short(c['grad_rel_max_abs_diff'])})")
        if "grad_rel_max_abs_err_vs_float64" in c:
            text += (f"; relative error vs float64 torch: max {_short(c['grad_rel_max_abs_err_vs_float64'])}, "
                     f"Frobenius {_short(c['grad_rel_fro_err_vs_float64'])} (native float32 torch: "
                     f"{_short(c['torch_grad_rel_max_abs_err_vs_float64'])}, "
                     f"{_short(c['torch_grad_rel_fro_err_vs_float64'])})")
        return text
    if row == "input_jacobian":
        text = f"max abs diff {_short(c['max_abs_diff'])} (relative to max |J| {_short(c['rel_max_abs_diff'])})"
        if "rel_max_abs_err_vs_float64" in c:
            text += (f"; relative error vs float64 torch: max {_short(c['rel_max_abs_err_vs_float64'])}, "
                     f"Frobenius {_short(c['rel_fro_err_vs_float64'])} (native float32 torch: "
                     f"{_short(c['torch_rel_max_abs_err_vs_float64'])}, {_short(c['torch_rel_fro_err_vs_float64'])})")
        return text
    its = c.get("deepfool_iterations")
    return (f"v max abs diff {_short(c['v_max_abs_diff'])}; fooling rate {_short(c['fooling_rate'])} "
            f"(diff {_short(c['fooling_rate_diff'])}); DeepFool iterations {'not counted' if its is None else its} "
            f"(torch {c.get('torch_deepfool_iterations')})")


def _load(load) -> str:
    return "/".join(f"{v:.2f}" for v in load) if load else "n/a"


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _cell(col: Dict[str, Any]) -> str:
    if col.get("median_s") is None:
        return "n/a"
    extra = ""
    if col.get("deepfool_iterations") is not None:
        extra = f", {col['deepfool_iterations']} it"
    return f"{_fmt_s(col['median_s'])} ({_fmt_s(col['min_s'])}{extra})"


def _ratio_cell(col: Dict[str, Any]) -> str:
    if col.get("ratio_median") is None:
        return "n/a"
    text = f"{col['ratio_median']:.2f} ({col['ratio_min']:.2f})"
    if col.get("ratio_per_iteration") is not None:
        text += f"; {col['ratio_per_iteration']:.2f}/it"
    return text


def run_row(row: str, runs: Dict[str, Run], reps: int, slow_s: float, ctx: Dict[str, Any]) -> Dict[str, Any]:
    """Prepare, run once, check against torch, then time one row's columns interleaved."""
    cols_out: Dict[str, Dict[str, Any]] = {}
    live: Dict[str, Run] = {}
    ref = None
    for col in COLUMNS:
        entry: Dict[str, Any] = {"median_s": None, "min_s": None, "all_s": []}
        cols_out[col] = entry
        if col not in runs:
            entry["na"] = ctx["na"][col].get(row, "not requested (--columns)")
            print(f"  {col:9s} n/a: {entry['na']}", flush=True)
            continue
        run = runs[col]
        if col == "torch" and row == "deepfool_uap_pass":
            tr.DEEPFOOL_ITERATIONS[0] = 0
        try:
            run.prepare()
            start = time.perf_counter()
            out = _block(run())
            entry["first_run_s"] = time.perf_counter() - start
        except Exception as exc:  # a mechanism that cannot do this row: n/a with the reason
            entry["na"] = _reason(exc)
            print(f"  {col:9s} n/a: {entry['na']}", flush=True)
            if os.environ.get("TORCH_BRIDGE_TRACEBACK"):
                traceback.print_exc()
            continue
        entry["compile_s"] = run.compile_s
        compiled = "" if run.compile_s is None else f"compile {run.compile_s:.2f}s, "
        print(f"  {col:9s} {compiled}first run {entry['first_run_s']:.3f}s", flush=True)
        if col == "torch":
            ref = out
            if row == "deepfool_uap_pass":
                entry["deepfool_iterations"] = ctx["torch_iterations"] = tr.DEEPFOOL_ITERATIONS[0]
                entry["fooling_rate"] = float(out[1])
        else:
            extra: Dict[str, Any] = {}
            apply_fn, params, own_clean = ctx["models"][col]
            grads: Dict[str, Any] = {}
            if row == "sgd_uap_step" and col != "flax":
                pb = ctx["problem"]
                grad_fn = jax.jit(jax.grad(attacks.uap_objective, argnums=3), static_argnums=(0, 1))
                grads["grad"] = np.asarray(grad_fn(
                    apply_fn, None, params, jnp.asarray(pb.v0), jnp.asarray(pb.x), jnp.asarray(pb.y),
                    jnp.ones((pb.batch,), jnp.float32), jnp.float32(BETA)))
                grads["torch_grad"] = _nhwc(_torch_sgd_grad(ctx["native"], pb.v0t, pb.xt, pb.yt, BETA))
            if row == "deepfool_uap_pass":
                entry["fooling_rate"] = float(out[1])
                entry["deepfool_iterations"] = None
                if entry["first_run_s"] <= slow_s:  # counted in one more (untimed) run
                    calls = [0]
                    counting = jax_column(_counting(apply_fn, calls), params, ctx["problem"], ctx["max_iter"],
                                          own_clean)[row]
                    counting.prepare()
                    _block(counting())
                    entry["deepfool_iterations"] = _deepfool_iterations_from_calls(calls[0])
                extra = {"deepfool_iterations": entry["deepfool_iterations"],
                         "torch_deepfool_iterations": ctx["torch_iterations"]}
            if col == "flax":  # another function: only its own numbers, no comparison
                entry["check"] = None
                entry["check_note"] = "none: jacuap's ResNet is a different network (its own weights)"
            else:
                if row not in ctx["ref64"]:
                    ctx["ref64"][row] = float64_reference(row, ctx["native"], ctx["problem"])
                entry["check"] = check_row(row, out, ref, extra, ctx["ref64"][row], **grads)
                print(f"  {col:9s} check: " + ", ".join(f"{k} {_short(v)}" for k, v in entry["check"].items()),
                      flush=True)
        if entry["first_run_s"] > slow_s:
            entry["all_s"] = [entry["first_run_s"]]
            entry["note"] = (f"one run only: its first run took over {slow_s:g} s (--slow-s), so that run "
                             f"(after compiling) is its only sample")
        else:
            live[col] = run
    for _ in range(reps):  # interleaved: torch, convert, callback, flax, torch, ...
        for col, run in live.items():
            start = time.perf_counter()
            _block(run())
            cols_out[col]["all_s"].append(time.perf_counter() - start)
    base = cols_out["torch"]
    for col, entry in cols_out.items():
        ts = entry["all_s"]
        if not ts:
            continue
        entry.update(median_s=statistics.median(ts), min_s=min(ts), reps=len(ts))
        if col != "torch" and base.get("median_s"):
            entry["ratio_median"] = entry["median_s"] / base["median_s"]
            entry["ratio_min"] = entry["min_s"] / base["min_s"]
            it, it_t = entry.get("deepfool_iterations"), base.get("deepfool_iterations")
            if row == "deepfool_uap_pass" and it and it_t:
                entry["ratio_per_iteration"] = (entry["median_s"] / it) / (base["median_s"] / it_t)
        ratio = f"  {entry['ratio_median']:.2f}x torch" if entry.get("ratio_median") else ""
        print(f"  {col:9s} median {entry['median_s']:.4f}s  min {entry['min_s']:.4f}s  ({len(ts)} runs){ratio}",
              flush=True)
    return {"reps": reps, "columns": cols_out}


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="toy sizes (batch 8, one block per stage, DeepFool max 3 iterations, 1-2 reps)")
    p.add_argument("--reps", type=int, default=None,
                   help="timed repetitions of every row (default: %s; --quick: %s)" % (
                       ", ".join(f"{r} {n}" for r, n in DEFAULT_REPS.items()),
                       ", ".join(f"{r} {n}" for r, n in QUICK_REPS.items())))
    p.add_argument("--batch", type=int, default=None, help="inputs per batch (default 128; --quick 8)")
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of " + ",".join(ROWS))
    p.add_argument("--columns", default=",".join(COLUMNS),
                   help="comma-separated subset of " + ",".join(COLUMNS) + " (torch is always run: the reference)")
    p.add_argument("--slow-s", type=float, default=60.0,
                   help="a column whose first run (after compiling) takes longer is not repeated: that run is its "
                        "only sample (default 60)")
    p.add_argument("--out", default=None,
                   help="JSON output (default benchmarks/results/torch_bridge.json; the .md beside it; '' for none)")
    args = p.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        p.error("--reps must be >= 1")
    if args.batch is not None and args.batch < 1:
        p.error("--batch must be >= 1")
    wanted = [c for c in args.columns.split(",") if c]
    if set(wanted) - set(COLUMNS):
        p.error(f"unknown columns {sorted(set(wanted) - set(COLUMNS))}; choose from {COLUMNS}")
    rows = [r for r in ROWS if r in args.rows.split(",")]
    if set(args.rows.split(",")) - set(ROWS) or not rows:
        p.error(f"--rows: choose from {ROWS}, got {args.rows!r}")
    columns = [c for c in COLUMNS if c == "torch" or c in wanted]
    quick = args.quick
    batch = args.batch or (8 if quick else 128)
    blocks = 1 if quick else 3
    max_iter = 3 if quick else 20
    reps = {row: args.reps or (QUICK_REPS if quick else DEFAULT_REPS)[row] for row in rows}
    out_path = args.out if args.out is not None else os.path.join(os.path.dirname(__file__), "results",
                                                                  "torch_bridge.json")

    wall_start = time.perf_counter()
    load_start = os.getloadavg()
    torch.set_num_threads(os.cpu_count() or 1)
    machine = {**_versions(), "torch_threads": torch.get_num_threads(),
               "xla_threads": f"XLA CPU default intra-op pool ({os.cpu_count()} threads, one per core)",
               "loadavg_at_start": load_start}
    print(f"torch_bridge: batch {batch}, {blocks} blocks/stage, jax {jax.__version__} ({jax.default_backend()}), "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads; load {_load(load_start)}", flush=True)

    pb = Problem(batch)
    net = make_torch_model(blocks)
    native = Normalized(copy.deepcopy(net), CIFAR_MEAN, CIFAR_STD).eval()
    with torch.no_grad():
        pb.clean = native(pb.xt).argmax(1).numpy().astype(np.int32)

    runs: Dict[str, Dict[str, Run]] = {"torch": torch_column(native, pb, max_iter)}
    ctx: Dict[str, Any] = {"na": {c: {} for c in COLUMNS}, "models": {}, "problem": pb, "native": native,
                           "max_iter": max_iter, "torch_iterations": None, "ref64": {}}
    setup_s: Dict[str, Optional[float]] = {}
    from_torch = _from_torch()
    for mech in MECHANISMS:
        if mech not in columns:
            continue
        if from_torch is None:
            ctx["na"][mech] = {row: "jacuap.from_torch is not available in this checkout" for row in ROWS}
            continue
        start = time.perf_counter()
        try:
            apply_fn, params = from_torch(copy.deepcopy(net), IMAGE_SHAPE, mechanism=mech, torch_layout="NCHW",
                                          mean=CIFAR_MEAN, std=CIFAR_STD)
        except Exception as exc:  # the mechanism cannot take this module at all
            ctx["na"][mech] = {row: f"from_torch failed: {_reason(exc)}" for row in ROWS}
            continue
        setup_s[mech] = time.perf_counter() - start
        runs[mech] = jax_column(apply_fn, params, pb, max_iter)
        ctx["models"][mech] = (apply_fn, params, None)
    if "flax" in columns:
        model = models.create_model("resnet", NUM_CLASSES, CIFAR_MEAN, CIFAR_STD,
                                    kwargs={"stage_sizes": (blocks,) * 3, "width": 16})
        start = time.perf_counter()
        params = models.init_params(model, jax.random.PRNGKey(0), IMAGE_SHAPE)
        setup_s["flax"] = time.perf_counter() - start
        apply_fn = models.make_apply_fn(model)
        flax_clean = np.asarray(jnp.argmax(apply_fn(params, jnp.asarray(pb.x)), axis=-1), np.int32)  # its own
        runs["flax"] = jax_column(apply_fn, params, pb, max_iter, flax_clean)
        ctx["models"]["flax"] = (apply_fn, params, flax_clean)

    rows_out: Dict[str, Any] = {}
    for row in rows:
        print(f"\n{row} ({reps[row]} reps)", flush=True)
        rows_out[row] = run_row(row, {c: r[row] for c, r in runs.items() if row not in ctx["na"][c]}, reps[row],
                                args.slow_s, ctx)

    goal = _goal(rows_out)
    notes = [
        "convert: the torch.fx-converted function is the pure-JAX version of this network; jacuap's own Flax "
        "ResNet ('flax') is a separate reference of the same size (pre-activation, GroupNorm, 3x3 stages of "
        "16/32/64, its own random weights), not the same function, so it has no check and its DeepFool pass "
        "runs its own iteration count ('it'; '/it' compares seconds per iteration).",
        "sgd_uap_step is jacuap.attacks.sgd_uap_epoch over exactly one minibatch (the batch); its check "
        "compares v after the step (entries that differ by a sign flip of a near-zero gradient are counted) and "
        "the gradient of the objective.",
        "checks: the float32 results of this 20-layer network differ between any two correct computations "
        "(a ReLU input within rounding of 0 switches; even callback, which runs torch itself, differs from native "
        "torch because XLA normalises the input, 1 ulp apart), by up to a few percent of max |J| in single "
        "Jacobian entries; each mechanism's error against float64 torch is the same size as native float32 "
        "torch's own.",
        "JAX columns are compiled ahead of time (compile_s in the JSON), then run once (first_run_s), checked, "
        "and repeated; the DeepFool iteration count of a JAX column is counted in one more untimed run with a "
        "jax.debug.callback in apply_fn (4 + 2 per iteration forward calls per pass over one minibatch).",
    ]
    if "callback" in columns:
        notes.append("callback: torch runs inside XLA's computation through jax.pure_callback; each VJP is one "
                     "torch forward and backward pass (the bridge's custom_vjp), so the Jacobian's K VJPs are K "
                     "torch forward+backward passes where native PyTorch needs one forward.")
    load_end = os.getloadavg()
    machine["loadavg_at_end"] = load_end
    result = {
        "machine": machine,
        "config": {"batch": batch, "blocks_per_stage": blocks, "widths": [16, 32, 64], "num_classes": NUM_CLASSES,
                   "image_shape_nhwc": list(IMAGE_SHAPE), "eps": EPS, "sgd_step_size": SGD_STEP, "beta": BETA,
                   "deepfool_overshoot": OVERSHOOT, "deepfool_max_iter": max_iter, "rows": rows, "columns": columns,
                   "reps": reps, "slow_s": args.slow_s, "quick": quick, "mean": list(CIFAR_MEAN),
                   "std": list(CIFAR_STD), "setup_s": setup_s, "argv": sys.argv[1:] if argv is None else list(argv)},
        "wall_s": time.perf_counter() - wall_start,
        "rows": rows_out,
        "goal": goal,
        "notes": notes,
    }
    print(f"\nload average at start {_load(load_start)}, at end {_load(load_end)}")
    print("\n" + markdown(result))
    if out_path:
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        io.write_json_atomic(out_path, result)
        md_path = os.path.splitext(out_path)[0] + ".md"
        io.write_text_atomic(md_path, markdown(result))
        print(f"wrote {out_path} and {md_path}")
    return result


def _from_torch() -> Optional[Callable]:
    """``jacuap.from_torch`` (or straight from its module when the facade does not export it yet); None if absent."""
    fn = getattr(jacuap, "from_torch", None)
    if fn is None:
        try:
            from jacuap.models.torch_bridge import from_torch as fn
        except ImportError:
            fn = None
    return fn


def _goal(rows_out: Dict[str, Any]) -> Dict[str, Any]:
    """Where each mechanism lands against the 1.5x goal (median ratios)."""
    goal: Dict[str, Any] = {"ratio": GOAL_RATIO}
    parts = []
    for mech in MECHANISMS:
        ratios = {row: out["columns"][mech].get("ratio_median") for row, out in rows_out.items()}
        done = {row: r for row, r in ratios.items() if r is not None}
        worst = max(done.values()) if done else None
        within = [row for row, r in done.items() if r <= GOAL_RATIO]
        goal[mech] = {"ratios": ratios, "worst": worst, "rows_within": within,
                      "all_within": bool(done) and len(within) == len(ratios)}
        if not done:
            parts.append(f"{mech}: not measured")
        else:
            parts.append(f"{mech}: worst {worst:.2f}x ({', '.join(f'{r} {v:.2f}x' for r, v in done.items())}); "
                         + ("within the goal on every row" if goal[mech]["all_within"] else
                            f"within on {len(within)} of {len(ratios)} rows"))
    goal["summary"] = "; ".join(parts) + "."
    return goal


if __name__ == "__main__":
    main()
