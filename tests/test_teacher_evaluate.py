"""The unguided-sample check of `distilswap teacher evaluate`: it tells a teacher that generates the person it is
conditioned on from one that ignores its identity (and leaves the swap to guidance)."""
import pytest
import torch

from teacher.evaluate import unguided_samples
from teacher_tiny import tiny_experts, tiny_unet

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_teacher_that_ignores_its_identity_shows_no_change_when_only_the_identity_changes():
    model, experts = tiny_unet(), tiny_experts()
    judge = tiny_experts(seed=1).embedder
    _, _, uses = unguided_samples(model, experts, judge, count=4, steps=4)
    assert uses["change when only the identity changes"] > 0  # a random UNet hears its identity faintly
    with torch.no_grad():  # the identity's only path into the UNet now adds zeros
        model.id_embed[-1].weight.zero_()
        model.id_embed[-1].bias.zero_()
    _, _, ignores = unguided_samples(model, experts, judge, count=4, steps=4)
    assert ignores["change when only the identity changes"] == 0
    assert ignores["change when only the noise changes"] > 1e-3
    assert -1 <= ignores["judge similarity to another identity"] <= 1
