"""One of two processes of a multi-process run on this machine: ``python two_process_worker.py PORT ID``.

Each process has 2 virtual CPU devices (XLA_FLAGS set by the caller). After ``jax.distributed.initialize``
the 4 devices of both processes form one mesh; every device contributes ``device_index + 1`` and a
``psum`` inside ``shard_map`` must give 1 + 2 + 3 + 4 = 10 on every device. Prints ``psum=10.0``.
"""

from __future__ import annotations

import sys

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jgrad.parallel import make_data_mesh, shard_map


def main() -> None:
    port, process_id = int(sys.argv[1]), int(sys.argv[2])
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    print(f"initialized process {jax.process_index()} of {jax.process_count()}: "
          f"{jax.local_device_count()} local, {jax.device_count()} global devices", flush=True)
    mesh = make_data_mesh()  # all 4 devices of both processes
    local = np.arange(2, dtype=np.float32) + 2 * process_id + 1  # this process's two rows: [1, 2] or [3, 4]
    values = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local, (4,))
    total = jax.jit(shard_map(lambda v: jax.lax.psum(v, "data"), mesh=mesh, in_specs=P("data"), out_specs=P()))(values)
    print(f"psum={float(np.asarray(total.addressable_data(0))[0])}", flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
