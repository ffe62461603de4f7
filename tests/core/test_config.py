"""Tests of memprobe.core.config: user input validated into a StepConfig, or one clear error."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from memprobe.core.config import Setup, StepConfig, make_step_config, nearest_valid_sizes
from memprobe.core.enums import OptimizerName, Precision, Strategy
from memprobe.core.errors import InvalidInputError


def _error(*args: object, **kwargs: object) -> str:
    with pytest.raises(InvalidInputError) as caught:
        make_step_config(*args, **kwargs)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_valid_input_becomes_a_config() -> None:
    """Text sizes, upper-case modes and aliases are normalised into the canonical config."""
    config = make_step_config("MedNeXt-S", ("128", 128, 96), "2", precision="BF16-Mixed", optimizer="SGD")
    assert config == StepConfig(
        arch="mednext",
        patch=(128, 128, 96),
        batch=2,
        precision=Precision.BF16_MIXED,
        optimizer=OptimizerName.SGD,
    )
    assert config.voxels == 128 * 128 * 96
    assert config.label() == "mednext 128x128x96 b2 bf16-mixed"


def test_numpy_sizes_are_accepted() -> None:
    """A patch read from nnU-Net plans (numpy integers) is a valid patch."""
    config = make_step_config("mednext", np.array([64, 128, 128]), np.int64(2))  # type: ignore[arg-type]
    assert config.patch == (64, 128, 128) and config.batch == 2
    assert all(type(size) is int for size in config.patch)


@pytest.mark.parametrize("patch", [(128, 128), (128, 128, 128, 128), ()])
def test_wrong_patch_length(patch: tuple[int, ...]) -> None:
    """A patch needs exactly three sizes; the message says how many were given."""
    message = _error("mednext", patch, 2)
    assert "3 sizes" in message and f"got {len(patch)}" in message


@pytest.mark.parametrize("size", [0, -16, "1.5", "abc", 1.5, None, True, float("nan"), float("inf")])
def test_bad_patch_sizes(size: object) -> None:
    """Zero, negative, fractional, non-numeric and boolean sizes are refused by name."""
    message = _error("mednext", (size, 128, 128), 2)
    assert "positive whole number" in message and repr(size) in message


@pytest.mark.parametrize("batch", [0, -1, "1.5", "abc", 2.5, True])
def test_bad_batch(batch: object) -> None:
    """The batch must be a positive whole number."""
    assert "batch size must be a positive whole number" in _error("mednext", (128, 128, 128), batch)


@pytest.mark.parametrize("channels", [{"in_channels": 0}, {"out_channels": "x"}])
def test_bad_channels(channels: dict[str, object]) -> None:
    """Channel counts are validated like sizes."""
    assert "positive whole number" in _error("mednext", (128, 128, 128), 1, **channels)


def test_absurd_patch_is_refused_before_building() -> None:
    """A patch beyond 1024^3 voxels is refused outright, not measured."""
    assert "more than 1024^3 voxels" in _error("mednext", (10000, 10000, 10000), 1)
    assert make_step_config("mednext", (1024, 1024, 1024), 1).voxels == 1024**3


@pytest.mark.parametrize(
    ("arch", "size", "below", "above"),
    [
        ("mednext", 100, 96, 112),
        ("mednext", 129, 128, 144),
        ("dynunet", 100, 96, 128),
        ("segresnet", 30, 24, 32),
    ],
)
def test_non_divisible_patch_names_nearest_valid_sizes(arch: str, size: int, below: int, above: int) -> None:
    """A size the network cannot take is refused with the valid sizes just below and above it."""
    message = _error(arch, (size, 128, 128), 1)
    assert str(size) in message and f"nearest valid: {below} or {above}" in message


@pytest.mark.parametrize(("size", "divisor"), [(1, 16), (5, 8), (100, 16), (128, 16), (17, 16)])
def test_nearest_valid_sizes_are_multiples_around_size(size: int, divisor: int) -> None:
    """Both suggestions are multiples of the divisor, at least one divisor, bracketing the size."""
    below, above = nearest_valid_sizes(size, divisor)
    assert below % divisor == 0 and above % divisor == 0
    assert divisor <= below and below <= max(size, divisor) and size <= above < size + divisor


def test_too_small_patch() -> None:
    """A patch that leaves one voxel at the bottleneck is refused with the smallest valid size."""
    message = _error("mednext", (16, 128, 128), 1)
    assert "at least 32" in message


@pytest.mark.parametrize(
    ("mode", "value", "choices"),
    [
        ("precision", "fp8", "fp32, fp16-mixed, bf16-mixed"),
        ("optimizer", "adam", "adamw, sgd"),
    ],
)
def test_unknown_modes_list_the_choices(mode: str, value: str, choices: str) -> None:
    """An unknown precision or optimizer is refused with the list of known ones."""
    message = _error("mednext", (128, 128, 128), 1, **{mode: value})
    assert f"unknown {mode} {value!r}" in message and choices in message


@pytest.mark.parametrize("arch", ["basicunet", "unet", "segresnet", "swinunetr", "unetr"])
def test_deep_supervision_needs_a_network_with_heads(arch: str) -> None:
    """Deep supervision on a network without auxiliary heads is refused."""
    message = _error(arch, (128, 128, 128), 1, deep_supervision=True)
    assert "no deep supervision" in message


@pytest.mark.parametrize("arch", ["mednext", "mednext-l", "dynunet", "tests.tiny_models:tiny_net"])
def test_deep_supervision_allowed_where_supported(arch: str) -> None:
    """Networks with heads (and custom models, which may have them) accept deep supervision."""
    assert make_step_config(arch, (128, 128, 128), 1, deep_supervision=True).deep_supervision


def test_custom_model_accepts_any_positive_patch() -> None:
    """A package.module:factory model has no known divisor, so any positive size is valid."""
    config = make_step_config("tests.tiny_models:tiny_net", (2, 6, 10), 1)
    assert config.arch == "tests.tiny_models:tiny_net" and config.patch == (2, 6, 10)


def test_config_helpers_keep_other_fields() -> None:
    """with_batch/with_patch change one field; to_dict is plain data."""
    config = make_step_config("mednext", (64, 64, 64), 1, precision="fp16-mixed", in_channels=4)
    assert config.with_batch(3) == StepConfig(
        arch="mednext", patch=(64, 64, 64), batch=3, precision=Precision.FP16_MIXED, in_channels=4
    )
    assert config.with_patch([32, 64, 96]).patch == (32, 64, 96)
    data = config.to_dict()
    assert (
        data["patch"] == [64, 64, 64] and data["precision"] == "fp16-mixed" and data["optimizer"] == "adamw"
    )
    assert config.label() == "mednext 64x64x64 b1 fp16-mixed c4->2"


def test_step_config_from_dict_inverts_to_dict() -> None:
    config = StepConfig(
        "mednext",
        Precision.BF16_MIXED,
        OptimizerName.SGD,
        4,
        5,
        True,
        "monai",
        True,
        patch=(64, 96, 128),
        batch=3,
    )
    assert StepConfig.from_dict(config.to_dict()) == config
    older = {k: v for k, v in config.to_dict().items() if k not in ("step", "checkpointing")}
    assert StepConfig.from_dict(older) == StepConfig(
        "mednext", Precision.BF16_MIXED, OptimizerName.SGD, 4, 5, True, patch=(64, 96, 128), batch=3
    )


def test_a_setup_is_checked_once_and_a_step_config_is_a_setup_at_a_size() -> None:
    setup = Setup.of("MedNeXt-S", precision="BF16", in_channels="4", deep_supervision=True)
    assert setup == Setup("mednext", Precision.BF16_MIXED, in_channels=4, deep_supervision=True)
    config = setup.at((64, 64, 64), 2)
    assert isinstance(config, Setup) and config.setup == setup and config.batch == 2
    assert config == make_step_config(setup, (64, 64, 64), 2)
    assert replace(setup, precision=Precision.FP32) == Setup.of(setup, precision="fp32")


def test_setup_defaults_to_the_precision_the_gpu_runs_best() -> None:
    from memprobe.core.gpus import GpuInfo

    assert Setup.of("mednext").precision is Precision.BF16_MIXED  # no GPU in view
    assert Setup.of("mednext", gpu=GpuInfo("Tesla V100", 0, (7, 0))).precision is Precision.FP16_MIXED
    assert Setup.of("mednext", gpu=GpuInfo("H100", 0, (9, 0))).precision is Precision.BF16_MIXED
    assert Setup.of("mednext", step="nnunet").precision is Precision.FP16_MIXED  # nnU-Net's own


def test_a_setup_refuses_an_unknown_setting_and_a_changed_world_size_rechooses_the_strategy() -> None:
    with pytest.raises(InvalidInputError, match="unknown setting 'batch_size'"):
        Setup.of("mednext", batch_size=2)
    ddp = Setup.of("mednext", world_size=4)
    assert ddp.strategy is Strategy.DDP
    assert Setup.of(ddp, world_size=1).strategy is Strategy.SINGLE
    with pytest.raises(InvalidInputError, match="no deep supervision"):
        Setup.of("unet", deep_supervision=True)


def test_a_gpu_named_but_not_detected_gets_bf16_by_its_family() -> None:
    from memprobe.core.gpus import GpuInfo

    assert GpuInfo("NVIDIA A100-SXM4-80GB", 0).supports_bf16
    assert GpuInfo("NVIDIA H100 80GB HBM3", 0).supports_bf16
    assert not GpuInfo("Tesla V100-SXM2-32GB", 0).supports_bf16
    assert not GpuInfo("Tesla T4", 0).supports_bf16
