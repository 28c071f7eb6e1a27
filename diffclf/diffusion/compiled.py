"""``torch.compile`` of a denoiser for scoring, with its weights frozen into the compiled code.

Scoring never trains, so inductor may treat the weights as constants (``torch._inductor.config.freezing``):
it folds the bf16 casts of autocast into the weights and, on CPU, prepacks them for oneDNN's (AMX) matmuls.
Measured on a 2-vCPU Xeon 6/167 with AMX, one thread, Fashion-MNIST DiT-T/4 under bf16 autocast on the
official loop's schedule (``benchmarks/results/official_loop_cpu/fashion_dit_t4_keep3-1_trials20-100_xeon_freezing.json``):
2,574 / 2,984 forwards/s frozen at batch 32 / 256 against 1,752 / 1,873 compiled without freezing, and 1,316 /
1,353 eager (``..._xeon_compile.json``). The flag only takes effect when it is set while the code is
compiled; ``torch.compile(..., options={"freezing": True})`` did not freeze when tried with torch 2.14 (it ran at
the unfrozen speed), so the calls run inside ``torch._inductor.config.patch``.

Frozen code bakes in the weights' *values*, and torch's compile cache is process-wide and outlives a
wrapper: after an in-place change of the same weights (an EMA update between evaluations, ``load_state_dict``)
even a new ``torch.compile`` of the module runs the old constants (measured). So the weights' fingerprint
(storage and version counter of every parameter and buffer) at their last frozen compile is kept per module,
as long as the module lives, beside torch's cache it mirrors; a call that finds it moved clears torch's compile
caches (``torch.compiler.reset``: every compiled module recompiles on its next call) before running. A write
through ``.data`` bypasses the version counter and goes unseen (DiT writes so only while it is built).
"""

from __future__ import annotations

from itertools import chain
from weakref import WeakKeyDictionary

import torch
import torch._inductor.config as inductor_config
from torch import Tensor, nn


def weights_fingerprint(module: nn.Module) -> tuple[tuple[int, int], ...]:
    """Storage address and in-place version of every parameter and buffer: changes whenever a weight is
    written in place (``copy_``, ``lerp_``, optimizer steps) or replaced (``.to(device)``)."""
    return tuple((t.data_ptr(), t._version) for t in chain(module.parameters(), module.buffers()))


# The fingerprint each module's weights had when torch's (process-wide) compile cache froze them.
_FROZEN: WeakKeyDictionary[nn.Module, tuple[tuple[int, int], ...]] = WeakKeyDictionary()


class FrozenCompiled:
    """Calls ``module`` through ``torch.compile`` with frozen weights and without gradients; a call after
    the weights changed clears torch's compile caches first (see the module docstring for why).

    ``freeze=False`` compiles without freezing (the weights are read at every call): what benchmarks
    compare with to measure what freezing buys; the cache check stays, as a frozen graph of the same
    module may still be in torch's cache.
    """

    def __init__(self, module: nn.Module, freeze: bool = True) -> None:
        self.module = module
        self.freeze = bool(freeze)
        self._compiled = torch.compile(module)

    def __call__(self, *args: Tensor) -> Tensor:
        current = weights_fingerprint(self.module)
        frozen = _FROZEN.get(self.module)
        if frozen is not None and frozen != current:
            torch.compiler.reset()
            _FROZEN.clear()
        _FROZEN[self.module] = current
        with torch.no_grad(), inductor_config.patch(freezing=self.freeze):
            return self._compiled(*args)
