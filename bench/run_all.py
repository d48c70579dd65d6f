"""`make bench`: runs every benchmark and writes bench/RESULTS.md from their JSON; `make study` runs the studies.

    python -m bench.run_all [--only preprocess train_vs_d2l train_profile forms serve tune] [--report-only]
    python -m bench.run_all --only cells authors
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from bench.common import ROOT, machine, result_path
from common import cli
from trainer.forms import pick_form

BENCHES = ["preprocess", "train_vs_d2l", "train_profile", "forms", "serve", "tune",
           "shakespeare"]
# the flags of the recorded runs: the tuned side with carried state and bfloat16 products (bench/RESULTS.md)
BENCH_FLAGS = {"tune": ["--stateful", "--mixed-precision"]}
STUDIES = ["cells", "authors"]  # the chapter's exercises (`make study`)


def _f(x, digits=2):
    return f"{x:,.{digits}f}" if isinstance(x, (int, float)) else str(x)


def render(results: dict) -> str:
    m = machine()
    lines = ["# Benchmark results", "",
             "Written by `make bench` (`python -m bench.run_all`) from `bench/results/*.json` and "
             "`trainer/forms_table.json`; each section names the command that produced it and the machine it ran on.",
             ""]
    if "preprocess" in results:
        r = results["preprocess"]
        lines += ["## Preprocessing (`python -m bench.preprocess`)", f"Machine: {r['machine']['cpu']}, "
                  f"{r['machine']['cores']} cores. Holdout split, char tokens, d2l normaliser.", "",
                  "| input | bytes | reference s | Beam direct s (ratio) | Beam 2 processes s (ratio) | "
                  "Beam on Dask, 2 workers s (ratio) | reference MB/s |",
                  "|---|---|---|---|---|---|---|"]
        for key, v in r.items():
            if isinstance(v, dict) and "reference_s" in v:
                dask = (f"{_f(v['beam_dask_2_s'])} ({_f(v['beam_dask_2_ratio_to_reference'])}×)"
                        if "beam_dask_2_s" in v else "–")
                lines.append(f"| {key} | {v['bytes']:,} | {_f(v['reference_s'])} | {_f(v['beam_direct_s'])} "
                             f"({_f(v['beam_direct_ratio_to_reference'])}×) | {_f(v['beam_multiprocessing_2_s'])} "
                             f"({_f(v['beam_multiprocessing_2_ratio_to_reference'])}×) | {dask} | "
                             f"{_f(v['reference_mb_per_s'])} |")
        lines.append("")
    if "train_vs_d2l" in results:
        r = results["train_vs_d2l"]
        ours, book, run = r["book_config"], r["book_reference"], r.get("book_run")
        lines += ["## Training against the book (`python -m bench.train_vs_d2l`)",
                  f"Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores, GPU: {r['machine']['gpu']}. "
                  "d2l split, deep GRU 2 × 32, batch 1024, SGD lr 2, clip 1, 100 epochs.", "",
                  "| | train ppl | val ppl | train tokens/s | wall s | sample |", "|---|---|---|---|---|---|",
                  f"| this pipeline ({ours['form']} form) | {_f(ours['train_ppl'])} | {_f(ours['val_ppl'])} "
                  f"(best {_f(ours['best_val_ppl'])}) | {_f(ours['train_tokens_per_s'], 0)} (steady "
                  f"{_f(ours['train_tokens_per_s_steady'], 0)}) | {_f(ours.get('process_wall_s', ours['wall_s']), 0)} "
                  f"| `{ours['sample']}` |",
                  *([f"| book's PyTorch code, run here (d2l 1.0.3, torch {run['torch']}) | {_f(run['train_ppl'])} | "
                     f"{_f(run['val_ppl'])} (best {_f(run['best_val_ppl'])}) | {_f(run['train_tokens_per_s'], 0)} | "
                     f"{_f(run['process_wall_s'], 0)} | `{run['sample']}` |"] if run else []),
                  f"| book's PyTorch code (DESIGN.md) | {book['train_ppl']} | {book['val_ppl']} | "
                  f"{_f(book['train_tokens_per_s'], 0)} | {book['wall_s']} | `{book['sample']}` |", ""]
        if run:
            lines += [f"Wall time is the whole `python -m trainer.train` process (spawn to exit) against the book's "
                      f"own code as a whole process (bench/book/deep_gru.py in `make book-venv`'s environment, "
                      f"d2l's live plot {'on' if run['plot'] else 'off'}), run just before it in the same bench run: "
                      f"ratio **{_f(r['wall_ratio_book_over_ours'])}** (target 4); against DESIGN.md's "
                      f"{book['wall_s']} s for this kind of CPU: {_f(r['wall_ratio_design_reference_over_ours'])}. "
                      "The book's perplexities are d2l's own (means of per-batch perplexity); its tokens/s counts "
                      "fit's seconds, validation included, as DESIGN.md's does.", ""]
        if "process_wall_s" in ours:
            against = ("" if run else "Wall time is the whole `python -m trainer.train` process (spawn to exit) "
                       "against DESIGN.md's figure for the book on this kind of CPU (the book's code not run): "
                       f"ratio **{_f(r['wall_ratio_book_over_ours'])}** (target 4). ")
            lines += [f"{against}Of our {_f(ours['process_wall_s'], 1)} s, {_f(ours['train_seconds'], 1)} s are "
                      f"training steps (the first epoch's graph build included) and the other "
                      f"{_f(ours['outside_training_s'], 1)} s start-up, validation, checkpoints and logs, the sample "
                      "and saving (the table below).", ""]
        if r.get("where_time_goes"):
            lines += render_time_breakdown(r["where_time_goes"])
        if "roofline" in r:
            rl = r["roofline"]
            lines += [f"Roofline: training costs {_f(rl['train_flops_per_token'], 0)} FLOP per token; independent "
                      f"matmuls of the recurrence's own shape run at best {_f(rl['matmul_gflops_at_model_shape'], 1)} "
                      f"GFLOP/s here, so the matmuls alone cap training at "
                      f"{_f(rl['max_tokens_per_s_matmul_bound'], 0)} tokens/s (1.4 M tokens/s needs "
                      f"{_f(rl['gflops_needed_for_1.4M_tokens_per_s'], 1)} GFLOP/s with no time left for the gate "
                      "nonlinearities, loss, optimiser or input).", ""]
            lines += what_4x_needs(r)
        if "large_model" in r:
            lm = r["large_model"]
            lines += [f"Larger model: {lm['model']}, batch {lm['batch']} × {lm['num_steps']} steps, "
                      f"{lm['params']:,} parameters, form {lm.get('form', '–')} (auto): "
                      f"{_f(lm['train_tokens_per_s'], 0)} training tokens/s, "
                      f"{_f(lm['achieved_gflops'], 1)} GFLOP/s against a measured float32 matmul peak of "
                      f"{_f(lm['matmul_peak_gflops'], 1)} GFLOP/s (MFU {_f(100 * lm['mfu'], 0)} %).", ""]
    if "train_profile" in results:
        r = results["train_profile"]
        lines += ["## Where a training step's time goes (`python -m bench.train_profile`)",
                  f"Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores. {r['model']}: "
                  f"{_f(r['ms_per_step'], 1)} ms per step ({_f(r['tokens_per_s'], 0)} tokens/s), "
                  f"{_f(r['ops_per_step'], 0)} TF ops per step, {_f(r['cores_busy'], 2)} cores busy on average "
                  "(op time over wall time, under the profiler).", "",
                  "| op type | ms per step (CPU time) | share of op time | ops per step |", "|---|---|---|---|"]
        lines += [f"| {o['op']} | {_f(o['ms_per_step'], 1)} | {_f(100 * o['share'], 1)} % | {_f(o['per_step'], 0)} |"
                  for o in r["by_op_type"]]
        if "loss_fwd_bwd_ms" in r:
            lines += ["", "Loss, forward + backward on logits [1024, 35, 28]: " + ", ".join(
                f"`{name}` {_f(ms)} ms" for name, ms in r["loss_fwd_bwd_ms"].items()) + "."]
        lines.append("")
    if "forms" in results:
        r = results["forms"]
        lines += ["## Model forms (`python -m bench.forms`)",
                  f"Device {r['device']}, {r['machine']['cores']} cores, Adam, synthetic ids (vocab {r['vocab']}); "
                  "each row in a process of its own with the trainer's thread set-up for that form. One table per "
                  "CPU bench.forms ran on (model name [the instruction sets that decide between forms]); `auto` = the "
                  "form `--backend-form auto` picks from that CPU's rows; × stacked = its speed over the book's cell "
                  "stack at the same size and precision, × stacked f32 over the float32 cell stack (the book's design "
                  "as the book runs it). Mixed precision on a CPU is bfloat16 (the native form: bfloat16 products, "
                  "float32 accumulation and gate maths, on AMX tiles where the row says AMX, else AVX512_BF16; the "
                  "other "
                  "forms: TensorFlow's own bfloat16 ops).",
                  (f"Each row's speed is its fastest of {r['blocks']} blocks of {r['steps']} timed steps (noise here "
                   "only slows steps down). " if r.get("blocks") else "") +
                  "Speeds within 5 % of the fastest are a tie, which the shorter first step (graph tracing and "
                  "building, paid once per run) wins."]
        by_machine = {}
        for x in r["rows"]:
            by_machine.setdefault(x.get("gpu") or x.get("cpu") or r["machine"]["cpu"], []).append(x)
        for name, machine_rows in by_machine.items():
            lines += render_forms_table(name, machine_rows)
        if r["device"] == "CPU":
            lines += ["", "No GPU here: the cuDNN comparison (2 × 256 and 3 × 1024, the `layers` form against the "
                      "cell stack) runs with the same command on a GPU machine."]
        lines.append("")
    if "serve" in results:
        r = results["serve"]
        lines += ["## Serving (`python -m bench.serve`)", f"Machine: {r['machine']['cpu']}, {r['machine']['cores']} "
                  f"cores. {r['request']}; server: {r['server']}. In-process = calling the loaded SavedModel's "
                  "signature from Python values and reading the text back, the same work the server does per request.",
                  "",
                  "| path | p50 ms | p99 ms |", "|---|---|---|"]
        for key in ("in_process", "grpc", "rest"):
            lines.append(f"| {key} | {_f(r[key]['p50_ms'])} | {_f(r[key]['p99_ms'])} |")
        if "grpc_round_trip_no_model" in r:
            lines.append(f"| gRPC round trip, no model (GetModelStatus) | "
                         f"{_f(r['grpc_round_trip_no_model']['p50_ms'])} "
                         f"| {_f(r['grpc_round_trip_no_model']['p99_ms'])} |")
        lines += ["", f"gRPC p50 / in-process p50 = {_f(r['grpc_p50_over_in_process_p50'])}."]
        if "ratio_floor_from_round_trip" in r:
            lines.append(f"A server that added only one bare round trip to the in-process call would reach "
                         f"{_f(r['ratio_floor_from_round_trip'])}: the floor of this Python gRPC stack on this "
                         "machine.")
        lines += ["",
                  "| concurrent clients | requests/s | errors |", "|---|---|---|"]
        lines += [f"| {t['concurrency']} | {_f(t['requests_per_s'], 1)} | {t['errors']} |" for t in r["throughput"]]
        lines.append("")
    if "tune" in results:
        r = results["tune"]
        lines += ["## Tuning (`python -m bench.tune`)",
                  f"Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores. "
                  f"{r['data']}; budget {r['budget_min']} min; space {r['search_space']}.", ""]
        final = {k: v for k, v in (r["final_training"] or {}).items() if k != "time_breakdown"}
        every = (r.get("final_schedule") or {}).get("validation_freq", 1)
        lines += [f"- search ({_f(r['search_wall_s'], 0)} s, {r['trials']} trials), best trial: {r['search_best']}",
                  f"- the winner trained for the rest of the budget: {final}; lr schedule: "
                  f"{describe_schedule(r.get('final_schedule'))}"
                  + (f"; validated every {every} epochs and at the deadline" if every > 1 else "")]
        breakdown = (r["final_training"] or {}).get("time_breakdown")
        if breakdown:
            lines.append(f"- where the winner's {_f(final['wall_s'], 0)} s went: "
                         + ", ".join(f"{BREAKDOWN_COLUMNS[k]} {_f(v, 0)} s" for k, v in breakdown.items()
                                     if k in BREAKDOWN_COLUMNS))
        lines += [f"- tuned model's validation perplexity: {_f(r['tuned_val_ppl'])} (search and training "
                  f"{_f(r['tuned_wall_s'], 0)} s)",
                  f"- book's 2 × 32 GRU for the same wall time: {r['baseline_2x32_gru']}",
                  f"- relative improvement: {_f(100 * r['relative_improvement'], 1)} % (target ≥ 25 %: "
                  f"{'met' if r['target_25pct_met'] else 'not met'})"]
        if r.get("tuned_val_stream_ppl") is not None:
            stream_gain = r["stream_relative_improvement"]
            lines += [f"- full context (each validation stream scored with the state carried, what a served model "
                      f"sees): tuned {_f(r['tuned_val_stream_ppl'])}"
                      f"{' (trained stateful)' if r.get('stateful') else ''}, book's 2 × 32 GRU "
                      f"{_f(r['baseline_2x32_gru']['best_val_stream_ppl'])}: {_f(100 * stream_gain, 1)} % lower "
                      f"(target ≥ 25 %: {'met' if stream_gain >= 0.25 else 'not met'})"]
        if r.get("trial_rows"):
            space = r["search_space"]  # results from before trial_schedule: plateaus
            trial_lr = space.get("trial_schedule") or {"reduce_lr_patience": space.get("reduce_lr_patience", 2)}
            lines += ["", f"Trials ({space['trial_minutes']} min at most each, lr: "
                      f"{describe_schedule(trial_lr, 'the trial time limit')}"
                      f", scored by "
                      f"{'stream' if r.get('stateful') else 'window'} perplexity; start = a --start-with point):", "",
                      "| trial | model | dropout | weight drop | lr | epochs | score | s |",
                      "|---|---|---|---|---|---|---|---|"]
            for t in r["trial_rows"]:
                lines.append(f"| {t['trial_id']}{' (start)' if t.get('start') else ''} | {t['num_layers']} × "
                             f"{t['num_hiddens']} {t['cell'].upper()} | {_f(float(t['dropout']), 1)} | "
                             f"{_f(float(t['weight_drop']), 1)} | {float(t['lr']):.3g} | {t['epochs']} | "
                             f"{_f(float(t['val_perplexity']))} | {_f(float(t['wall_s']), 0)} |")
        profiles = r.get("val_ppl_by_context") or {}
        if profiles.get("baseline"):
            keys = list(profiles["baseline"])
            lines += ["", "Validation perplexity by characters of context (every window starts from a zero state):", "",
                      "| model | " + " | ".join(k.replace("context_", "").replace("_", "–") for k in keys) + " |",
                      "|---" * (len(keys) + 1) + "|"]
            lines += [f"| {name} | " + " | ".join(_f(p[k]) for k in keys) + " |"
                      for name, p in profiles.items() if p]
        lines.append("")
    if "shakespeare" in results:
        lines += render_shakespeare(results["shakespeare"])
    if "cells" in results:
        lines += render_cells(results["cells"])
    if "authors" in results:
        lines += render_authors(results["authors"])
    missing = [b for b in BENCHES + STUDIES if b not in results]
    if missing:
        lines += ["## Not yet measured", "", ", ".join(missing) + f" (run `python -m bench.<name>`); machine here: "
                  f"{m['cpu']}, {m['cores']} cores.", ""]
    return "\n".join(lines)


BREAKDOWN_COLUMNS = {"start_s": "start", "load_tensorflow_s": "load TF", "setup_s": "setup",
                     "graph_build_s": "graph build", "train_steps_s": "steps", "window_validation_s": "window val",
                     "stream_validation_s": "stream val", "epoch_bookkeeping_s": "checkpoints, logs",
                     "finish_s": "sample, saving"}


def render_forms_table(machine: str, rows: list[dict]) -> list[str]:
    """bench.forms' rows of one machine: the table and auto's speed-ups."""
    lines = ["", f"**{machine}**", "", "| cell | size | batch × steps | precision | form | train tokens/s | ms/step | "
             "first step s | × stacked | × stacked f32 | native ops | CudnnRNN ops |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    groups = {}
    for x in rows:
        groups.setdefault((x["cell"], x["size"], x["batch"], x.get("precision", "float32")), []).append(x)
    summary, ceilings_shown = [], False
    for (cell, size, batch, precision), group in groups.items():
        stacked = next((x["train_tokens_per_s"] for x in group if x["form"] == "stacked"), None)
        stacked_f32 = next((x["train_tokens_per_s"] for x in groups.get((cell, size, batch, "float32"), [])
                            if x["form"] == "stacked"), None)
        auto = pick_form(group)
        ceiling = float32_ceiling(groups.get((cell, size, batch, "float32"), []))
        for x in group:
            ratio = _f(x["train_tokens_per_s"] / stacked, 2) if stacked else "–"
            ratio_f32 = _f(x["train_tokens_per_s"] / stacked_f32, 2) if stacked_f32 else "–"
            form = f"**{x['form']}** (auto)" if x["form"] == auto else x["form"]
            if x.get("bf16_products") == "amx":
                form += ", AMX"
            lines.append(f"| {cell} | {size} | {batch} × {x['num_steps']} | {precision} | {form} | "
                         f"{_f(x['train_tokens_per_s'], 0)} | {_f(x['ms_per_step'], 1)} | "
                         f"{_f(x.get('first_step_s', '–'), 1)} | {ratio} | {ratio_f32} | {x['native_ops']} | "
                         f"{x['cudnn']} |")
            if x["form"] == auto and ratio_f32 != "–":
                shown = bool(ceiling) and precision == "float32"
                ceilings_shown |= shown
                bound = f" (float32 ceiling {_f(ceiling, 2)}×)" if shown else ""
                summary.append(f"{cell} {size} {precision}: {auto} {ratio_f32}×{bound}")
    if summary:
        lines += ["", "Auto's form against the float32 cell stack (target ≥ 2× at 2 × 256 and 3 × 512): "
                  + "; ".join(summary) + "."]
    if ceilings_shown:
        lines += ["", "Float32 ceiling: the speed, over the float32 cell stack's, at which the matrix products "
                  "alone would fill every step (the size's training FLOPs per token at this CPU's dense float32 "
                  "matmul rate through TensorFlow, 1024 × 1024, measured in the same run), with nothing left for "
                  "the gates, loss, optimiser or input: no float32 form can pass it. Where it is under 2, the 2× "
                  "target is out of float32's reach on this CPU and only bfloat16 products (the mixed rows) can "
                  "meet it."]
    return lines


def float32_ceiling(rows: list[dict]) -> float | None:
    """The fastest any float32 form could train, over the float32 cell stack's measured speed: the matmul
    rate bench.forms measured (GFLOP/s) over the size's training FLOPs per token. None for rows from before
    bench.forms recorded both."""
    stacked = next((x for x in rows if x["form"] == "stacked"), None)
    if not stacked or not stacked.get("matmul_gflops_f32") or not stacked.get("train_flops_per_token"):
        return None
    return stacked["matmul_gflops_f32"] * 1e9 / stacked["train_flops_per_token"] / stacked["train_tokens_per_s"]


def describe_schedule(schedule: dict | None, end: str = "the deadline (or the last epoch)") -> str:
    """bench.tune's final_schedule or trial_schedule in words; results from before
    it: plateaus."""
    schedule = schedule or {}
    if schedule.get("lr_schedule") == "warmup_cosine":
        return f"{schedule.get('warmup_steps', 0)} warm-up steps, then cosine decay to lr / 10 at {end}"
    return f"halved after {schedule.get('reduce_lr_patience', 2)} epochs without improvement"


def what_4x_needs(r: dict) -> list[str]:
    """The training rate a 4× wall-time ratio would need, from train_vs_d2l's own figures: the book's wall time
    / 4, less what this run spent outside training and validation (start, loading TensorFlow, setup, the sample
    and saving), leaves the seconds in which every training token must go through, with validation, graph
    build and checkpoints taken as free."""
    ours, rl = r["book_config"], r.get("roofline")
    row = next((x for x in r.get("where_time_goes") or [] if x["form"] == ours.get("form")), None)
    if not row or not rl:
        return []
    book_s = (r.get("book_run") or {}).get("process_wall_s") or r["book_reference"]["wall_s"]
    fixed = row["start_s"] + row["load_tensorflow_s"] + row["setup_s"] + row["finish_s"]
    left = book_s / 4 - fixed
    tokens = ours["train_tokens_per_s"] * ours["train_seconds"]
    if left <= 0:
        return [f"What 4× needs: our whole run in {_f(book_s / 4, 1)} s, less than its start, loading TensorFlow, "
                f"setup and the sample and saving alone took here ({_f(fixed, 1)} s).", ""]
    rate = tokens / left
    return [f"What 4× needs: our whole run in {_f(book_s / 4, 1)} s (the book's {_f(book_s, 1)} s / 4). Start, "
            f"loading TensorFlow, setup and the sample and saving took {_f(fixed, 1)} s here, so the "
            f"{_f(tokens / 1e6, 1)} M training tokens would have to go through in the {_f(left, 1)} s left, with "
            f"validation, graph build and checkpoints free: {_f(rate / 1e6, 2)} M tokens/s, "
            f"{_f(rate / row['train_tokens_per_s_steady'], 2)}× this run's steady rate and "
            f"{_f(100 * rate / rl['max_tokens_per_s_matmul_bound'], 0)} % of the matmul bound above.", ""]


def render_time_breakdown(rows: list[dict]) -> list[str]:
    """The train_vs_d2l table of where each form's whole process spends its seconds."""
    head = " | ".join(BREAKDOWN_COLUMNS.values())
    lines = ["Where the time goes (seconds of each whole `trainer.train` process, the forms one after the other in "
             "the same run; start = interpreter and imports before training code, setup = data checks, input "
             "pipeline and model build, graph build = the first epoch's excess over a steady epoch):", "",
             f"| form | {head} | total s | book / ours | best val ppl | steady tokens/s |",
             "|---" * (len(BREAKDOWN_COLUMNS) + 5) + "|"]
    for row in rows:
        lines.append(f"| {row['form']} | " + " | ".join(_f(row[k], 1) for k in BREAKDOWN_COLUMNS)
                     + f" | {_f(row['process_wall_s'], 1)} | {_f(row['wall_ratio_book_over_form'])} | "
                       f"{_f(row['best_val_ppl'])} | {_f(row['train_tokens_per_s_steady'], 0)} |")
    return lines + [""]


