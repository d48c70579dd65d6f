"""The study benches' pieces: equal-parameter sizing, and RESULTS.md sections and findings from their JSON."""
from __future__ import annotations

import pytest


@pytest.mark.parametrize("cell", ["lstm", "rnn", "scratch"])
def test_equal_parameter_width_is_the_closest(cell):
    from bench.cells import equal_parameter_width, parameter_count

    target = parameter_count("gru", 32, 28)
    width = equal_parameter_width(cell, target, 28)
    gap = abs(parameter_count(cell, width, 28) - target)
    assert gap <= abs(parameter_count(cell, width - 1, 28) - target)
    assert gap <= abs(parameter_count(cell, width + 1, 28) - target)
    assert (width < 32) if cell == "lstm" else (width > 32)  # LSTM has 4 gate blocks to GRU's 3, RNN 1


def _authors_result(alone_home: float, mixed_home: float) -> dict:
    books = ["The Time Machine", "The War of the Worlds", "Frankenstein", "Sherlock Holmes"]
    table = {"The Time Machine": {b: alone_home + i for i, b in enumerate(books)},
             "Wells (2 books)": {b: 5.0 for b in books},
             "all six books": {b: mixed_home for b in books}}
    models = {name: {"vocab_size": 70, "training_tokens": 1000, "epochs_of_data_in_budget": 2.0, "best_epoch": 3,
                     "process_wall_s": 10.0, "author_share": {"Wells": 0.25, "Doyle": 0.75},
                     "evaluation": {b: {"perplexity": row[b], "unknown_rate": 0.01 if name == "The Time Machine"
                                        and b != books[0] else 0.0} for b in books},
                     "unknown_characters": {b: [["\u201c", 9]] for b in books[1:]} if name == "The Time Machine"
                     else {}} for name, row in table.items()}
    return {"machine": {"cpu": "test CPU", "cores": 2}, "model": "GRU", "budget": "b", "data": "d", "epochs": 5,
            "perplexity": table, "models": models, "plot": "results/authors.png"}


@pytest.mark.parametrize("alone,mixed,verdict", [(4.0, 4.5, "mixing authors costs"), (4.0, 3.5, "more text helps"),
                                                 (6.0, 5.5, "style averaging")])
def test_authors_findings_follow_the_numbers(alone, mixed, verdict):
    from bench.run_all import authors_findings, render_authors

    result = _authors_result(alone, mixed)
    findings = authors_findings(result)
    assert verdict in findings[0]
    assert f"{100 * (mixed - alone) / alone:,.1f} %" in findings[0]
    assert any("Doyle has 75 %" in f for f in findings) and any("'“' ×9" in f for f in findings)
    section = "\n".join(render_authors(result))
    assert f"| The Time Machine | {alone:.2f} | {alone + 1:.2f} (1.00 %) |" in section
    assert "results/authors.png" in section


def test_cells_section_lists_every_run():
    from bench.run_all import render_cells

    runs = [{"cell": c, "width": w, "sizing": s, "num_params": 5000, "best_val_ppl": p, "best_epoch": 90,
             "val_ppl": p + 0.1, "train_ppl": p - 1, "train_tokens_per_s": 1e5, "process_wall_s": t, "form": "fused"}
            for c, w, s, p, t in [("gru", 32, "book width", 6.2, 80.0), ("lstm", 27, "equal parameters", 6.8, 70.0)]]
    section = "\n".join(render_cells({"machine": {"cpu": "c", "cores": 2}, "protocol": "p", "gru_2x32_params": 5000,
                                      "plot": "results/cells.png", "runs": runs}))
    assert "| gru | 2 × 32 | book width |" in section and "| lstm | 2 × 27 | equal parameters |" in section
    assert "Lowest validation perplexity: gru 2 × 32 (6.20)" in section and "shortest run: lstm 2 × 27" in section


def test_time_breakdown_table_has_a_row_per_form():
    from bench.run_all import BREAKDOWN_COLUMNS, render_time_breakdown

    rows = [{"form": form, "process_wall_s": 60.0 + i, "wall_ratio_book_over_form": 93 / (60.0 + i),
             "best_val_ppl": 6.2, "train_tokens_per_s_steady": 8e5, **{k: 1.5 for k in BREAKDOWN_COLUMNS}}
            for i, form in enumerate(["fused", "stacked"])]
    table = "\n".join(render_time_breakdown(rows))
    assert "| fused | 1.5 | 1.5 |" in table and "| 61.0 | 1.52 | 6.20 | 800,000 |" in table


