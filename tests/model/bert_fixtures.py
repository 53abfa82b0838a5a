"""Model-test settings shared by conftest.py and the test modules (imported as `bert_fixtures`)."""

from __future__ import annotations

from typing import Any

from pricing.simulator import SimConfig

# The tiny random-init text encoder and a small network: seconds on 2 CPU cores.
TINY_BERT: dict[str, Any] = {
    "text_encoder": "tiny",
    "d_model": 32,
    "n_layers": 1,
    "n_heads": 2,
    "max_len": 16,
    "batch_size": 128,
    "lr": 3e-3,
    "max_epochs": 6,
    "patience": 3,
    "warmup_steps": 10,
}


# Learning who is price-sensitive from behaviour needs more offers than the tiny market has
# (~2k training offers there; ~9k here); still a few seconds of training.
# The classic market: its discount-history signal is what the behaviour tests are about (on the
# realistic market's seed 7 the tiny BERT learns too little sensitivity spread to test it).
SMALL = SimConfig.preset("classic", n_users=400, n_items=40, n_days=28, seed=7)
