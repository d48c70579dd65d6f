"""The run report: Markdown rendered by the Markdown library into one self-contained HTML file, checked for its
structure and, in a real headless Chromium, for a page that fits its viewport."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from deep_rnn.report import build_report, write_report

# What the pipeline's serve stage hands the report (measured there; here a fixed input to render).
SERVING = {"server": "127.0.0.1:8500", "kind": "serving.server (local stand-in)", "version": 1,
           "signatures": ["serving_default", "sample", "score"],
           "latency": {"n": 100, "p50_ms": 1.25, "p99_ms": 3.5},
           "samples": {"greedy": "it has a | pipe", "temperature 1.0, seed 0": "it has " + "x" * 300}}


@pytest.fixture(scope="module")
def run_dir(tiny_data, trained, tmp_path_factory):
    """A finished run's layout (data/, model/, config.json) around the session's tiny trained model."""
    run = tmp_path_factory.mktemp("report") / "run"
    run.mkdir()
    shutil.copytree(tiny_data, run / "data")
    shutil.copytree(trained[0], run / "model")
    config = {"corpus": ["timemachine"], "run_dir": str(run), "beam_options": "--a-very-long-option " * 20,
              "tune_options": "--max-layers 4 --max-hiddens 256", "epochs": 2}
    (run / "config.json").write_text(json.dumps(config, indent=2))
    write_report(str(run), SERVING)
    return run


class Outline(HTMLParser):
    """The parts of report.html the checks look at."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.tables: list[dict] = []
        self.pre_texts: list[str] = []
        self.images: list[str] = []
        self.list_items = 0
        self.headings: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.stack.append(tag)
        if tag == "table":
            self.tables.append({"th": 0, "td": 0, "thead": False})
        elif tag in ("th", "td") and self.tables:
            self.tables[-1][tag] += 1
        elif tag == "thead" and self.tables:
            self.tables[-1]["thead"] = True
        elif tag == "pre":
            self.pre_texts.append("")
        elif tag == "img":
            self.images.append(dict(attrs).get("src", ""))
        elif tag == "li":
            self.list_items += 1

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop() != tag:
            pass

    def handle_data(self, data):
        if "pre" in self.stack and self.pre_texts:
            self.pre_texts[-1] += data
        if self.stack and self.stack[-1] in ("h1", "h2", "h3"):
            self.headings.append(data)


def outline(path: Path) -> Outline:
    parser = Outline()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def test_report_html_has_real_tables_lists_code_and_embedded_images(run_dir):
    page = outline(run_dir / "report.html")
    assert len(page.tables) >= 3  # corpus, against the book, generations
    for table in page.tables:
        assert table["thead"] and table["th"] >= 2 and table["td"] >= table["th"], table
    assert page.list_items >= 5
    # The configuration is a multi-line <pre>, parseable as the JSON that was saved.
    config_blocks = [t for t in page.pre_texts if '"run_dir"' in t]
    assert len(config_blocks) == 1 and config_blocks[0].count("\n") > 3
    assert json.loads(config_blocks[0]) == json.loads((run_dir / "config.json").read_text())
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert {"Corpus", "Training", "Against the book", "Serving", "Effective configuration"} <= set(page.headings)


def test_report_puts_the_book_s_figures_beside_ours(run_dir):
    from common.book import BOOK_REFERENCE

    metrics = json.loads((run_dir / "model" / "metrics.json").read_text())
    report = (run_dir / "report.md").read_text()
    section = report.split("### Against the book", 1)[1].split("\n## ", 1)[0]
    assert f"| {BOOK_REFERENCE['val_ppl']} |" in section and f"{metrics['val_ppl']:.3f}" in section
    assert "not a like-for-like comparison" in section  # this run is 2 × 16 on the holdout split


