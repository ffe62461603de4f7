"""The inference formula: the training terms at the window batch, plus terms that grow with the whole image.

    peak = max over {forward, stitch} of  sum_k  coefficient[segment][k] * term_k(config)

The window terms are the training formula's (``memprobe.formula.term_values``) for a batch of
``window_batch`` windows of ``roi`` voxels: the network's activations and its output for that
batch (MONAI keeps the previous batch's output referenced while the next one runs). The image
terms are the aggregation MONAI allocates for the whole (padded) image when it stitches on the
GPU, and zero when it stitches on the CPU:

- ``image_output``: out_channels x padded image voxels (the output buffer, in the input's dtype);
- ``image_voxels``: padded image voxels (the count map) plus in_channels x image voxels (the
  input image on the GPU, and the padded copy MONAI makes when the window is larger than the
  image). Both are in the input's dtype, so one coefficient serves them; kept apart, they are
  collinear wherever in_channels is 1 and the fit splits them arbitrarily.

Pure arithmetic: no torch, no numpy.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from memprobe.archs.registry import ArchSpec
from memprobe.formula import active_terms, term_values
from memprobe.inference.config import InferenceConfig, StitchDevice

if TYPE_CHECKING:
    from memprobe.fit import TermModel

IMAGE_TERMS = ("image_output", "image_voxels")


def inference_term_names(spec: ArchSpec) -> tuple[str, ...]:
    """The terms fitted for ``spec``: its active window terms, then the image terms."""
    return (*active_terms(spec), *IMAGE_TERMS)


def inference_term_values(
    spec: ArchSpec, config: InferenceConfig, parameter_count: float
) -> dict[str, float]:
    """Each term's value for one inference configuration."""
    window = term_values(
        spec, config.roi, config.window_batch, config.in_channels, config.out_channels, parameter_count
    )
    on_gpu = config.stitch is StitchDevice.GPU
    if not on_gpu:
        return {**window, "image_output": 0.0, "image_voxels": 0.0}
    voxels = config.image_voxels
    input_voxels = math.prod(config.image_shape) + (voxels if config.padded else 0)
    return {
        **window,
        "image_output": float(voxels * config.out_channels),
        "image_voxels": float(voxels + input_voxels * config.in_channels),
    }


def inference_terms(spec: ArchSpec) -> TermModel:
    """The inference terms as the fit takes them (``memprobe.fit.TermModel``)."""
    from memprobe.fit import TermModel
    from memprobe.formula import predict_parameter_count

    def predicted(m: Any, model: Any) -> dict[str, float]:
        c = m.config
        return inference_term_values(
            spec, c, predict_parameter_count(model, spec, c.roi, c.in_channels, c.out_channels)
        )

    return TermModel(
        inference_term_names(spec),
        lambda m: inference_term_values(spec, m.config, float(m.parameter_count or 0)),
        predicted,
    )
