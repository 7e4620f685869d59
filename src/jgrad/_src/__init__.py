"""Private internals shared by several jgrad packages; each package imports these from here only.

- `_op`: `Op`, a differentiable kernel in every mode of JAX (the ops and the sharded ops build on it);
- `_messages`: message and edge op names, broadcasting and their partial derivatives;
- `_plan`: the graph's execution plan, the backend registry and the backend choice;
- `_checks`: input validators and the checks that `jgrad.checked` adds inside compiled code;
- `_degree`: degree sums hidden from constant folding, and safe inverse powers of degrees;
- `_loops`: the edge mask of the self loops that `add_self_loops` appends;
- `_taps`: the markers that structure gradients (`jgrad.adjacency_grad`) find in a traced program;
- `_types`: array aliases, reducer and tie-rule names, and the check for named choices;
- `_limits`, `_pyg_names`: int32 size limits, and PyG attribute names understood by the data types.

Nothing here is public API: import the public names from `jgrad`, `jgrad.ops` and `jgrad.graph`.
"""
