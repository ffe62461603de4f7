"""The inference formula: the training terms at the window batch, plus terms that grow with the whole image.

    peak = max over {forward, stitch} of  sum_k  coefficient[segment][k] * term_k(config)

The window terms are the training formula's (``memprobe.formula.terms.term_values``) for a batch of
``window_batch`` windows of ``roi`` voxels: the network's activations and its output for that
batch (MONAI keeps the previous batch's output referenced while the next one runs). The image
terms are the aggregation MONAI allocates for the whole (padded) image when it stitches on the
GPU, and zero when it stitches on the CPU:

- ``image_output``: out_channels x padded image voxels (the output buffer, in the input's dtype);
- ``image_voxels``: padded image voxels (the count map) plus in_channels x image voxels (the
  input image on the GPU, and the padded copy MONAI makes when the window is larger than the
  image). Both are in the input's dtype, so one coefficient serves them; kept apart, they are
  collinear wherever in_channels is 1 and the fit splits them arbitrarily.

nnU-Net's predictor (one window at a time) has its own image terms, since its buffers differ
in dtype: ``image_output`` (``predicted_logits``, half precision, and the boolean of its
infinity check at the end), ``image_voxels`` (``n_predictions``, half) and ``image_input`` (the
padded input, in_channels x voxels, float32), each zero when its results are on the CPU; and
three window terms: ``mirror_input`` and ``mirror_output`` (a flipped window and the running
sum while each mirrored pass runs; zero without mirroring) and ``held_output`` (the previous
window's prediction, still bound while the next one runs when the results are on the GPU).

MONAI's ``buffer_steps`` is not a fitted term: its buffer's size follows from the shapes. MONAI
gathers the windows of ``buffer_steps`` start positions along the last axis into a zeroed buffer
on the GPU (out_channels x padded depth x padded height x the positions' span, in the input's
float32) and writes it to the output when its last window is in. ``buffered_peak`` adds the
largest buffer to each segment's peak where it is held: while stitching always, and during a
forward when a buffer gathers more windows than one batch (stitching on the GPU, a buffer after
the first: the first fills before the whole-image output exists, which is larger). That is the
trace's peak to the byte wherever the batch divides each buffer's windows, stitching on the CPU,
and with more than one buffer on the GPU; with a last, shorter batch in a buffer (the batch before
it holds more outputs) or one whole-image buffer on the GPU it is an upper bound
(``tests/test_inference_buffer_steps.py``).

Pure arithmetic: no torch, no numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from memprobe.core.archs.registry import ArchSpec
from memprobe.core.inference_config import InferenceConfig, Predictor, StitchDevice
from memprobe.formula.terms import active_terms, term_values

if TYPE_CHECKING:
    from memprobe.formula.fit import TermModel

IMAGE_TERMS = ("image_output", "image_voxels")
NNUNET_TERMS = ("mirror_input", "mirror_output", "held_output", "image_output", "image_voxels", "image_input")


def inference_term_names(spec: ArchSpec, predictor: Predictor = Predictor.MONAI) -> tuple[str, ...]:
    """The terms fitted for ``spec``: its active window terms, then the predictor's own."""
    return (*active_terms(spec), *(NNUNET_TERMS if predictor is Predictor.NNUNET else IMAGE_TERMS))


def inference_term_values(
    spec: ArchSpec, config: InferenceConfig, parameter_count: float
) -> dict[str, float]:
    """Each term's value for one inference configuration."""
    window = term_values(
        spec, config.roi, config.window_batch, config.in_channels, config.out_channels, parameter_count
    )
    on_gpu = config.stitch is StitchDevice.GPU
    if config.nnunet:
        return {**window, **_nnunet_terms(config, window, on_gpu)}
    if not on_gpu:
        return {**window, "image_output": 0.0, "image_voxels": 0.0}
    voxels = config.image_voxels
    input_voxels = math.prod(config.image_shape) + (voxels if config.padded else 0)
    return {
        **window,
        "image_output": float(voxels * config.out_channels),
        "image_voxels": float(voxels + input_voxels * config.in_channels),
    }


def _nnunet_terms(config: InferenceConfig, window: dict[str, float], on_gpu: bool) -> dict[str, float]:
    mirrored = 1.0 if config.mirror_axes else 0.0
    voxels = config.image_voxels if on_gpu else 0
    return {
        "mirror_input": mirrored * window["input_voxels"],
        "mirror_output": mirrored * window["output_voxels"],
        "held_output": window["output_voxels"] if on_gpu else 0.0,
        "image_output": float(voxels * config.out_channels),
        "image_voxels": float(voxels),
        "image_input": float(voxels * config.in_channels),
    }


BUFFER_ITEM_BYTES = 4  # MONAI's buffer is in the input's dtype: float32, whatever the autocast


def buffer_bytes(config: InferenceConfig) -> int:
    """The largest of MONAI's ``buffer_steps`` buffers, in bytes (0 without ``buffer_steps``)."""
    return max(_buffer_slab_bytes(config), default=0)


def buffered_peak(segment_peaks: Mapping[str, float], config: InferenceConfig) -> float:
    """The peak of ``config`` from its segments' peaks without a buffer (at its window batch).

    The largest buffer is added while stitching, and to each forward segment the largest buffer
    that gathers more windows than one batch (so it is held while the next batch runs).
    """
    slabs = _buffer_slab_bytes(config)
    held = max(slabs, default=0)
    # Stitching on the GPU, the first buffer fills before the whole-image output and count map
    # exist, and those are larger than any buffer: from the forwards' peaks only a later one counts.
    first = 1 if config.stitch is StitchDevice.GPU else 0
    in_forward = max(
        (
            slab
            for slab, w in list(zip(slabs, config.buffer_windows(), strict=True))[first:]
            if w > config.window_batch
        ),
        default=0,
    )
    return max(
        peak + (in_forward if segment.startswith("forward") else held)
        for segment, peak in segment_peaks.items()
    )


def _buffer_slab_bytes(config: InferenceConfig) -> list[int]:
    depth, height, _ = config.padded_shape
    return [
        BUFFER_ITEM_BYTES * config.out_channels * depth * height * width for width in config.buffer_widths()
    ]


def inference_terms(spec: ArchSpec, predictor: Predictor = Predictor.MONAI) -> TermModel:
    """The inference terms as the fit takes them (``memprobe.formula.fit.TermModel``)."""
    from memprobe.formula.fit import TermModel
    from memprobe.formula.terms import predict_parameter_count

    def predicted(m: Any, model: Any) -> dict[str, float]:
        c = m.config
        return inference_term_values(
            spec, c, predict_parameter_count(model, spec, c.roi, c.in_channels, c.out_channels)
        )

    return TermModel(
        inference_term_names(spec, predictor),
        lambda m: inference_term_values(spec, m.config, float(m.parameter_count or 0)),
        predicted,
    )
