"""Operators: one module each, a pure-PyTorch reference beside fast backends (see editgan_fast.backend)."""
from .bias_act import bias_act
from .modulated_conv2d import modulated_conv2d
from .seg_head import MemoryBudgetExceeded, PixelMLP, seg_head
from .upfirdn2d import setup_filter, upfirdn2d, upsample2d

__all__ = ["bias_act", "modulated_conv2d", "seg_head", "PixelMLP", "MemoryBudgetExceeded", "setup_filter",
           "upfirdn2d", "upsample2d"]
