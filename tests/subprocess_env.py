"""The environment of a program a test starts on one CPU device.

``make test`` runs ``tests/test_parallel.py`` with 8 forced host devices; a
program started from such a process must not inherit that flag, but it must
keep the others of ``XLA_FLAGS`` (``tests/conftest.py``'s compiler flags):
a test comparing the program's result bitwise with one computed in the test
process needs both compiled the same way.
"""

import os


def one_device_env(**extra: str) -> dict:
    """``os.environ`` plus ``extra``, with ``JAX_PLATFORMS=cpu`` and no forced host device count."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags)
    return env
