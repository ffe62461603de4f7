"""nnU-Net v2's sliding-window prediction, reproduced statement for statement so it runs on fake tensors.

Reproduces ``nnUNetPredictor._internal_predict_sliding_window_return_logits`` and
``_internal_maybe_mirror_and_predict`` of nnunetv2 2.8.1 (``nnunetv2/inference/
predict_from_raw_data.py``). nnU-Net's own code cannot run on fake tensors or under a tracker:

- a producer thread clones each window to the device through a ``Queue(maxsize=2)``; a dispatch
  mode (the tracker, fake tensors) is per thread, so those clones would be missed. Here
  :class:`WindowQueue` produces them in the consumer's thread, keeping the queue as full as the
  thread does when it runs ahead of the network (the worst case, and the usual one): after each
  ``get``, two windows queued and a third held by the blocked producer;
- ``compute_gaussian`` goes through numpy and scipy: it is called before tracking, on the
  results device, and counted as live from the start;
- the check for infinities reads a value: its tensors are made and counted, its answer read only
  on real tensors.

Everything else (the order of allocations, which variables hold what and when they are
rebound, the half-precision ``predicted_logits`` and ``n_predictions``, the in-place division)
is nnU-Net's; ``tests/test_inference_nnunet.py`` runs both on real CPU tensors and compares
their output and tracked peak. ``predict_sliding_window_return_logits`` around it pads the image
on the host (here: the image is made at the padded shape), autocasts to fp16 on CUDA (the
runner's autocast), and on a failure on the device retries with the results on the CPU: a plan
says whether that fallback would be needed (``perform_everything_on_device`` False).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import torch

QUEUED = 2  # nnU-Net's Queue(maxsize=2)
WINDOWS_AHEAD = QUEUED + 1  # and the window the blocked producer holds
_END = "end"


def sliding_window_slicers(
    roi: Sequence[int], image_shape: Sequence[int], tile_step_size: float
) -> list[Any]:
    """nnU-Net's own ``_internal_get_sliding_window_slicers`` on a minimally configured predictor."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = SimpleNamespace(
        configuration_manager=SimpleNamespace(patch_size=list(roi)),
        tile_step_size=tile_step_size,
        verbose=False,
    )
    return nnUNetPredictor._internal_get_sliding_window_slicers(predictor, tuple(image_shape))  # type: ignore[arg-type]


def gaussian_map(roi: Sequence[int], device: torch.device) -> torch.Tensor:
    """nnU-Net's importance map, as its sliding window asks for it (sigma 1/8, scaled to 10, fp16)."""
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    return compute_gaussian(tuple(roi), sigma_scale=1.0 / 8, value_scaling_factor=10, device=device)


class WindowQueue:
    """nnU-Net's producer thread and its queue, in one thread: windows are cloned on ``get``.

    Each ``get`` returns the next item and then refills the queue to ``WINDOWS_AHEAD`` items, as
    the producer does while the consumer still holds the previous window.
    """

    def __init__(self, data: torch.Tensor, slicers: Sequence[Any], device: torch.device) -> None:
        self._items = self._produce(data, slicers, device)
        self._queued: deque[Any] = deque()

    @staticmethod
    def _produce(data: torch.Tensor, slicers: Sequence[Any], device: torch.device) -> Iterator[Any]:
        for s in slicers:  # nnU-Net's producer, line for line
            yield (torch.clone(data[s][None], memory_format=torch.contiguous_format).to(device), s)
        yield _END

    def get(self) -> Any:
        item = self._queued.popleft() if self._queued else next(self._items)
        while len(self._queued) < WINDOWS_AHEAD and (ahead := next(self._items, None)) is not None:
            self._queued.append(ahead)
        return item

    def task_done(self) -> None:
        """Nothing to count: the queue's bookkeeping."""


def mirror_and_predict(
    network: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mirror_axes: Sequence[int]
) -> torch.Tensor:
    """``_internal_maybe_mirror_and_predict``: the window, then each combination of flips, summed and averaged."""
    prediction = network(x)
    if mirror_axes:
        axes = [m + 2 for m in mirror_axes]
        combinations = [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
        for flipped in combinations:
            prediction += torch.flip(network(torch.flip(x, flipped)), flipped)
        prediction /= len(combinations) + 1
    return prediction


def predict_sliding_window(
    network: Callable[[torch.Tensor], torch.Tensor],
    data: torch.Tensor,
    slicers: Sequence[Any],
    *,
    classes: int,
    gaussian: torch.Tensor | None,
    compute: torch.device,
    results: torch.device,
    mirror_axes: Sequence[int] = (),
    check_values: bool = True,
    on_finish: Callable[[], None] | None = None,
) -> torch.Tensor:
    """``_internal_predict_sliding_window_return_logits`` with ``data`` already on ``results``.

    ``gaussian`` None is ``use_gaussian`` False (each window weighs 1). ``check_values`` False
    skips reading the infinity check's answer (fake and meta tensors have none). ``on_finish``
    is called after the last window, before the division and the check.
    """
    predicted_logits = n_predictions = prediction = workon = None
    queue = WindowQueue(data, slicers, compute)
    predicted_logits = torch.zeros((classes, *data.shape[1:]), dtype=torch.half, device=results)
    n_predictions = torch.zeros(data.shape[1:], dtype=torch.half, device=results)
    weight: torch.Tensor | int = 1 if gaussian is None else gaussian
    while True:
        item = queue.get()
        if item == _END:
            queue.task_done()
            break
        workon, sl = item
        prediction = mirror_and_predict(network, workon, mirror_axes)[0].to(results)
        if gaussian is not None:
            prediction *= weight
        predicted_logits[sl] += prediction
        n_predictions[sl[1:]] += weight
        queue.task_done()
    if on_finish is not None:
        on_finish()
    torch.div(predicted_logits, n_predictions, out=predicted_logits)
    infinite = torch.any(torch.isinf(predicted_logits))
    if check_values and infinite:
        raise RuntimeError("Encountered inf in predicted array (nnU-Net's check)")
    return predicted_logits