def test_what_4x_needs_is_the_training_rate_left_after_the_fixed_costs():
    """Book 100 s → 25 s for us; 5 s of start, TF, setup and saving leave 20 s for 10 M tokens: 0.5 M tokens/s,
    twice the steady 0.25 M and half the 1 M matmul bound."""
    from bench.run_all import what_4x_needs

    row = {"form": "native", "start_s": 1.0, "load_tensorflow_s": 3.0, "setup_s": 0.5, "finish_s": 0.5,
           "train_tokens_per_s_steady": 2.5e5}
    r = {"book_config": {"form": "native", "train_tokens_per_s": 1e6, "train_seconds": 10.0},
         "book_run": {"process_wall_s": 100.0}, "book_reference": {"wall_s": 84},
         "where_time_goes": [{**row, "form": "stacked", "start_s": 50.0}, row],
         "roofline": {"max_tokens_per_s_matmul_bound": 1e6}}
    line = what_4x_needs(r)[0]
    assert "our whole run in 25.0 s (the book's 100.0 s / 4)" in line and "took 5.0 s here" in line
    assert "10.0 M training tokens would have to go through in the 20.0 s left" in line
    assert "0.50 M tokens/s, 2.00× this run's steady rate and 50 % of the matmul bound" in line
    no_run = what_4x_needs({**r, "book_run": None, "book_reference": {"wall_s": 16}})[0]
    assert "our whole run in 4.0 s, less than its start" in no_run
    assert what_4x_needs({**r, "roofline": None}) == []


def test_shakespeare_section_shows_the_figure_the_curve_and_the_sample():
    from bench.run_all import render_shakespeare

    curve = [{"epoch": e, "train_nats": 1.6, "val_window_nats": 1.7, "val_stream_nats": 1.55 - e / 100,
              "learning_rate": 1e-3, "grad_norm": 0.5} for e in (1, 2)]
    result = {"machine": {"cpu": "c", "cores": 2, "gpu": None}, "recipe": "fixed (no search)", "model": "2 × 384 GRU",
              "budget_minutes": 30, "val_loss_nats": 1.53, "best_epoch": 2, "epochs_run": 2, "target_nats": 1.5,
              "reached": False, "val_window_nats": 1.7, "minutes": 29.5, "tokens_per_s": 16000.0,
              "trained_tokens": 27000000, "planned_steps": 3200,
              "calibration_tokens_per_s": 16000.0, "nanogpt": {"gpu_val_loss_nats": 1.4697, "cpu_val_loss_nats": 1.88},
              "curve": curve, "sample": "ROMEO:\nWhat | say `you`", "sample_prompt": "ROMEO:\n"}
    section = "\n".join(render_shakespeare(result))
    assert "**1.5300 nats per character** (epoch 2 of 2; target ≤ 1.50: not reached)" in section
    assert "| 2 | 1.600 | 1.700 | 1.530 |" in section
    assert "ROMEO: / What \\| say 'you'" in section


def test_book_comparison_names_where_the_book_figure_comes_from():
    """The ratio's numerator is the book's process measured in the same run when there is one, else DESIGN.md's."""
    import json

    from bench.run_all import render

    with open("bench/results/train_vs_d2l.json") as f:
        measured = json.load(f)
    section = render({"train_vs_d2l": measured})
    run = measured["book_run"]
    assert f"| {round(run['process_wall_s'])} | `{run['sample']}` |" in section
    assert f"run just before it in the same bench run: ratio **{measured['wall_ratio_book_over_ours']:.2f}**" in section
    reference_only = {**measured, "book_run": None,
                      "wall_ratio_book_over_ours": measured["wall_ratio_design_reference_over_ours"]}
    section = render({"train_vs_d2l": reference_only})
    assert "book's PyTorch code, run here" not in section
    assert (f"against DESIGN.md's figure for the book on this kind of CPU (the book's code not run): ratio "
            f"**{measured['wall_ratio_design_reference_over_ours']:.2f}**") in section


def _form_row(cpu, form, speed, size="2x256", precision="float32"):
    return dict(cell="lstm", size=size, batch=64, num_steps=64, form=form, device="CPU", cpu=cpu, gpu=None,
                precision=precision, train_tokens_per_s=speed, ms_per_step=1.0, first_step_s=1.0,
                native_ops=form == "native", cudnn=False)


def test_bench_forms_keeps_other_cpus_rows_and_the_report_shows_each_cpu_apart():
    from bench.forms import merge_rows
    from bench.run_all import render

    amd, intel = "AMD EPYC [avx512f avx512_bf16]", "Intel(R) Xeon(R) Processor [avx512f avx512_bf16 amx_bf16]"
    stored = [_form_row(amd, "stacked", 100.0), _form_row(amd, "native", 150.0), _form_row(intel, "stacked", 90.0),
              _form_row(intel, "native", 80.0, size="3x512")]
    rows = merge_rows(stored, [_form_row(intel, "stacked", 120.0), _form_row(intel, "native", 240.0)])
    assert len(rows) == 5  # Intel's 2x256 stacked replaced, its 3x512 row and AMD's rows kept
    assert [r["train_tokens_per_s"] for r in rows if r["cpu"] == intel and r["size"] == "2x256"] == [120.0, 240.0]
    section = render({"forms": {"machine": {"cpu": "x", "cores": 2, "gpu": None}, "device": "CPU", "vocab": 65,
                                "steps": 5, "blocks": 5, "rows": rows}})
    amd_part, intel_part = section.split(f"**{amd}**")[1].split(f"**{intel}**")
    assert "| lstm | 2x256 | 64 × 64 | float32 | **native** (auto) | 150 |" in amd_part
    assert "native 1.50×" in amd_part and "native 2.00×" in intel_part  # each against its own CPU's cell stack


