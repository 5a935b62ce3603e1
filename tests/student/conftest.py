from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory):
    """32 training images (8 per class), 64 px: enough to see learning, small enough for CI."""
    from shared.synth import generate

    root = tmp_path_factory.mktemp("synth-small")
    generate(root, n_train_per_class=8, n_val_per_class=4, n_shifted_per_class=4, seed=0)
    return root
