"""The one configuration: flags, --config files, pipeline.yaml and Make knobs all derive from the config classes,
and the flags users typed before keep working."""
from __future__ import annotations

import dataclasses

import pytest

from common import config
from common.cli import UserError
from trainer.config import SECTIONS, TrainConfig


def _train(argv):
    from trainer.train import parse_args

    return parse_args(["--data", "d", "--model-dir", "m", *argv])[1]


def test_every_field_is_a_flag_with_help_and_its_default():
    from trainer.train import build_parser

    text = build_parser().format_help()
    for key in config.leaves(SECTIONS):
        assert f"--{key}" in text, key
    helps = {a.dest: a.help for a in build_parser()._actions}
    for key in config.leaves(SECTIONS):
        assert helps[key] and "default:" in helps[key] or "default" in build_parser().format_help(), key


def test_old_flags_plain_names_bools_and_lists_still_work():
    cfg = _train(["--num-layers", "3", "--num_hiddens", "64", "--cell", "lstm", "--stateful", "--mixed-precision",
                  "--lr=0.5", "--backend-form", "native", "--quiet"])
    assert (cfg.model.num_layers, cfg.model.num_hiddens, cfg.model.cell, cfg.model.form) == (3, 64, "lstm", "native")
    assert cfg.run.stateful and cfg.run.mixed_precision and cfg.optimiser.lr == 0.5 and cfg.run.progress == "epoch"
    assert _train(["--model.num_layers", "4", "--run.stateful", "false"]).model.num_layers == 4
    assert config.translate(["--cells", "gru", "lstm", "--max-layers", "2"], {"space": _space()}) == [
        '--space.cells=["gru", "lstm"]', "--space.max_layers=2"]


def _space():
    from trainer.search import SearchSpace

    return SearchSpace


@pytest.mark.parametrize("argv, needle", [(["--num-layers", "0"], "--model.num_layers (--num-layers)"),
                                          (["--cell", "transformer"], "--model.cell (--cell)"),
                                          (["--lr", "nan"], "--optimiser.lr (--lr)"),
                                          (["--stateful", "maybe"], "--run.stateful")])
def test_bad_values_are_one_line_naming_the_flag(argv, needle):
    with pytest.raises(UserError) as err:
        _train(argv)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_runs_config_yaml_repeats_it(tmp_path):
    cfg = TrainConfig.from_flat(num_layers=3, num_hiddens=48, dropout=0.2, optimizer="adam", lr=0.003,
                                stateful=True, epochs=7)
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    assert _train(["--config", str(path)]) == cfg
    assert _train(["--config", str(path), "--epochs", "9"]) == dataclasses.replace(
        cfg, run=dataclasses.replace(cfg.run, epochs=9))  # flags after it override it


def test_hparams_files_keep_their_plain_names_and_flags_win(tmp_path):
    path = tmp_path / "best_hparams.json"
    path.write_text('{"cell": "lstm", "num_layers": 3, "num_hiddens": 64, "lr": 0.01, "optimizer": "adam"}')
    cfg = _train(["--hparams", str(path), "--num-layers", "2"])
    assert (cfg.model.cell, cfg.model.num_layers, cfg.optimiser.lr) == ("lstm", 2, 0.01)


def test_make_knobs_and_pipeline_yaml_reach_the_job(tmp_path, monkeypatch):
    from deep_rnn.run_all import parse_args

    monkeypatch.setenv("LAYERS", "3")
    monkeypatch.setenv("CORPUS", "a.txt b.txt")
    monkeypatch.setenv("TUNE", "1")
    monkeypatch.setenv("GRPC_PORT", "9000")
    cfg = parse_args(["--knobs-from-env"])
    assert cfg.train.model.num_layers == 3 and cfg.job.corpus == ("a.txt", "b.txt") and cfg.tune.enabled
    assert cfg.serve.port == 9000 and cfg.data.split == "d2l" and cfg.train.run.progress == "epoch"
    assert parse_args([]).train.model.num_layers == 2  # knobs only when make asks for them
    flat, nested = tmp_path / "flat.yaml", tmp_path / "nested.yaml"
    flat.write_text("num_hiddens: 48\ntune_max_epochs: 4\nbeam_options: --direct_num_workers=2\n")
    nested.write_text("train:\n  model:\n    num_hiddens: 48\ntune:\n  search:\n    max_epochs: 4\n")
    for path in (flat, nested):
        cfg = parse_args(["--config", str(path), "--epochs", "5"])
        assert cfg.train.model.num_hiddens == 48 and cfg.tune.search.max_epochs == 4 and cfg.train.run.epochs == 5
    assert parse_args(["--config", str(flat)]).beam.options == "--direct_num_workers=2"
    (tmp_path / "bad.yaml").write_text("num_hidden: 48\n")
    with pytest.raises(UserError, match="unknown setting 'num_hidden'"):
        parse_args(["--config", str(tmp_path / "bad.yaml")])


def test_every_knob_names_a_setting():
    from deep_rnn import settings

    leaves = config.leaves(settings.SECTIONS)
    assert set(settings.KNOBS.values()) <= set(leaves)
    assert set(settings.DEFAULTS) <= set(leaves) and set(settings.RENAMES.values()) <= set(leaves)
