"""The benches' compute accounting (bench.common: tune_ceiling, train_vs_d2l and forms use it): flops per
trained token from the model's own weight matrices."""
from __future__ import annotations

import pytest


def test_training_flops_per_token_matches_a_hand_count():
    from bench.common import training_flops_per_token

    # 3 × 256 GRU, vocab 28: recurrent 3·256·768, inputs of layers 2–3 2·256·768, logits 256·28; ×2 ×3
    assert training_flops_per_token("gru", 3, 256, 28) == 6 * (3 * 256 * 768 + 2 * 256 * 768 + 256 * 28)


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn", "scratch"])
def test_training_flops_per_token_counts_every_weight_matrix_the_fused_form_multiplies(cell):
    from bench.common import training_flops_per_token
    from trainer.config import ModelConfig
    from trainer.model import build_model, model_cells

    model = build_model(ModelConfig(vocab_size=11, cell=cell, num_layers=3, num_hiddens=8))
    cells = model_cells(model)
    # every kernel is one multiply-add per entry per token, except layer 0's: a row lookup of a one-hot input
    macs = sum(int(c.recurrent_kernel.shape.num_elements()) for c in cells)
    macs += sum(int(c.kernel.shape.num_elements()) for c in cells[1:])
    macs += int(model.get_layer("logits").kernel.shape.num_elements())
    assert training_flops_per_token(cell, 3, 8, 11) == 6 * macs
