"""A small training run for the crash tests: ``python train_driver.py WORKDIR SLEEP_SECONDS``.

Trains a GCN on the karate club for 60 epochs over two seeds, with a checkpoint every 10 epochs, and
writes the final parameters to ``WORKDIR/final.npz``. ``SLEEP_SECONDS`` > 0 pauses after each chunk (and
its checkpoint), so that a test can kill the process part-way through; it does not change the results.
"""

from __future__ import annotations

import sys
import time

import jax
import numpy as np

import jgrad
from jgrad.train import EarlyStopping, fit, make_optimizer


def main(workdir: str, pause: float) -> None:
    data = jgrad.data.karate_club()
    result = fit(
        lambda rngs: jgrad.nn.GCN(data.n_features, 16, data.n_classes, rngs=rngs),
        data,
        make_optimizer(0.01, 5e-4),
        seeds=2,
        epochs=60,
        early_stopping=EarlyStopping("none"),
        log_every=10,
        checkpoint_every=10,
        workdir=workdir,
        progress=False,
        on_chunk=(lambda epoch, state: time.sleep(pause)) if pause > 0 else None,
    )
    leaves = jax.tree.leaves(jax.device_get(result.state.params))
    np.savez(f"{workdir}/final.npz", *[np.asarray(leaf) for leaf in leaves])
    print(f"finished {result.epochs_run} epochs", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
