"""The part of PyTorch Connectomics' ``Config`` that auto-planning reads and fills.

``OmegaConf.structured(Config())`` gives the config its "API Usage" examples start from;
every planned value starts unset (None), so ``auto_plan_config`` fills it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SystemConfig:
    auto_plan: bool = False
    print_auto_plan: bool = True
    num_gpus: int | None = None
    num_workers: int | None = None


@dataclass
class ModelConfig:
    architecture: str | None = None  # None: the planner's default network, MedNeXt
    mednext_size: str = "S"
    in_channels: int = 1
    out_channels: int = 2
    deep_supervision: bool = False


@dataclass
class DataConfig:
    target_spacing: list[float] | None = None
    median_shape: list[int] | None = None
    patch_size: list[int] | None = None
    batch_size: int | None = None


@dataclass
class TrainingConfig:
    precision: str | None = None
    accumulate_grad_batches: int | None = None


@dataclass
class OptimizationConfig:
    lr: float | None = None


@dataclass
class Config:
    """Sections and keys as PyTorch Connectomics names them (``system``, ``model``, ``data``, ...)."""

    system: SystemConfig = field(default_factory=SystemConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
