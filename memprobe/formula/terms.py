"""The analytic memory formula: terms from the architecture and sizes, evaluated without torch.

The seed planner sums per-stage feature maps, deep-supervision heads, parameters, optimizer
state and a workspace share with hand-picked factors. memprobe keeps those terms but fits
their factors to measurements, separately for each segment of the step, because the peak of
a step is the largest of its segments' peaks:

    peak = max over segments of  sum_k  coefficient[segment][k] * term_k(config)

A segment is a phase (forward with loss, backward, optimizer) or, where the backend records
them (trace and cpu), a window of a phase's ops: the same ops at every size, so each
window's peak is linear in the terms even where a whole phase's peak is not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from memprobe.core.archs.registry import ArchSpec

TERMS = (
    "constant",
    "parameters",
    "feature_maps",
    "input_voxels",
    "output_voxels",
    "attention",
    "window_features",
    "window_attention",
)
PARAMETER_TERMS = ("constant", "in_channels", "out_channels", "tokens")


def stage_voxels(patch: Sequence[int], stages: int, strides: Sequence[Sequence[int]] = ()) -> list[int]:
    """Voxels of each resolution stage: per-axis ``strides`` when given, else halving every dimension."""
    if not strides:
        return [math.prod(max(1, size >> stage) for size in patch) for stage in range(stages)]
    voxels, sizes = [], list(patch)
    for stage in range(stages):
        stride = strides[stage] if stage < len(strides) else (2, 2, 2)
        sizes = [max(1, size // s) for size, s in zip(sizes, stride, strict=True)]
        voxels.append(math.prod(sizes))
    return voxels


def active_terms(spec: ArchSpec) -> list[str]:
    """The terms that can be non-zero for this architecture (the others are not fitted)."""
    inactive = set()
    if not spec.attention_token_volume:
        inactive.add("attention")
    if not spec.attention_window:
        inactive |= {"window_features", "window_attention"}
    return [term for term in TERMS if term not in inactive]


def window_terms(spec: ArchSpec, patch: Sequence[int], batch: int) -> tuple[float, float]:
    """Swin's padded grids: feature voxels, and attention entries, of every windowed stage.

    A stage pads each dimension to a whole number of windows (a dimension smaller than the
    window shrinks the window instead), so its memory follows the padded grid, not the patch.
    """
    features = attention = 0.0
    for factor, channels, heads in spec.window_stages:
        sizes = [max(1, size // factor) for size in patch]
        windows = [min(size, spec.attention_window) for size in sizes]
        padded = math.prod(-(-size // window) * window for size, window in zip(sizes, windows, strict=True))
        features += batch * padded * channels
        attention += batch * padded * heads * math.prod(windows)
    return features, attention


def attention_tokens(spec: ArchSpec, patch: Sequence[int]) -> float:
    return math.prod(patch) / spec.attention_token_volume if spec.attention_token_volume else 0.0


def predict_parameter_count(
    model: Mapping[str, float], spec: ArchSpec, patch: Sequence[int], in_channels: int, out_channels: int
) -> float:
    """Parameters as a linear function of channels and tokens (UNETR's position embedding)."""
    values = {
        "constant": 1.0,
        "in_channels": float(in_channels),
        "out_channels": float(out_channels),
        "tokens": attention_tokens(spec, patch),
    }
    return sum(model.get(term, 0.0) * values[term] for term in PARAMETER_TERMS)


def term_values(
    spec: ArchSpec,
    patch: Sequence[int],
    batch: int,
    in_channels: int,
    out_channels: int,
    parameter_count: float,
    deep_supervision: bool = False,
) -> dict[str, float]:
    """Each formula term for one configuration (bytes-scale quantities, before coefficients).

    feature_maps is the seed's sum over stages of voxels times channel width; output_voxels
    counts the logits of every output head (deep-supervision heads at their own resolution);
    attention is the token-count squared times heads of global self-attention;
    window_features and window_attention follow Swin's padded window grids.
    """
    voxels = math.prod(patch)
    stages = (
        stage_voxels(patch, len(spec.stage_features), spec.stage_strides) if spec.stage_features else [voxels]
    )
    widths = spec.stage_features or (1,)
    heads = spec.deep_supervision_heads if deep_supervision else 0
    head_voxels = sum(stages[: heads + 1]) if len(stages) > heads else voxels
    tokens = attention_tokens(spec, patch)
    window_features, window_attention = window_terms(spec, patch, batch)
    return {
        "constant": 1.0,
        "parameters": float(parameter_count),
        "feature_maps": float(batch * sum(v * w for v, w in zip(stages, widths, strict=True))),
        "input_voxels": float(batch * voxels * in_channels),
        "output_voxels": float(batch * head_voxels * out_channels),
        "attention": float(batch * spec.attention_heads * tokens * tokens),
        "window_features": window_features,
        "window_attention": window_attention,
    }


def evaluate(coefficients: Mapping[str, Mapping[str, float]], terms: Mapping[str, float]) -> float:
    """The predicted peak: the largest phase sum."""
    return max(
        sum(phase_coefficients.get(term, 0.0) * value for term, value in terms.items())
        for phase_coefficients in coefficients.values()
    )


# A reserve fitted as the gap above the allocated peak is stored under this segment name; a
# reserve fitted directly is stored like allocated coefficients (one set per segment).
ABOVE_ALLOCATED = "above_allocated"


def evaluate_reserved(
    reserved: Mapping[str, Mapping[str, float]],
    allocated: Mapping[str, Mapping[str, float]],
    terms: Mapping[str, float],
) -> float:
    """The predicted peak reserve, never below the predicted allocated peak."""
    base = evaluate(allocated, terms)
    if ABOVE_ALLOCATED in reserved:
        return base + sum(reserved[ABOVE_ALLOCATED].get(term, 0.0) * value for term, value in terms.items())
    return max(evaluate(reserved, terms), base)
