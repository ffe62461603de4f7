"""CUDA's autocast cast lists, applied to CPU (or fake CPU) tensors.

``torch.autocast("cpu")`` casts a different set of ops than CUDA does: on CPU, group_norm,
layer_norm, softmax and sum stay in bf16/fp16, while CUDA runs them in float32 and so keeps
float32 activations. To measure what a CUDA AMP step would hold, the trace and cpu backends
apply CUDA's lists (from the PyTorch AMP documentation) at the torch-function level, above
autograd, so the casts are recorded in the graph exactly as autocast's are.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

# "CUDA Ops that can autocast to float16" (torch.amp documentation), plus einsum: autocast
# casts the bmm it lowers to, which a torch-function-level emulation does not see.
LOWER_PRECISION_OPS = frozenset(
    {
        "einsum",
        "__matmul__",
        "addbmm",
        "addmm",
        "addmv",
        "addr",
        "baddbmm",
        "bmm",
        "chain_matmul",
        "multi_dot",
        "conv1d",
        "conv2d",
        "conv3d",
        "conv_transpose1d",
        "conv_transpose2d",
        "conv_transpose3d",
        "linear",
        "matmul",
        "mm",
        "mv",
        "prelu",
        "scaled_dot_product_attention",
    }
)
# "CUDA Ops that can autocast to float32".
FLOAT32_OPS = frozenset(
    {
        "__pow__",
        "__rdiv__",
        "__rpow__",
        "__rtruediv__",
        "acos",
        "asin",
        "binary_cross_entropy_with_logits",
        "cosh",
        "cosine_embedding_loss",
        "cdist",
        "cosine_similarity",
        "cross_entropy",
        "cumprod",
        "cumsum",
        "dist",
        "erfinv",
        "exp",
        "expm1",
        "group_norm",
        "hinge_embedding_loss",
        "kl_div",
        "l1_loss",
        "layer_norm",
        "log",
        "log_softmax",
        "log10",
        "log1p",
        "log2",
        "margin_ranking_loss",
        "mse_loss",
        "multilabel_margin_loss",
        "multi_margin_loss",
        "nll_loss",
        "norm",
        "normalize",
        "pdist",
        "poisson_nll_loss",
        "pow",
        "prod",
        "reciprocal",
        "rsqrt",
        "sinh",
        "smooth_l1_loss",
        "soft_margin_loss",
        "softmax",
        "softmin",
        "softplus",
        "sum",
        "renorm",
        "tan",
        "triplet_margin_loss",
    }
)
# Of the float32 ops, those autocast runs with ``dtype=torch.float32`` instead of copying the input.
SET_DTYPE_OPS = frozenset({"softmax", "log_softmax", "softmin", "sum", "prod", "cumsum", "cumprod"})
# "CUDA Ops that promote to the widest input type".
PROMOTE_OPS = frozenset(
    {
        "addcdiv",
        "addcmul",
        "atan2",
        "bilinear",
        "cross",
        "dot",
        "grid_sample",
        "index_put",
        "scatter_add",
        "tensordot",
        "cat",
        "stack",
    }
)


def _is_castable(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float64


class CudaAutocastEmulation(TorchFunctionMode):
    """Cast op inputs as ``torch.autocast("cuda", dtype)`` would, for tensors on any device.

    Like autocast, casts of leaf tensors that require grad (the weights) are cached for the
    life of the region, so each weight is copied to low precision once per forward.
    """

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype
        self._weight_cache: dict[int, torch.Tensor] = {}

    def __exit__(self, *exc: Any) -> Any:
        self._weight_cache.clear()
        return super().__exit__(*exc)

    def _cast(self, value: Any, dtype: torch.dtype) -> Any:
        if not _is_castable(value) or value.dtype == dtype:
            return value
        if value.is_leaf and value.requires_grad and dtype == self.dtype:
            cached = self._weight_cache.get(id(value))
            if cached is None:
                cached = self._weight_cache[id(value)] = value.to(dtype)
            return cached
        return value.to(dtype)

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in LOWER_PRECISION_OPS:
            target: torch.dtype | None = self.dtype
        elif name in FLOAT32_OPS:
            target = torch.float32
        elif name in PROMOTE_OPS:
            dtypes = [leaf.dtype for leaf in _tensors(args, kwargs) if _is_castable(leaf)]
            target = torch.float32 if torch.float32 in dtypes else None
        else:
            target = None
        if target is torch.float32 and name in SET_DTYPE_OPS and "dtype" not in kwargs:
            if any(leaf.dtype != torch.float32 for leaf in _tensors(args, {}) if _is_castable(leaf)):
                kwargs = {**kwargs, "dtype": torch.float32}
            return func(*args, **kwargs)
        if target is not None:
            args, kwargs = tree_map(lambda v: self._cast(v, target), (args, kwargs))
        return func(*args, **kwargs)


def _tensors(args: Any, kwargs: Any) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_leaves

    return [leaf for leaf in tree_leaves((args, kwargs)) if isinstance(leaf, torch.Tensor)]
