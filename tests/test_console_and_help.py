"""What a person sees: every command's --help (texts, defaults, examples, no TensorFlow import) and the
console filter that keeps TensorFlow's C++ start-up lines in the stage logs only."""
from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

import pytest

from common import console
from tests.conftest import ROOT

# The stages a user types (README, DESIGN.md's command-line contract); each has an example in its --help.
STAGES = ("deep_rnn.run_all", "deep_rnn.evaluate", "pipeline.preprocess", "trainer.tune", "trainer.train",
          "serving.export", "serving.server", "serving.client")


def cli_modules() -> list[str]:
    """Every command of ours (a module with build_parser(), found from the source, so a new one is covered)."""
    found = []
    for package in ("common", "pipeline", "trainer", "serving", "deep_rnn", "bench"):
        for path in sorted((ROOT / package).glob("*.py")):
            if "\ndef build_parser(" in path.read_text():
                found.append(f"{package}.{path.stem}")
    return found


def test_the_stages_are_among_the_discovered_commands():
    assert set(STAGES) <= set(cli_modules())


@pytest.mark.parametrize("module", cli_modules())
def test_every_option_has_help_text_and_shows_its_default(module):
    mod = importlib.import_module(module)
    assert hasattr(mod, "build_parser"), f"{module}: expose build_parser() so its options can be checked"
    parser = mod.build_parser()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue  # -h itself; internal options hidden on purpose (bench.forms --row)
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"{module} {name}: no help text"
        if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
            shown = formatter._get_help_string(action)  # what --help prints for it, before %-expansion
            assert "default" in shown.lower(), f"{module} {name}: --help does not show its default {action.default!r}"


@pytest.mark.parametrize("module", cli_modules())
def test_every_help_has_an_example(module):
    parser = importlib.import_module(module).build_parser()
    assert "python -m " in (parser.epilog or ""), f"{module}: --help shows no example command"


def test_help_returns_without_importing_tensorflow():
    """Every stage's --help in a fresh interpreter: exit 0, usage printed, TensorFlow/Keras never imported."""
    script = f"""
import contextlib, io, json, runpy, sys, time
report = {{}}
for module in {list(STAGES)!r}:
    sys.argv = [module, "--help"]
    out, start = io.StringIO(), time.perf_counter()
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_module(module, run_name="__main__")
        except SystemExit as exit:
            code = exit.code
    heavy = sorted(m for m in ("tensorflow", "keras", "apache_beam", "grpc") if m in sys.modules)
    report[module] = {{"code": code, "usage": out.getvalue().startswith("usage:"), "heavy": heavy,
                      "seconds": time.perf_counter() - start}}
print(json.dumps(report))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    for module, facts in report.items():
        assert facts["code"] in (0, None) and facts["usage"], (module, facts)
        assert facts["heavy"] == [], f"{module} --help imported {facts['heavy']}"


# Lines recorded from TF 2.21 stages on the AMD EPYC and Intel Xeon machines, and older TF formats.
NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795456489.947343    4029 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders.",
    "I0000 00:00:1795456489.947718    4029 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU "
    "will not be used.",
    "E0000 00:00:1795456543.683160    4083 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    "Failed call to cuInit: UNKNOWN ERROR (303)",
    "E0000 00:00:1795456551.717372    4083 util.cc:131] oneDNN supports DT_INT32 only on platforms with AVX-512. "
    "Falling back to the default Eigen-based implementation if present.",
    "W1123 17:56:23.052000  4083 cpu_feature_guard.cc:210] This TensorFlow binary is optimized to use available "
    "CPU instructions in performance-critical operations.",
    "To enable the following instructions: AMX_TILE AMX_INT8 AMX_BF16, in other operations, rebuild TensorFlow "
    "with the appropriate compiler flags.",
    "2024-03-01 10:00:00.123456: I tensorflow/core/util/port.cc:113] oneDNN custom operations are on.",
    "WARNING:root:apitools not found, and bigquery client libraries are not available despite the import not "
    "raising an ImportError.",
]
KEPT = [
    "epoch 3/100, perplexity 17.190, val perplexity 16.635, 0.60 M tokens/s, 0.7 s",
    "error: trainer.train: --batch-size 100000 is larger than the 9765 training windows",
    "Traceback (most recent call last):",
    "E2E test passed",
    "I0000 is a strange word to start a line with",
    "train: 3 epochs, train perplexity 17.19, validation perplexity 16.64",
]


@pytest.mark.parametrize("line", NOISE)
def test_tensorflow_start_up_lines_are_noise(line):
    assert console.is_noise(line)


@pytest.mark.parametrize("line", KEPT)
def test_a_stage_s_own_lines_are_kept(line):
    assert not console.is_noise(line)


def test_run_logged_keeps_everything_in_the_log_and_only_the_stage_s_lines_on_the_console(tmp_path):
    child = "\n".join([
        "import sys",
        f"print({NOISE[0]!r}, file=sys.stderr, flush=True)",
        f"print({NOISE[1]!r}, file=sys.stderr, flush=True)",
        "print('epoch 1/2, perplexity 20.000', flush=True)",
        f"print({NOISE[3]!r}, file=sys.stderr, flush=True)",
        "print('error: something the user must see', file=sys.stderr, flush=True)",
        "sys.exit(3)",
    ])
    shown: list[str] = []
    log = tmp_path / "logs" / "stage.log"
    code = console.run_logged([sys.executable, "-c", child], str(log), echo=shown.append)
    assert code == 3
    assert shown == ["epoch 1/2, perplexity 20.000", "error: something the user must see"]
    text = log.read_text()
    for line in (NOISE[0], NOISE[1], NOISE[3], "epoch 1/2", "error: something"):
        assert line in text
    assert console.tail(str(log), 2) == [NOISE[3], "error: something the user must see"]


def test_stderr_to_sends_file_descriptor_2_to_the_log_and_restores_it(tmp_path):
    log = tmp_path / "serve.log"
    script = f"""
import os, sys
from common import console
with console.stderr_to({str(log)!r}):
    os.write(2, b"I0000 00:00:1.0 1 x.cc:1] from C++\\n")
    print("from python", file=sys.stderr)
print("after", file=sys.stderr)
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "from C++" in log.read_text() and "from python" in log.read_text()
    assert proc.stderr.strip() == "after"
