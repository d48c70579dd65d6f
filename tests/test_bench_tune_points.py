"""bench.tune_points: points trained as bench.tune's winner is, refused before any work when malformed."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.conftest import assert_user_error, run_cli


def test_bad_points_and_recipes_exit_2_in_one_line_before_any_work(tmp_path):
    point = tmp_path / "p.json"
    point.write_text('{"cell": "lstm", "num_layers": 2, "num_hiddens": 16, "optimizer": "adam", "lr": 0.01}')
    assert_user_error(run_cli("bench.tune_points", "--points", str(point), "--set", "dropout=1.5"),
                      "p.json", "dropout must be in [0, 1)")
    assert_user_error(run_cli("bench.tune_points", "--points", str(tmp_path / "missing.json")), "missing.json")
    assert_user_error(run_cli("bench.tune_points", "--points", str(point), "--minutes", "0"), "--minutes")
    assert_user_error(run_cli("bench.tune_points", "--points", str(point), "--ema", "1"), "ema must be in [0, 1)")


def test_set_overrides_every_point_and_reads_json_values(tmp_path):
    from bench.tune_points import parse_setting, read_points

    assert parse_setting("dropout=0.4") == ("dropout", 0.4) and parse_setting("cell=gru") == ("cell", "gru")
    paths = []
    for i, cell in enumerate(("gru", "lstm")):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps({"cell": cell, "num_layers": 1, "num_hiddens": 8, "optimizer": "adam",
                                         "lr": 0.01, "stateful": True}))  # keys other than the point's: ignored
    points = read_points([str(p) for p in paths], {"dropout": 0.4})
    assert [p["cell"] for p in points] == ["gru", "lstm"] and all(p["dropout"] == 0.4 for p in points)
    assert all("stateful" not in p for p in points)


def test_an_ensemble_averages_the_models_probabilities_not_their_losses():
    from bench.tune_points import ensemble_perplexity

    # token 1: p = 0.5 and 0.25, token 2: p = 0.25 and 0.5 → the mixture gives 0.375 to both: perplexity 1 / 0.375
    halves = [[math.log(2), math.log(4)], [math.log(4), math.log(2)]]
    assert ensemble_perplexity(halves) == pytest.approx(1 / 0.375)
    assert ensemble_perplexity([[math.log(3)] * 5]) == pytest.approx(3.0)          # one model: its own perplexity
    assert ensemble_perplexity([[math.log(2)] * 4, [math.log(2)] * 4]) == pytest.approx(2.0)


@pytest.mark.slow
def test_a_run_trains_each_point_with_bench_tunes_recipe_and_renders(tmp_path, seeded_cache, monkeypatch):
    import bench.tune_points as tune_points
    from bench.run_all import render_tune_points

    emitted = {}
    monkeypatch.setattr(tune_points, "emit", lambda name, result: emitted.update(
        {"name": name, "result": {"machine": {"cpu": "test CPU", "cores": 2}, **result}}))
    point = tmp_path / "p.json"
    point.write_text('{"cell": "gru", "num_layers": 1, "num_hiddens": 8, "optimizer": "adam", "lr": 0.01}')
    tune_points.main(["--points", str(point), str(point), "--set", "weight_drop=0.2", "--minutes", "0.05",
                      "--stateful", "--stride", "32", "--batch-size", "64", "--validation-freq", "2"])
    result = emitted["result"]
    assert emitted["name"] == "tune_points" and len(result["runs"]) == 2
    assert result["recipe"]["stateful"] is True and result["recipe"]["validation_freq"] == 2
    for run in result["runs"]:
        assert run["point"]["weight_drop"] == 0.2 and run["epochs"] >= 1
        assert run["best_val_stream_ppl"] < 28 and run["wall_s"] < 60  # better than uniform over the 28 tokens
    # the ensemble scores each run's saved model on the stream: alone, each gives what its training recorded
    ensemble = result["ensemble"]
    assert ensemble["members"] == 2
    np.testing.assert_allclose(ensemble["member_stream_ppl"], [run["best_val_stream_ppl"] for run in result["runs"]],
                               rtol=1e-3)
    assert ensemble["stream_ppl"] <= math.exp(np.mean(np.log(ensemble["member_stream_ppl"]))) + 1e-9  # Jensen
    section = "\n".join(render_tune_points(result))
    assert "| 1 × 8 GRU | 0.0 | 0.2 | 0.01 |" in section and "25 % target" not in section
    assert "The 2 points as one ensemble" in section and f"**{ensemble['stream_ppl']:.2f}** on the stream." in section
    best = min(run["best_val_stream_ppl"] for run in result["runs"])
    section = "\n".join(render_tune_points(result, {"baseline_2x32_gru": {"best_val_stream_ppl": 40.0}}))
    assert f"its 25 % target is 30.00; the best point here, 1 × 8 GRU, is {100 * (1 - best / 40):.1f} % below it" \
        in section
