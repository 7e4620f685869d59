"""The size limit shared by every package: jgrad indexes nodes, edges and segments with int32."""

MAX_SIZE = 2**31 - 1
"""The largest node count, edge count, padded size or segment count jgrad accepts (int32 indexing)."""
