"""`slot_rows`: the row of every CSR slot, as a binary search over ``row_ptr`` would give it."""

import jax
import jax.numpy as jnp
import numpy as np

from jgrad._src import _plan


def test_slot_rows_equals_a_binary_search_with_empty_rows_and_padding_slots():
    rng = np.random.default_rng(0)
    degrees = rng.integers(0, 4, size=40)
    degrees[[0, 7, 8, 39]] = 0  # empty rows at the start, in a run and at the end
    row_ptr = np.concatenate([[0], np.cumsum(degrees)]).astype(np.int32)
    n_slots = int(row_ptr[-1]) + 5  # slots after row_ptr[-1] are padding: row R
    expected = np.searchsorted(row_ptr, np.arange(n_slots), side="right") - 1
    got = jax.jit(_plan.slot_rows, static_argnums=1)(jnp.asarray(row_ptr), n_slots)
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(got), expected)
    assert np.all(np.asarray(got)[row_ptr[-1]:] == len(degrees))
