"""jacuap.batching: chunk arithmetic, masks, and the two loop forms agree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jacuap import batching


def _sum_rows(static, carry, args, xc, mask):
    # static: a scale, args: an offset; sum over unmasked rows of static * (x + offset)
    return carry + jnp.sum(static * (xc + args) * mask[:, None], axis=0)


@pytest.mark.parametrize("n,b", [(1, 1), (7, 3), (8, 4), (5, 100), (10, 1)])
@pytest.mark.parametrize("loop", batching.LOOPS)
def test_reduce_chunks_counts_every_row_once(n, b, loop):
    x = jnp.arange(n * 2, dtype=jnp.float32).reshape(n, 2)
    out = batching.reduce_chunks(_sum_rows, 2.0, jnp.zeros(2), jnp.float32(1.0), x, b, loop=loop)
    np.testing.assert_allclose(out, 2.0 * np.sum(np.asarray(x) + 1.0, axis=0))


def test_scan_form_runs_under_jit_and_host_form_refuses_tracers():
    x = jnp.ones((6, 2))
    f = jax.jit(lambda x: batching.reduce_chunks(_sum_rows, 1.0, jnp.zeros(2), jnp.float32(0.0), x, 4))
    np.testing.assert_allclose(f(x), [6.0, 6.0])
    g = jax.jit(lambda x: batching.reduce_chunks(_sum_rows, 1.0, jnp.zeros(2), jnp.float32(0.0), x, 4, loop="host"))
    with pytest.raises(ValueError, match="concrete"):
        g(x)
    with pytest.raises(ValueError, match="loop"):
        batching.reduce_chunks(_sum_rows, 1.0, jnp.zeros(2), 0.0, x, 4, loop="python")


_TRACES = []


def _traced_sum(static, carry, args, xc, mask):
    _TRACES.append(xc.shape)  # runs only while JAX traces (compiles) the chunk step
    return _sum_rows(static, carry, args, xc, mask)


def test_host_form_compiles_once_for_all_chunks_and_calls():
    x = jnp.ones((10, 2))
    for _ in range(3):
        out = batching.reduce_chunks(_traced_sum, 1.0, jnp.zeros(2), jnp.float32(0.0), x, 3, loop="host")
    np.testing.assert_allclose(out, [10.0, 10.0])
    assert len(_TRACES) == 1


def test_chunk_at_masks_the_overlap_of_the_last_chunk():
    x = jnp.arange(5.0)
    xc, mask = batching.chunk_at(x, 2, 2)
    assert xc.tolist() == [3.0, 4.0] and mask.tolist() == [0.0, 1.0]


def test_index_batches_cover_each_index_once():
    idx, mask = batching.index_batches(jnp.array([4, 2, 0, 1, 3]), 2, jnp.float32)
    used = np.asarray(idx)[np.asarray(mask) > 0]
    assert sorted(used.tolist()) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("batch_size,multiple", [(2, 1), (3, 1), (100, 1), (2, 4)])
def test_map_batches_pads_and_drops(batch_size, multiple):
    calls = []

    def step(xb):
        calls.append(xb.shape[0])
        return xb * 3

    out = batching.map_batches(step, np.arange(7.0), batch_size, multiple)
    np.testing.assert_array_equal(out, np.arange(7.0) * 3)
    assert len(set(calls)) == 1  # one shape: one compilation for a jitted step


def test_map_batches_rejects_empty_sets():
    with pytest.raises(ValueError, match="empty"):
        batching.map_batches(lambda xb: xb, np.zeros((0, 3)), 4)


def test_arithmetic():
    assert [batching.ceil_div(n, 4) for n in (0, 1, 4, 5)] == [0, 1, 1, 2]
    assert batching.effective_batch_size(0, 10) == 1
    assert batching.effective_batch_size(7, 3, multiple=2) == 4
    assert batching.pad_rows(np.ones((3, 2)), 2).shape == (3, 2)


def test_eager_loop_is_backend_aware_and_overridable(monkeypatch):
    monkeypatch.delenv(batching.LOOP_ENV, raising=False)
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert batching.eager_loop() == "host"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert batching.eager_loop() == "scan"
    monkeypatch.setenv(batching.LOOP_ENV, "host")
    assert batching.eager_loop() == "host"
    monkeypatch.setenv(batching.LOOP_ENV, "fast")
    with pytest.raises(ValueError, match="JACUAP_LOOP"):
        batching.eager_loop()


def test_the_convolution_is_backend_aware_and_overridable(monkeypatch):
    from jacuap import backend
    from jacuap.models import conv

    monkeypatch.delenv(backend.CONV_ENV, raising=False)
    for name, kind in (("cpu", "jacuap"), ("gpu", "jacuap"), ("tpu", "lax")):
        monkeypatch.setattr(jax, "default_backend", lambda name=name: name)
        assert backend.conv_kind() == kind
    monkeypatch.setenv(backend.CONV_ENV, "lax")
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert backend.conv_kind() == "lax"
    used = []
    monkeypatch.setattr(jax.lax, "conv_general_dilated", lambda *a, **k: used.append("lax") or "out")
    assert conv.backend_conv("x", "w", (1, 1), "VALID") == "out" and used == ["lax"]
    monkeypatch.setenv(backend.CONV_ENV, "fft")
    with pytest.raises(ValueError, match="JACUAP_CONV must be one of jacuap, lax"):
        backend.conv_kind()