def render_shakespeare(r: dict) -> list[str]:
    """The bench.shakespeare section: the figure against nanoGPT's, the curve and the sample."""
    lines = ["## Character-level tinyshakespeare in a time budget (`python -m bench.shakespeare`)",
             f"Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores, GPU: {r['machine']['gpu']}. "
             f"Characters as they are, nanoGPT's split (last 10 % validates); {r['recipe']}: {r['model']}. "
             f"Budget {_f(r['budget_minutes'], 0)} min for everything (preprocessing, a calibration run that sizes "
             f"the schedule, training, evaluation, the sample).", "",
             f"- validation loss over the whole validation stream with the state carried: "
             f"**{_f(r['val_loss_nats'], 4)} nats per character** (epoch {r['best_epoch']} of {r['epochs_run']}; "
             f"target ≤ {_f(r['target_nats'])}: {'reached' if r['reached'] else 'not reached'}); the same model on "
             f"zero-state windows of the TBPTT length: {_f(r['val_window_nats'], 4)}",
             f"- {_f(r['minutes'], 1)} minutes in all, {_f(r['tokens_per_s'], 0)} training tokens/s, "
             f"{r['trained_tokens']:,} training tokens ({r['planned_steps']:,} steps were planned from the "
             f"calibration run's {_f(r['calibration_tokens_per_s'], 0)} tokens/s; training slower than that is stopped "
             "by the deadline "
             "before the schedule ends)",
             f"- nanoGPT's character transformer: {r['nanogpt']['gpu_val_loss_nats']} nats on an A100 (about 3 "
             f"minutes), about {r['nanogpt']['cpu_val_loss_nats']} with its CPU configuration", "",
             "| epoch | train nats | val nats (windows) | val nats (stream) | learning rate | grad norm |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {c['epoch']} | {_f(c['train_nats'], 3)} | {_f(c['val_window_nats'], 3)} | "
              f"{_f(c['val_stream_nats'], 3)} | {_f(c['learning_rate'], 5)} | {_f(c['grad_norm'])} |"
              for c in r["curve"]]
    sample = r["sample"].replace("\n", " / ").replace("|", "\\|").replace("`", "'")
    return lines + ["", f"Sample (prompt {r['sample_prompt']!r}, temperature 0.8): {sample}", ""]


