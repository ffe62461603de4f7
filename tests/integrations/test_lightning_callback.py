"""memprobe's Lightning callback on a real Trainer.fit on CPU (trace backend)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("lightning")

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader, TensorDataset

from memprobe.integrations.lightning import PEAK_ALLOWANCE, MemprobeBatchSizeFinder, largest_fitting_batch
from memprobe.planning.overheads import trace_evidence
from tests.tiny_models import TinyNet

# Overheads kept free of gpu_mem (context default, cuBLAS workspace, cuDNN and CUDA-only buffers), plus 48 MiB for tensors.
OVERHEADS = 2**30 + 32 * 2**20 + trace_evidence().cuda_only_allocation_bytes
GPU_MEM = OVERHEADS + 48 * 2**20


class SegmentationModule(LightningModule):
    def __init__(self, batch_size: int = 1) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.net = TinyNet(1, 2)

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        images, labels = batch
        loss = F.cross_entropy(self.net(images), labels)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.AdamW(self.parameters(), lr=1e-3)

    def train_dataloader(self):  # type: ignore[no-untyped-def]
        data = TensorDataset(torch.randn(64, 1, 16, 16, 16), torch.randint(0, 2, (64, 16, 16, 16)))
        return DataLoader(data, batch_size=self.batch_size)


class NoBatchSize(SegmentationModule):
    def __init__(self) -> None:
        super().__init__()
        del self.batch_size

    def train_dataloader(self):  # type: ignore[no-untyped-def]
        data = TensorDataset(torch.randn(4, 1, 16, 16, 16), torch.randint(0, 2, (4, 16, 16, 16)))
        return DataLoader(data, batch_size=2)


def _fit(module: LightningModule, finder: MemprobeBatchSizeFinder) -> Trainer:
    trainer = Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[finder],
    )
    trainer.fit(module)
    return trainer


def test_the_callback_sets_the_batch_then_answers_from_the_database(tmp_path: Path) -> None:
    db = str(tmp_path / "db.sqlite")
    first = MemprobeBatchSizeFinder(gpu_mem=GPU_MEM, db=db)
    module = SegmentationModule()
    trainer = _fit(module, first)
    assert first.traces_run >= 2 and not first.answered_from_database
    from memprobe.store.database import Database

    with Database.open(db) as database:
        [key] = {row[0] for row in database._rows("SELECT module_key FROM module_peaks")}
        assert key.startswith("tests.integrations.test_lightning_callback.SegmentationModule#")
        peaks = database.module_peaks(key, "trace")
    usable = GPU_MEM - OVERHEADS
    expected = largest_fitting_batch(peaks, usable, 8192)
    assert expected is not None and expected > 1
    assert module.batch_size == first.optimal_batch_size == expected
    assert (
        expected in peaks and peaks[expected] * (1 + PEAK_ALLOWANCE) <= usable
    )  # the answer was traced and fits
    per_sample = peaks[2] - peaks[1]
    assert (peaks[1] + per_sample * expected) * (1 + PEAK_ALLOWANCE) > usable  # one more sample would not
    assert trainer.global_step == 1 and trainer.train_dataloader.batch_size == expected

    second = MemprobeBatchSizeFinder(gpu_mem=GPU_MEM, db=db)
    again = SegmentationModule()
    trainer = _fit(again, second)
    assert second.traces_run == 0 and second.answered_from_database
    assert again.batch_size == expected
    assert trainer.global_step == 1  # trainer.fit completed with the batch set


def test_a_module_without_a_batch_size_gets_lightnings_message(tmp_path: Path) -> None:
    finder = MemprobeBatchSizeFinder(gpu_mem=GPU_MEM, db=str(tmp_path / "db.sqlite"))
    with pytest.raises(
        MisconfigurationException, match="Field batch_size not found in `model`, `datamodule`"
    ):
        _fit(NoBatchSize(), finder)


def test_the_line_steps_below_a_batch_measured_over_the_budget() -> None:
    peaks = {1: 100, 2: 150}
    charged = 1 + PEAK_ALLOWANCE
    assert largest_fitting_batch(peaks, charged * 300, 8192) == 5  # 50 + 50 * b <= 300
    assert largest_fitting_batch({**peaks, 5: 400}, charged * 300, 8192) == 4
    assert largest_fitting_batch(peaks, charged * 300, 3) == 3
    assert largest_fitting_batch(peaks, charged * 90, 8192) is None


class OutOfMemoryAbove(SegmentationModule):
    """Lightning's own way to test a finder: a step that 'runs out of memory' above a batch size."""

    limit = 3

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        if batch[0].shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (faked)")
        return super().training_step(batch, batch_idx)


def test_the_real_step_check_steps_down_on_out_of_memory_and_restores_the_weights() -> None:
    from memprobe.core.enums import Precision

    module = OutOfMemoryAbove()
    module.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
    before = {name: value.clone() for name, value in module.state_dict().items()}
    sample = next(iter(module.train_dataloader()))
    finder = MemprobeBatchSizeFinder()
    assert finder._verified_on_cuda(module, sample, Precision.FP32, 6) == OutOfMemoryAbove.limit
    after = module.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)  # the real step was undone
