"""RUN_DIR/report.md and report.html: what a user reads after a run."""
from __future__ import annotations

import base64
import csv
import html
import json
import os
import re

from pipeline import atomic


def _load(path: str, default=None):
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def build_report(run_dir: str, serving: dict) -> str:
    """Markdown report of a finished run; `serving` holds what the final gRPC queries measured."""
    data = _load(os.path.join(run_dir, "data", "metadata.json"), {})
    metrics = _load(os.path.join(run_dir, "model", "metrics.json"), {})
    config = _load(os.path.join(run_dir, "config.json"), {})
    vocab_path = os.path.join(run_dir, "data", "vocab.txt")
    vocab = open(vocab_path, encoding="utf-8").read().split("\n")[:-1] if os.path.exists(vocab_path) else []
    parts = [f"# Deep RNN pipeline report: `{os.path.abspath(run_dir)}`", ""]
    parts += ["## Corpus", _table(["source", "bytes", "sha256"],
                                   [[s["path"], s["bytes"], s["sha256"][:16] + "…"] for s in data.get("sources", [])]),
              "", f"- normaliser `{data.get('normalize')}`, tokenizer `{data.get('tokenizer')}`, "
                  f"{data.get('total_tokens', 0):,} tokens after normalisation",
              f"- vocabulary: {data.get('vocab_size')} tokens (sha256 {str(data.get('vocab_sha256', ''))[:16]}…); "
              f"most frequent: {', '.join(repr(t) for t in vocab[1:11])}",
              f"- split `{data.get('config', {}).get('split')}`: {data.get('windows', {}).get('train', 0):,} training and "
              f"{data.get('windows', {}).get('valid', 0):,} validation windows of {data.get('num_steps', 0) + 1} tokens", ""]
    if os.path.exists(os.path.join(run_dir, "tuning", "trials.csv")):
        rows = list(csv.DictReader(open(os.path.join(run_dir, "tuning", "trials.csv"))))
        rows.sort(key=lambda r: float(r["val_perplexity"]) if r["val_perplexity"] not in ("", "nan") else 1e9)
        parts += ["## Tuning", _table(["trial", "cell", "layers", "hiddens", "optimizer", "lr", "val ppl", "params",
                                       "tokens/s", "status"],
                                      [[r["trial_id"], r["cell"], r["num_layers"], r["num_hiddens"], r["optimizer"],
                                        f"{float(r['lr']):.3g}" if r["lr"] else "", f"{float(r['val_perplexity']):.3f}",
                                        r["num_params"], f"{float(r['train_tokens_per_s']):,.0f}", r["status"]]
                                       for r in rows[:20]]),
                  "", "![Pareto front](tuning/pareto.png)", ""]
    if metrics:
        h = metrics["hparams"]
        parts += ["## Training",
                  f"- model: {h['num_layers']} × {h['num_hiddens']} {h['cell'].upper()} ({metrics['num_params']:,} "
                  f"parameters, form `{metrics['form']}`), {metrics['epochs']} epochs, {h['optimizer']} lr {h['lr']}, "
                  f"batch {h['batch_size']}, clip {h['clip_norm']}",
                  f"- final train perplexity **{metrics['train_ppl']:.3f}** ({metrics['train_bpc']:.3f} bits/token), "
                  f"validation perplexity **{metrics['val_ppl']:.3f}** ({metrics['val_bpc']:.3f} bits/token); "
                  f"best validation {metrics['best_val_ppl']:.3f} at epoch {metrics['best_epoch']}",
                  f"- throughput {metrics['train_tokens_per_s']:,.0f} training tokens/s on {metrics['device']}; "
                  f"training time {metrics['train_seconds']:.1f} s", "",
                  "![training curves](model/curves.png)", ""]
    if serving:
        parts += ["## Serving", f"- endpoint: {serving['server']} ({serving['kind']}), model version {serving.get('version')}",
                  "- signatures: " + ", ".join(f"`{s}`" for s in serving.get("signatures", [])),
                  f"- gRPC latency of `serving_default` ('it has', 20 chars) over {serving['latency']['n']} calls: "
                  f"p50 {serving['latency']['p50_ms']:.2f} ms, p99 {serving['latency']['p99_ms']:.2f} ms", "",
                  "### Generations", _table(["decoding", "text"],
                                            [[k, "`" + v.replace("|", "\\|") + "`"]
                                             for k, v in serving.get("samples", {}).items()]), ""]
    if config:
        parts += ["## Effective configuration", "```json", json.dumps(config, indent=2), "```", ""]
    return "\n".join(parts)


def markdown_to_html(markdown: str, run_dir: str) -> str:
    """A small self-contained rendering: tables, headings, lists; images embedded as data URIs."""
    out, in_table, in_code = [], False, False
    for line in markdown.split("\n"):
        if line.startswith("```"):
            out.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            out.append(html.escape(line))
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            if set(line) <= set("|-"):
                continue
            if not in_table:
                out.append("<table>")
                in_table = True
            out.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            path = os.path.join(run_dir, src.rstrip(")"))
            if os.path.exists(path):
                data = base64.b64encode(open(path, "rb").read()).decode()
                out.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.startswith("- "):
            out.append(f"<li>{_inline(line[2:])}</li>")
        elif line:
            out.append(f"<p>{_inline(line)}</p>")
    if in_table:
        out.append("</table>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
             "td{border:1px solid #ccc;padding:2px 6px}code{background:#f4f4f4}")
    return f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style><title>report</title></head>" \
           f"<body>{''.join(out)}</body></html>"


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def write_report(run_dir: str, serving: dict) -> str:
    markdown = build_report(run_dir, serving)
    atomic.write_text(os.path.join(run_dir, "report.md"), markdown)
    atomic.write_text(os.path.join(run_dir, "report.html"), markdown_to_html(markdown, run_dir))
    return os.path.join(run_dir, "report.md")
