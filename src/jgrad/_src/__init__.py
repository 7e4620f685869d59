"""Private internals shared by several jgrad packages: the graph's execution plan and backend choice, size limits.

Nothing here is public API: import the public names from `jgrad.ops` and `jgrad.graph`.
"""
