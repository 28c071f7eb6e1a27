"""``FrozenCompiled``: the compiled denoiser gives the eager outputs, and never the outputs of weights it no
longer has (frozen constants outlive a wrapper in torch's process-wide compile cache)."""

from __future__ import annotations

import copy

import pytest
import torch

from diffclf.diffusion.compiled import FrozenCompiled, weights_fingerprint
from diffclf.models.dit import DiT, create_dit
from diffclf.models.ema import update_ema


def _dit(seed: int) -> DiT:
    torch.manual_seed(seed)
    dit = create_dit("DiT-T/2", input_size=8, in_channels=1, num_classes=3, depth=2).eval()
    with torch.no_grad():
        for p in dit.parameters():  # DiT zero-initialises its gates and head: every weight must matter
            if p.requires_grad:
                p.normal_(0.0, 0.05)
    return dit


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(4, 1, 8, 8, generator=gen), torch.tensor([10, 200, 500, 900]), torch.tensor([0, 1, 2, 1])


def _eager(dit: DiT, inputs) -> torch.Tensor:
    with torch.no_grad():
        return dit(*inputs)


def test_frozen_compile_follows_the_weights_after_an_in_place_change(inputs) -> None:
    dit, trained = _dit(0), _dit(1)
    compiled, start = FrozenCompiled(dit), _eager(dit, inputs)
    torch.testing.assert_close(compiled(*inputs), start, rtol=1e-4, atol=1e-5)
    before = weights_fingerprint(dit)
    update_ema(dit, trained, 0.5)  # in place, as training updates the EMA between evaluations
    assert weights_fingerprint(dit) != before
    moved = _eager(dit, inputs)
    assert (moved - start).abs().max() > 1e-2  # stale constants would show
    torch.testing.assert_close(compiled(*inputs), moved, rtol=1e-4, atol=1e-5)
    # A new wrapper of the same module after another change (load_state_dict copies in place) too.
    dit.load_state_dict(_dit(2).state_dict())
    torch.testing.assert_close(FrozenCompiled(dit)(*inputs), _eager(dit, inputs), rtol=1e-4, atol=1e-5)


def test_frozen_compile_keeps_two_modules_apart(inputs) -> None:
    a, b = _dit(3), _dit(4)
    first, second = FrozenCompiled(a), FrozenCompiled(copy.deepcopy(b))
    torch.testing.assert_close(first(*inputs), _eager(a, inputs), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(second(*inputs), _eager(b, inputs), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(first(*inputs), _eager(a, inputs), rtol=1e-4, atol=1e-5)


def test_the_weights_are_really_frozen_and_writes_through_data_go_unseen(inputs) -> None:
    """Freezing is on: a write through ``.data`` (which bypasses the version counter, so the fingerprint cannot see
    it) leaves the frozen graph on its old constants, while the unfrozen one reads the new weights. Mutation tried:
    the freezing patch left off (``freezing=False`` for both), the frozen assertion fails."""
    outputs = {}
    for freeze in (True, False):
        torch.compiler.reset()
        dit = _dit(5)
        compiled = FrozenCompiled(dit, freeze=freeze)
        compiled(*inputs)
        for p in dit.parameters():
            p.data.mul_(0.5)
        outputs[freeze] = (compiled(*inputs), _eager(dit, inputs))
    frozen, eager = outputs[True]
    assert (frozen - eager).abs().max() > 1e-2
    torch.testing.assert_close(*outputs[False], rtol=1e-4, atol=1e-5)
