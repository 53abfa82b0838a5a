"""Checkpoint/resume survives a killed run: SIGKILL after step N, resume, same weights at step K.

The killed run is a real subprocess. To kill it at a known step (not wherever a race leaves it), a
test-only callback writes a marker right after the step-N checkpoint is on disk and then blocks;
the test waits for the marker and sends SIGKILL. The uninterrupted and the resumed runs train in
this process from the same script, so all three share one code path.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch  # a hard dependency: imported, never skipped

K_STEPS = 20  # the whole run: ~2.5 epochs of ~8 batches, so the kill lands mid-epoch 1
KILL_AT = 12  # a checkpoint step (every 4): batch 4 of the second epoch
EVERY = 4

SCRIPT = '''
"""Train the tiny BERT for {k} steps with persistent checkpoints (written by test_resume.py)."""
import sys
import time
from pathlib import Path

import pytorch_lightning as pl

from lightning_modules.demand import BertDemand
from mlops.models import PricingData
from pricing.simulator import SimConfig, simulate
from pricing.split import time_split

CONFIG = {{
    "text_encoder": "tiny", "d_model": 32, "n_layers": 1, "n_heads": 2, "max_len": 16,
    "dropout": 0.2, "batch_size": 256, "lr": 3e-3, "warmup_steps": 4, "max_epochs": 10,
    "max_steps": {k}, "patience": 10, "checkpoint_every_n_steps": {every},
}}


class HangAt(pl.Callback):
    """After the step-n checkpoint is written, drop a marker and block until killed."""

    def __init__(self, step: int, marker: Path) -> None:
        self.step, self.marker = step, marker

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            self.marker.write_text(str(self.step))
            time.sleep(600)


def data():
    t = simulate(SimConfig(n_users=150, n_items=40, n_days=21, seed=7)).tables
    sp = time_split(t["offers"])

    def part(idx):
        return PricingData(t["offers"].iloc[idx].reset_index(drop=True), t["items"], t["events"])

    return part(sp.train), part(sp.valid)


def run(ckdir: str, hang_at: int = -1, marker: str = "") -> BertDemand:
    train, valid = data()
    callbacks = [HangAt(hang_at, Path(marker))] if hang_at > 0 else []
    trainer = {{"accelerator": "cpu", "devices": 1, "callbacks": callbacks, "deterministic": True}}
    model = BertDemand({{**CONFIG, "checkpoint_dir": ckdir}}, seed=3, trainer=trainer)
    model.diagnostics = model.fit(train, valid)
    return model


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]), sys.argv[3])
'''


def _script(tmp_path: Path) -> tuple[Path, ModuleType]:
    path = tmp_path / "run_bert.py"
    path.write_text(SCRIPT.format(k=K_STEPS, every=EVERY))
    spec = importlib.util.spec_from_file_location("run_bert", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return path, mod


def _weights(ckpt: Path) -> dict[str, Any]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_weights(tmp_path: Path) -> None:
    path, script = _script(tmp_path)
    killed_dir, marker = tmp_path / "killed", tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    proc = subprocess.Popen(
        [sys.executable, str(path), str(killed_dir), str(KILL_AT), str(marker)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"training exited early: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the killed run never reached its checkpoint"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # Limits first: the kill left a complete checkpoint at step N, mid-epoch, and nothing later.
    killed_ckpt = torch.load(killed_dir / "last.ckpt", map_location="cpu", weights_only=False)
    assert killed_ckpt["global_step"] == KILL_AT
    assert killed_ckpt["PriceDataModule"]["epoch"] == 1
    assert killed_ckpt["PriceDataModule"]["batches"] > 0
    assert "rng_states" in killed_ckpt
    assert not (killed_dir / "last.ckpt.tmp").exists()

    resumed = script.run(str(killed_dir))
    full = script.run(str(tmp_path / "full"))
    assert full.diagnostics["steps"] == K_STEPS and resumed.diagnostics["steps"] == K_STEPS

    # Golden: the resumed run ends where the uninterrupted one does, weights and best model alike.
    end_full = _weights(tmp_path / "full" / "last.ckpt")
    end_resumed = _weights(killed_dir / "last.ckpt")
    assert end_full.keys() == end_resumed.keys()
    for name, value in end_full.items():
        assert torch.allclose(value, end_resumed[name], rtol=1e-5, atol=1e-7), name
    # ...and they moved away from the step-N weights (the resume really trained).
    assert any(not torch.equal(v, killed_ckpt["state_dict"][k]) for k, v in end_full.items())
    best_full, best_resumed = full.module.state_dict(), resumed.module.state_dict()
    for name, value in best_full.items():
        assert torch.allclose(value, best_resumed[name], rtol=1e-5, atol=1e-7), name
