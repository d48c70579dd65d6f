"""RUN_DIR/report.md and report.html: what a user reads after a run."""
from __future__ import annotations

import base64
import csv
import html
import json
import os

import markdown
from markdown.extensions import Extension
from markdown.treeprocessors import Treeprocessor

from common import atomic


def _load(path: str, default=None):
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def _table(header: list[str], rows: list[list]) -> str:
    """A Markdown table (the first row is the header)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _book_comparison(metrics: dict, data: dict) -> list[str]:
    """Our run beside the book's own (DESIGN.md's reference figures), with what differs said plainly."""
    from common.book import BOOK_REFERENCE

    h = metrics["hparams"]
    ours = f"{h['num_layers']} × {h['num_hiddens']} {h['cell'].upper()}, {metrics['epochs']} epochs"
    same = (h["cell"], h["num_layers"], h["num_hiddens"], data.get("config", {}).get("split"),
            data.get("normalize")) == ("gru", 2, 32, "d2l", "d2l")
    rows = [["validation perplexity", f"{metrics['val_ppl']:.3f} (best {metrics['best_val_ppl']:.3f})",
             f"{BOOK_REFERENCE['val_ppl']}"],
            ["train perplexity", f"{metrics['train_ppl']:.3f}", f"{BOOK_REFERENCE['train_ppl']}"],
            ["training tokens/s", f"{metrics['train_tokens_per_s']:,.0f}",
             f"{BOOK_REFERENCE['train_tokens_per_s']:,.0f}"],
            ["greedy sample", f"`{metrics.get('sample', '')}`", f"`{BOOK_REFERENCE['sample']}`"]]
    note = ("Same model and data protocol as the book's run." if same else
            "The book's figures are for its 2 × 32 GRU on *The Time Machine* (d2l split, 100 epochs); this run "
            f"differs ({ours}), so they are a landmark, not a like-for-like comparison.")
    return ["### Against the book", _table(["", f"this run ({ours})", "the book (d2l PyTorch, 2 × 32 GRU)"], rows),
            "", note, ""]


def build_report(run_dir: str, serving: dict) -> str:
    """Markdown report of a finished run; `serving` holds what the final gRPC queries measured."""
    data = _load(os.path.join(run_dir, "data", "metadata.json"), {})
    metrics = _load(os.path.join(run_dir, "model", "metrics.json"), {})
    config = _load(os.path.join(run_dir, "config.json"), {})
    vocab_path = os.path.join(run_dir, "data", "vocab.txt")
    vocab = open(vocab_path, encoding="utf-8").read().split("\n")[:-1] if os.path.exists(vocab_path) else []
    parts = [f"# Deep RNN pipeline report: `{os.path.abspath(run_dir)}`", ""]
    parts += ["## Corpus", "", _table(["source", "bytes", "sha256"],
                                       [[f"`{s['path']}`", f"{s['bytes']:,}", f"`{s['sha256'][:16]}…`"]
                                        for s in data.get("sources", [])]),
              "", f"- normaliser `{data.get('normalize')}`, tokenizer `{data.get('tokenizer')}`, "
                  f"{data.get('total_tokens', 0):,} tokens after normalisation",
              f"- vocabulary: {data.get('vocab_size')} tokens (sha256 `{str(data.get('vocab_sha256', ''))[:16]}…`); "
              f"most frequent: {', '.join(repr(t) for t in vocab[1:11])}",
              f"- split `{data.get('config', {}).get('split')}`: "
              f"{data.get('windows', {}).get('train', 0):,} training and "
              f"{data.get('windows', {}).get('valid', 0):,} validation windows of "
              f"{data.get('num_steps', 0) + 1} tokens",
              ""]
    if os.path.exists(os.path.join(run_dir, "tuning", "trials.csv")):
        rows = list(csv.DictReader(open(os.path.join(run_dir, "tuning", "trials.csv"))))
        rows.sort(key=lambda r: float(r["val_perplexity"]) if r["val_perplexity"] not in ("", "nan") else 1e9)
        parts += ["## Tuning", "", _table(["trial", "cell", "layers", "hiddens", "optimizer", "lr", "val ppl", "params",
                                           "tokens/s", "status"],
                                          [[r["trial_id"], r["cell"], r["num_layers"], r["num_hiddens"], r["optimizer"],
                                            f"{float(r['lr']):.3g}" if r["lr"] else "",
                                            f"{float(r['val_perplexity']):.3f}",
                                            r["num_params"], f"{float(r['train_tokens_per_s']):,.0f}", r["status"]]
                                           for r in rows[:20]]),
                  "", "![Pareto front: validation perplexity against parameters](tuning/pareto.png)", ""]
    if metrics:
        h = metrics["hparams"]
        parts += ["## Training", "",
                  f"- model: {h['num_layers']} × {h['num_hiddens']} {h['cell'].upper()} ({metrics['num_params']:,} "
                  f"parameters, form `{metrics['form']}`), {metrics['epochs']} epochs, {h['optimizer']} lr {h['lr']}, "
                  f"batch {h['batch_size']}, clip {h['clip_norm']}",
                  f"- final train perplexity **{metrics['train_ppl']:.3f}** ({metrics['train_bpc']:.3f} bits/token), "
                  f"validation perplexity **{metrics['val_ppl']:.3f}** ({metrics['val_bpc']:.3f} bits/token); "
                  f"best validation {metrics['best_val_ppl']:.3f} at epoch {metrics['best_epoch']} "
                  "(the exported weights)",
                  *([f"- full-context validation perplexity (each source's whole held-out stream, state carried): "
                     f"**{metrics['best_val_stream_ppl']:.3f}** for the exported weights"
                     + (' (they were chosen by it: --stateful)'
                        if metrics.get('selected_by') == 'val_stream_perplexity' else '')]
                    if isinstance(metrics.get("best_val_stream_ppl"), float)
                    and metrics["best_val_stream_ppl"] == metrics["best_val_stream_ppl"] else []),
                  f"- throughput {metrics['train_tokens_per_s']:,.0f} training tokens/s on {metrics['device']}; "
                  f"training time {metrics['train_seconds']:.1f} s", "",
                  "![training curves: perplexity per epoch](model/curves.png)", ""]
        parts += _book_comparison(metrics, data)
        if metrics.get("per_source"):
            parts += ["### Per source", "",
                      "Validation perplexity of the exported model on each source's held-out part:",
                      "", _table(["source", "validation perplexity", "bits/token"],
                                 [[f"`{r['source']}`", f"{r['val_perplexity']:.3f}", f"{r['val_bits_per_token']:.3f}"]
                                  for r in metrics["per_source"]]), ""]
    if serving:
        parts += ["## Serving", "",
                  f"- endpoint: {serving['server']} ({serving['kind']}), model version {serving.get('version')}",
                  "- signatures: " + ", ".join(f"`{s}`" for s in serving.get("signatures", [])),
                  f"- gRPC latency of `serving_default` ('it has', 20 chars) over {serving['latency']['n']} calls: "
                  f"p50 {serving['latency']['p50_ms']:.2f} ms, p99 {serving['latency']['p99_ms']:.2f} ms", "",
                  "### Generations", "", _table(["decoding", "text"],
                                                [[k, "`" + v.replace("|", "\\|") + "`"]
                                                 for k, v in serving.get("samples", {}).items()]), ""]
    if config:
        parts += ["## Effective configuration", "", "```json", json.dumps(config, indent=2), "```", ""]
    return "\n".join(parts)


class _EmbedImages(Treeprocessor):
    """Replaces each <img src="relative.png"> with a data: URI, so report.html is one self-contained file."""

    def __init__(self, md, run_dir: str):
        super().__init__(md)
        self.run_dir = run_dir

    def run(self, root):
        for img in root.iter("img"):
            path = os.path.join(self.run_dir, img.get("src", ""))
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    img.set("src", "data:image/png;base64," + base64.b64encode(f.read()).decode())


class _EmbedImagesExtension(Extension):
    def __init__(self, run_dir: str):
        super().__init__()
        self.run_dir = run_dir

    def extendMarkdown(self, md):  # noqa: N802 - Markdown's API
        md.treeprocessors.register(_EmbedImages(md, self.run_dir), "embed_images", 0)


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 62em; margin: 2em auto; padding: 0 1em; line-height: 1.45;
       color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; display: block; max-width: 100%; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td code { white-space: pre-wrap; word-break: break-word; }
code { background: #f4f4f4; padding: 0 2px; }
pre { background: #f7f7f7; border: 1px solid #ddd; padding: 0.6em; overflow-x: auto; max-width: 100%; }
pre code { background: none; padding: 0; }
img { max-width: 100%; height: auto; }
"""


def markdown_to_html(markdown_text: str, run_dir: str) -> str:
    """report.md rendered by the Markdown library (tables, fenced code), images embedded as data URIs."""
    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code", _EmbedImagesExtension(run_dir)],
                             output_format="html")
    title = html.escape(f"Deep RNN run {os.path.basename(os.path.abspath(run_dir))}")
    return (f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{title}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


def write_report(run_dir: str, serving: dict) -> str:
    markdown = build_report(run_dir, serving)
    atomic.write_text(os.path.join(run_dir, "report.md"), markdown)
    atomic.write_text(os.path.join(run_dir, "report.html"), markdown_to_html(markdown, run_dir))
    return os.path.join(run_dir, "report.md")