def test_report_shows_per_source_validation_when_a_run_has_several_sources(run_dir, tmp_path):
    metrics = json.loads((run_dir / "model" / "metrics.json").read_text())
    assert "per_source" not in metrics  # one source: no per-source section
    assert "### Per source" not in (run_dir / "report.md").read_text()
    two = tmp_path / "run"
    shutil.copytree(run_dir, two)
    metrics["per_source"] = [{"source": "/books/a.txt", "val_perplexity": 5.5, "val_bits_per_token": 2.46},
                             {"source": "/books/b.txt", "val_perplexity": 7.25, "val_bits_per_token": 2.86}]
    (two / "model" / "metrics.json").write_text(json.dumps(metrics))
    report = build_report(str(two), SERVING)
    assert "### Per source" in report and "| `/books/b.txt` | 7.250 | 2.860 |" in report


def test_training_writes_per_source_validation_for_a_multi_source_holdout_run(tmp_path, timemachine_text):
    """Two sources → two validation parts → metrics.json's per_source, one row each, in source order."""
    from pipeline import transform
    from pipeline.preprocessing import preprocess
    from trainer.config import TrainConfig
    from trainer.training import train_and_evaluate

    half = len(timemachine_text) // 2
    for name, text in (("first.txt", timemachine_text[:half]), ("second.txt", timemachine_text[half:])):
        (tmp_path / name).write_text(text)
    preprocess([str(tmp_path / "first.txt"), str(tmp_path / "second.txt")], str(tmp_path / "data"),
               transform.PreprocessConfig(num_steps=16))
    metrics = train_and_evaluate(TrainConfig.from_flat(num_layers=1, num_hiddens=8, batch_size=256, epochs=1,
                                                       progress="none",
                                             sample_chars=5), str(tmp_path / "data"), str(tmp_path / "model"))
    rows = metrics["per_source"]
    assert [os.path.basename(r["source"]) for r in rows] == ["first.txt", "second.txt"]
    assert all(1.0 < r["val_perplexity"] < 40 for r in rows)


# --- a real browser -------------------------------------------------------------------------------------------

def chromium_or_skip() -> str:
    """Debian's chromium, installed with apt-get when missing (root only); skips with the reason otherwise."""
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip("chromium is not installed and apt-get (as root) is not available to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        proc = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
        if proc.returncode != 0:
            pytest.skip(f"could not install chromium ({' '.join(command)}): {proc.stderr.strip()[-300:]}")
    if not shutil.which("chromium"):
        pytest.skip("apt-get installed no chromium binary")
    return shutil.which("chromium")


PROBE = ("<script>window.addEventListener('load', () => { const b = document.body;"
         " b.setAttribute('data-scroll-width', document.documentElement.scrollWidth);"
         " b.setAttribute('data-viewport-width', window.innerWidth);"
         " b.setAttribute('data-images-ok', [...document.images].every(i => i.complete && i.naturalWidth > 0)); });"
         "</script>")


def headless(chromium: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--disable-dev-shm-usage", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("width", [1280, 800])
def test_report_fits_the_viewport_in_headless_chromium(run_dir, tmp_path, width):
    chromium = chromium_or_skip()
    page = tmp_path / "probe.html"
    page.write_text((run_dir / "report.html").read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"),
                    encoding="utf-8")
    dom = headless(chromium, f"--window-size={width},900", "--virtual-time-budget=5000", "--dump-dom",
                   page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = dom.stdout.split("<body", 1)[1].split(">", 1)[0]
    facts = dict(part.split("=", 1) for part in body.split() if "=" in part)
    facts = {k: v.strip('"') for k, v in facts.items()}
    assert facts["data-images-ok"] == "true", facts
    assert int(facts["data-viewport-width"]) == width
    assert int(facts["data-scroll-width"]) <= width, f"the page is wider than a {width}px viewport: {facts}"
    shot = tmp_path / "report.png"
    proc = headless(chromium, f"--window-size={width},900", f"--screenshot={shot}", (run_dir / "report.html").as_uri())
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (width, 900)