def render_cells(r: dict) -> list[str]:
    lines = ["## Exercise: GRU, LSTM, vanilla RNN and the scratch cell (`python -m bench.cells`)",
             f"Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores. {r['protocol']}; every cell at the "
             f"book's width and at the width closest to the 2 × 32 GRU's {r['gru_2x32_params']:,} parameters. "
             "Wall s = the whole `trainer.train` process.", "",
             "| cell | layers × width | sizing | parameters | best val ppl (epoch) | last val ppl | train ppl | "
             "train tokens/s | wall s | form |", "|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["runs"]:
        lines.append(f"| {x['cell']} | 2 × {x['width']} | {x['sizing']} | {x['num_params']:,} | "
                     f"{_f(x['best_val_ppl'])} ({x['best_epoch']}) | {_f(x['val_ppl'])} | {_f(x['train_ppl'])} | "
                     f"{_f(x['train_tokens_per_s'], 0)} | {_f(x['process_wall_s'], 0)} | {x['form']} |")
    best = min(r["runs"], key=lambda x: x["best_val_ppl"])
    fastest = min(r["runs"], key=lambda x: x["process_wall_s"])
    lines += ["", f"Lowest validation perplexity: {best['cell']} 2 × {best['width']} ({_f(best['best_val_ppl'])}); "
              f"shortest run: {fastest['cell']} 2 × {fastest['width']} ({_f(fastest['process_wall_s'], 0)} s). "
              "The book's recipe (SGD lr 2) is tuned for its GRU; the other cells get it unchanged.", "",
              f"![validation perplexity per epoch, every cell]({r['plot']})", ""]
    return lines


def render_authors(r: dict) -> list[str]:
    models, table = r["models"], r["perplexity"]
    books = list(next(iter(table.values())))
    lines = ["## Exercise: more books, mixed authors (`python -m bench.authors`)",
             f"Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores. {r['model']}; budget {r['budget']}; "
             f"{r['data']}. Each cell: validation perplexity of the model (row) on a book's held-out last 10 % "
             "(column), from `deep_rnn.evaluate`; in brackets the share of characters outside the model's vocabulary.",
             "", "| trained on | " + " | ".join(books) + " | wall s |", "|---" * (len(books) + 2) + "|"]
    for name, row in table.items():
        ev = models[name]["evaluation"]
        lines.append(f"| {name} | " + " | ".join(
            f"{_f(row[b])}" + (f" ({_f(100 * ev[b]['unknown_rate'], 2)} %)" if ev[b]["unknown_rate"] else "")
            for b in books) + f" | {_f(models[name]['process_wall_s'], 0)} |")
    lines += ["", "| trained on | training characters | passes over its data in the budget | vocabulary | "
              "authors' shares |", "|---|---|---|---|---|"]
    for name, m in models.items():
        shares = ", ".join(f"{a} {_f(100 * s, 0)} %" for a, s in m["author_share"].items())
        lines.append(f"| {name} | {m['training_tokens']:,} | {_f(m['epochs_of_data_in_budget'], 1)} | "
                     f"{m['vocab_size']} | {shares} |")
    lines += ["", "What the numbers say:"] + [f"- {s}" for s in authors_findings(r)]
    lines += ["", f"![perplexity of each model on each book]({r['plot']})", ""]
    return lines


def authors_findings(r: dict) -> list[str]:
    """Sentences computed from the authors study's numbers (nothing here is typed in by hand)."""
    table, models = r["perplexity"], r["models"]
    names = list(table)
    alone, wells, mixed = names[0], names[1], names[-1]
    books = list(table[alone])
    home, others = books[0], books[2:]  # The Time Machine; the books by other authors

    def mean(row, cols):
        return sum(row[c] for c in cols) / len(cols)

    def change(new, old):
        return f"{_f(100 * (new - old) / old, 1)} %"

    out = [f"On The Time Machine itself: {alone} {_f(table[alone][home])}, {wells} {_f(table[wells][home])}, "
           f"{mixed} {_f(table[mixed][home])} ({change(table[mixed][home], table[alone][home])} against the "
           "one-book model, " + change(table[mixed][home], table[wells][home]) + " against the same-author model): "
           + ("more text helps the original book at this budget" if table[mixed][home] < table[alone][home] else
              "mixing authors costs the original book")
           + ("; the same author's second book helps it most, and the other authors' text takes part of that gain "
              "back: the style averaging the exercise asks about." if table[wells][home] < table[mixed][home] else ".")]
    out.append(f"On the {len(others)} books by other authors (mean over {', '.join(others)}): {alone} "
               f"{_f(mean(table[alone], others))}, {wells} {_f(mean(table[wells], others))}, {mixed} "
               f"{_f(mean(table[mixed], others))} ({change(mean(table[mixed], others), mean(table[alone], others))} "
               "against the one-book model); only the six-book model saw those authors (their first 90 %).")
    drift = models[alone]["unknown_characters"]
    if drift:
        worst = max(drift, key=lambda b: models[alone]["evaluation"][b]["unknown_rate"])
        chars = ", ".join(f"{c!r} ×{n}" for c, n in drift[worst][:5])
        out.append(f"Vocabulary drift: The Time Machine's {models[alone]['vocab_size']} characters miss some the other "
                   f"books use; the worst is {worst}, with "
                   f"{_f(100 * models[alone]['evaluation'][worst]['unknown_rate'], 2)} % "
                   f"of its characters unknown to the one-book model ({chars}): typographic quotes and dashes of the "
                   "Gutenberg editions, which the d2l normaliser would map to spaces.")
    share = models[mixed]["author_share"]
    top = max(share, key=share.get)
    out.append(f"Shares: in the six-book data {top} has {_f(100 * share[top], 0)} % of the characters and Wells "
               f"{_f(100 * share.get('Wells', 0), 0)} %; the same budget is "
               f"{_f(models[alone]['epochs_of_data_in_budget'], 1)} "
               f"passes over The Time Machine but {_f(models[mixed]['epochs_of_data_in_budget'], 1)} over six books; "
               f"best epochs (of {r['epochs']}, the best one restored): " + ", ".join(
                   f"{name} {m['best_epoch']}" for name, m in models.items()) + ".")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=cli.HelpFormatter,
                                     epilog=cli.examples_from(__doc__))
    parser.add_argument("--only", nargs="+", choices=BENCHES + STUDIES, default=BENCHES,
                        help="benchmarks to run (the studies, cells and authors, run only when named: make study)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite RESULTS.md from bench/results/*.json without running anything")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if not args.report_only:
        for name in args.only:
            subprocess.run([sys.executable, "-m", f"bench.{name}", *BENCH_FLAGS.get(name, [])], cwd=ROOT, check=True)
    results = {}
    for name in BENCHES + STUDIES:
        path = result_path(name)
        if path.exists():
            results[name] = json.loads(path.read_text())
    (ROOT / "bench" / "RESULTS.md").write_text(render(results))
    print((ROOT / "bench" / "RESULTS.md").read_text())


if __name__ == "__main__":
    main()
