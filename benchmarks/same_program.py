"""Do two checkouts compile the same program?  The SGD-UAP epoch of the CNN, instruction by instruction.

    python benchmarks/same_program.py /tmp/jacuap_before .

For each tree (a checkout of jacuap, e.g. ``git worktree add DIR COMMIT``),
a subprocess imports that tree's jacuap, compiles ``attacks.sgd_uap_epoch``
for the Fashion-MNIST CNN at the speed table's shapes (10,000 inputs, batch
128, l_inf) and prints the optimized HLO with its source locations removed
(file names, lines and stack frames differ between trees without changing
what runs).  Exit 0 and "same" when the instructions are identical: a timing
difference between the trees is then noise, not the change.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import subprocess
import sys

_PROGRAM = r'''
import sys
sys.path.insert(0, sys.argv[1])
import jax, jax.numpy as jnp
import jacuap
from jacuap import attacks, models
assert jacuap.__file__.startswith(sys.argv[1]), jacuap.__file__
model = models.create_model("cnn", 10, (0.28,), (0.35,))
params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
f32 = lambda a: jnp.asarray(a, jnp.float32)
args = (model.apply, None, params, jnp.zeros((28, 28, 1)), jnp.zeros((10000, 28, 28, 1)),
        jnp.zeros((10000,), jnp.int32), jax.random.PRNGKey(0), f32(0.1), f32(0.01), f32(12.0))
print(attacks.sgd_uap_epoch.lower(*args, norm="linf", batch_size=128, targeted=False).compile().as_text())
'''


def instructions(tree: str) -> list:
    """The compiled program of ``tree`` without source locations, one instruction a line."""
    tree = os.path.abspath(tree)
    text = subprocess.run([sys.executable, "-c", _PROGRAM, tree], cwd="/", capture_output=True, text=True,
                          check=True).stdout
    text = re.sub(r", metadata=\{[^}]*\}", "", text)
    lines = [line for line in text.splitlines() if not re.match(r"^\s*\d+ [{\"]", line)]  # location tables
    return [re.sub(r",? ?stack_frame_id=\d+", "", line) for line in lines]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or not all(os.path.isfile(os.path.join(t, "jacuap", "__init__.py")) for t in argv):
        print("usage: same_program.py TREE_A TREE_B (two jacuap checkouts)", file=sys.stderr)
        return 2
    a, b = (instructions(t) for t in argv)
    digest = lambda lines: hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
    if a == b:
        print(f"same: {len(a)} lines, sha256 {digest(a)}")
        return 0
    diff = list(difflib.unified_diff(a, b, argv[0], argv[1], lineterm="", n=0))
    print(f"different: {len(a)} vs {len(b)} lines ({digest(a)} vs {digest(b)})")
    print("\n".join(diff[:40]))
    return 1


if __name__ == "__main__":
    sys.exit(main())