def test_tune_report_lists_the_trials_and_marks_the_start_points(tmp_path):
    import json

    from bench.run_all import render
    from bench.tune import read_trials

    (tmp_path / "trials.csv").write_text(
        "trial_id,num_layers,num_hiddens,cell,dropout,weight_drop,optimizer,lr,epochs,val_perplexity,num_params,"
        "train_tokens_per_s,wall_s,tuner_id,status\n"
        "0000,3,128,lstm,0.2,0.3,adam,0.0213,35,3.946,445468,81211.4,91.1,tuner0,COMPLETED\n"
        "0001,1,256,gru,0.0,0.4,adam,0.00204557,31,4.387,259612,64380.0,91.3,tuner0,COMPLETED\n")
    rows = read_trials(str(tmp_path / "trials.csv"), start_points=1)
    assert [r["start"] for r in rows] == [True, False]
    with open("bench/results/tune.json") as f:
        result = {**json.load(f), "trial_rows": rows}
    section = render({"tune": result})
    assert "| 0000 (start) | 3 × 128 LSTM | 0.2 | 0.3 | 0.0213 | 35 | 3.95 | 91 |" in section
    assert "| 0001 | 1 × 256 GRU | 0.0 | 0.4 | 0.00205 | 31 | 4.39 | 91 |" in section


def test_bench_tune_refuses_a_bad_start_point_before_any_work(tmp_path):
    from tests.conftest import assert_user_error, run_cli

    (tmp_path / "p.json").write_text('{"cell": "lstm", "num_layers": 3, "num_hiddens": 100, "optimizer": "adam", '
                                     '"lr": 0.01}')
    assert_user_error(run_cli("bench.tune", "--start-with", str(tmp_path / "p.json")), "num_hiddens 100")
    from bench import tune as bench_tune
    from common.cli import UserError

    for flags, needle in ((["--ema", "1"], r"ema must be in \[0, 1\)"),
                          (["--input-dropout", "-0.1"], r"input_dropout must be in \[0, 1\)"),
                          (["--validation-freq", "0"], "validation_freq must be >= 1")):
        with pytest.raises(UserError, match=needle):  # the command prints any UserError as one line, exit 2
            bench_tune.main(flags)
    # the committed start point lies inside bench.tune's default space
    from bench.tune import START_POINT, build_parser
    from trainer.search import SearchSpace, read_start_point

    args = build_parser().parse_args([])
    read_start_point(str(START_POINT), SearchSpace(min_layers=1, max_layers=args.max_layers,
                                                   min_hiddens=args.min_hiddens,
                                                   max_hiddens=args.max_hiddens, optimizers=tuple(args.optimizers)))


def test_forms_table_marks_the_rows_whose_bf16_products_ran_on_amx():
    from bench.run_all import render_forms_table

    base = dict(cell="lstm", size="2x256", batch=64, num_steps=64, precision="mixed", cudnn=False, ms_per_step=1.0,
                first_step_s=1.0)
    rows = [{**base, "form": "stacked", "train_tokens_per_s": 100.0, "native_ops": False, "bf16_products": None},
            {**base, "form": "native", "train_tokens_per_s": 250.0, "native_ops": True, "bf16_products": "amx"},
            {**base, "size": "3x512", "form": "native", "train_tokens_per_s": 90.0, "native_ops": True,
             "bf16_products": "avx512_bf16"}]
    table = "\n".join(render_forms_table("cpu", rows))
    assert "| mixed | **native** (auto), AMX | 250 |" in table
    assert "| mixed | stacked | 100 |" in table and "| mixed | **native** (auto) | 90 |" in table


def test_forms_report_sets_the_float32_ceiling_beside_the_float32_rows():
    """The ceiling is the measured matmul rate over the size's FLOPs per token, against the cell stack's speed;
    rows from before bench.forms recorded both get none."""
    from bench.run_all import render_forms_table

    measured = dict(train_flops_per_token=1e9, matmul_gflops_f32=150.0)
    rows = [{**_form_row("cpu", "stacked", 100.0), **measured}, {**_form_row("cpu", "native", 120.0), **measured},
            {**_form_row("cpu", "stacked", 100.0, precision="mixed"), **measured},
            {**_form_row("cpu", "native", 210.0, precision="mixed"), **measured}]
    table = "\n".join(render_forms_table("cpu", rows))
    assert "lstm 2x256 float32: native 1.20× (float32 ceiling 1.50×); lstm 2x256 mixed: native 2.10×." in table
    assert "out of float32's reach" in table
    old = "\n".join(render_forms_table("cpu", [_form_row("cpu", "stacked", 100.0), _form_row("cpu", "native", 120.0)]))
    assert "lstm 2x256 float32: native 1.20×." in old and "ceiling" not in old
