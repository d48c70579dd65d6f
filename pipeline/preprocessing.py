"""The preprocessing stage as a library: corpora → TFRecord windows, vocabulary and metadata in one directory,
written atomically (Apache Beam does the reading, tokenizing and writing)."""
from __future__ import annotations

import contextlib
import errno
import glob
import io
import json
import logging
import os
import shutil
from collections.abc import Sequence

from common import atomic
from common import vocab as vocab_lib
from common.cli import UserError
from pipeline import sources, transform

SIDE_FILES = ("vocab", "shards", "sources", "tokens", "errors")
# Runners Beam knows by a class path only, by the name its docs use (Beam's own create_runner knows the rest)
RUNNER_PATHS = {"DaskRunner": "apache_beam.runners.dask.dask_runner.DaskRunner"}


# Beam's in-process runner, the one the tests run. Beam 2.77's own default, DirectRunner, first tries to
# download a Prism binary from github.com on every run and falls back to this runner when it cannot
# (leaving an empty temporary directory behind); --runner=DirectRunner still gets that behaviour.
DEFAULT_RUNNER = "FnApiRunner"


def _beam_options(beam_args: Sequence[str]):
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    bad = [a for a in beam_args if not a.startswith("--")]
    if bad:
        raise UserError(f"unexpected argument {bad[0]!r}")
    options = PipelineOptions(list(beam_args))
    _check_parses(options)
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = DEFAULT_RUNNER  # known good: Beam builds it once, when the pipeline runs
        return options
    from apache_beam.runners.runner import create_runner

    name = standard.runner if isinstance(standard.runner, str) else type(standard.runner).__name__
    standard.runner = RUNNER_PATHS.get(name, name)
    try:
        create_runner(standard.runner)
    except (ValueError, ImportError) as err:
        reason = " ".join(str(err).split())[:300]
        if isinstance(err, ImportError) and "dask" in standard.runner.lower():
            reason = "the dask extra is not installed (pip install 'deep-rnn-pipeline[dask]')"
        raise UserError(f"--runner={name}: {reason}") from None
    return options


def _check_parses(options) -> None:
    """Beam parses its options with argparse when they are first read; a bad value there prints Beam's whole
    usage (about 100 lines) and exits. That becomes one UserError line naming the option instead."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            options.get_all_options()
    except SystemExit:
        errors = [line.split("error: ", 1)[1] for line in printed.getvalue().splitlines() if "error: " in line]
        raise UserError(f"Beam option: {errors[-1] if errors else printed.getvalue().strip()[-300:]}") from None


def _tells_of_a_full_disk(message: str) -> bool:
    """Whether a worker's error, as Beam passes it on (`OSError: [Errno 28] ...`), is a full disk or quota."""
    return any(f"[Errno {code}]" in message for code in (errno.ENOSPC, errno.EDQUOT))


class _FullDiskFilter(logging.Filter):
    """Drops Beam's ERROR log (with traceback) of a worker that ran out of disk: preprocess reports it in one
    line. Any other failure keeps its log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _tells_of_a_full_disk(record.getMessage())


@contextlib.contextmanager
def _full_disk_not_logged():
    logger, quiet = logging.getLogger("apache_beam.runners.common"), _FullDiskFilter()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def run_beam(files: list[str], out_dir: str, cfg: transform.PreprocessConfig, beam_args: Sequence[str]) -> dict:
    """Runs the Beam graph into out_dir and returns the facts it gathered."""
    import apache_beam as beam
    from apache_beam.io.filesystems import FileSystems

    from pipeline import beam_graph

    with _full_disk_not_logged(), beam.Pipeline(options=_beam_options(beam_args)) as p:
        beam_graph.build(p, files, cfg, out_dir)
    path = os.path.join(out_dir, beam_graph.FACTS_FILE)
    try:
        with FileSystems.open(path) as f:
            facts = json.loads(f.read())
    except (OSError, ValueError) as err:
        raise UserError(f"the Beam runner finished without writing the stage's facts ({err})") from None
    FileSystems.delete([path])
    if _is_url(out_dir):
        _delete_prefix(out_dir + "/beam-temp-")
    for leftover in glob.glob(os.path.join(glob.escape(out_dir), "beam-temp-*")):
        shutil.rmtree(leftover)  # a runner that ran a write's set-up more than once leaves its unused folders
    missing = [name for name in SIDE_FILES if name not in facts]
    if missing:
        raise UserError(f"the Beam runner's facts lack {', '.join(missing)}")
    return facts


def check_facts(facts: dict, cfg: transform.PreprocessConfig) -> dict[str, int]:
    """Raises UserError for failed files or a corpus too short; returns windows per split."""
    errors = sorted(facts["errors"])
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UserError(errors[0] + more)
    total = facts["vocab"]["total_tokens"]
    size = len(facts["vocab"]["vocab"])
    if size > transform.MAX_VOCAB:
        raise UserError(f"the vocabulary has {size} tokens, more than the {transform.MAX_VOCAB} a model can take; "
                        f"cap it with --max-tokens or --min-freq")
    if total == 0:
        raise UserError("the corpus is empty after normalisation: no tokens to learn from")
    counts = {split: sum(s["records"] for s in facts["shards"] if s["split"] == split) for split in ("train", "valid")}
    if cfg.split == "d2l":
        need = cfg.num_train + cfg.num_val + cfg.num_steps
        if counts["train"] < cfg.num_train or counts["valid"] < cfg.num_val:
            raise UserError(f"the corpus has {total} tokens but the d2l split needs {need} "
                            f"(num_train + num_val + num_steps); lower --num-train/--num-val or use --split holdout")
    else:
        for split in ("train", "valid"):
            if counts[split] == 0:
                raise UserError(f"the corpus ({total} tokens) is too short for one {split} window of "
                                f"{cfg.num_steps + 1} tokens; lower --num-steps or change --valid-fraction")
    return counts


def source_table(facts: dict, cfg: transform.PreprocessConfig) -> list[dict]:
    """metadata.json's `sources`: per input, in order, what was read and what it gave."""
    tokens = [n for _, n in sorted(facts["tokens"])]
    rows = [dict(info) for _, info in sorted(facts["sources"], key=lambda item: item[0])]
    for row, n, windows in zip(rows, tokens, transform.source_windows(tokens, cfg)):
        row.update(tokens=n, windows=windows)
    return rows


def _put(path: str, text: str) -> None:
    """A file of the output: atomically on a local disk, through Beam's filesystems elsewhere."""
    if not _is_url(path):
        atomic.write_text(path, text)
        return
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path) as f:
        f.write(text.encode("utf-8"))


def _is_url(path: str) -> bool:
    return "://" in path


def write_metadata(out_dir: str, facts: dict, counts: dict, cfg: transform.PreprocessConfig,
                   beam_args: Sequence[str]) -> dict:
    import apache_beam as beam

    vocab = facts["vocab"]["vocab"]
    _put(os.path.join(out_dir, "vocab.txt"), vocab_lib.vocab_to_text(vocab))
    metadata = {
        "sources": source_table(facts, cfg),
        "config": cfg.to_dict(),
        "normalize": cfg.normalize,
        "tokenizer": cfg.tokenizer,
        "num_steps": cfg.num_steps,
        "vocab_size": len(vocab),
        "vocab_sha256": vocab_lib.vocab_sha256(vocab),
        "total_tokens": facts["vocab"]["total_tokens"],
        "windows": counts,
        "shards": sorted(facts["shards"], key=lambda s: s["file"]),
        "beam_version": beam.__version__,  # the engine that ran it (runner, options) is not part of the data
    }
    _put(os.path.join(out_dir, "metadata.json"), json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    return metadata


def check_output_apart_from_inputs(output: str, files: Sequence[str]) -> None:
    """UserError when the output directory equals, contains or lies inside an input: replacing it would
    delete the corpus (or, with --output ., the working directory)."""
    out = os.path.realpath(output)
    for path in files:
        if "://" in path:
            continue
        src = os.path.realpath(path)
        if out == src or src.startswith(out + os.sep) or out.startswith(src + os.sep):
            raise UserError(f"--output {output}: holds the input {path}; choose an output directory apart from "
                            f"the corpus")


def preprocess(corpus: Sequence[str], output: str, cfg: transform.PreprocessConfig,
               beam_args: Sequence[str] = ()) -> dict:
    """The whole stage: resolve sources, run Beam, validate, write metadata; atomic on a local `output`, and
    written then marked (metadata.json last) on any other Beam filesystem."""
    if _is_url(output):
        return _preprocess_to_url(sources.resolve_sources(list(corpus)), output.rstrip("/"), cfg, beam_args)
    if os.path.exists(output) and not os.path.isdir(output):
        raise UserError(f"{output}: exists and is not a directory")
    files = sources.resolve_sources(list(corpus))
    check_output_apart_from_inputs(output, files)
    atomic.check_replaceable(os.path.abspath(output))  # before Beam runs, not after minutes of work
    parent = os.path.dirname(os.path.abspath(output))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as err:
        raise UserError(f"--output {output}: cannot create {parent}: {err.strerror or err}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--output {output}: {parent} is not writable")
    try:
        with atomic.atomic_directory(output, "pipeline.preprocess") as tmp:
            facts = run_beam(files, tmp, cfg, beam_args)
            counts = check_facts(facts, cfg)
            return write_metadata(tmp, facts, counts, cfg, beam_args)
    except (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError) as err:
        raise UserError(f"--output {output}: cannot write: {err.strerror or err}") from None
    except RuntimeError as err:  # Beam's runners re-raise a worker's OSError as RuntimeError("OSError: ...")
        if _tells_of_a_full_disk(str(err)):
            raise UserError(f"--output {output}: no space left on device (nothing was published)") from None
        raise


def _files_under(prefix: str) -> list[str]:
    """Every file whose path starts with `prefix`, on any Beam filesystem."""
    from apache_beam.io.filesystems import FileSystems

    return sorted(m.path for m in FileSystems.match([prefix + "*"])[0].metadata_list)


def _delete_prefix(prefix: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    found = _files_under(prefix)
    if found:
        FileSystems.delete(found)


def _preprocess_to_url(files: list[str], output: str, cfg: transform.PreprocessConfig,
                       beam_args: Sequence[str]) -> dict:
    """Output on a filesystem without atomic renames (gs://, s3://, ...), as Beam's own file writes do it: the
    workers write into a staging prefix beside the output; then the old output (only one this project wrote: its
    marker file) loses its metadata.json first and its files next, the staged files move in, and metadata.json
    comes last, so a reader that finds metadata.json finds a whole output."""
    import uuid

    from apache_beam.io.filesystems import FileSystems

    existing = _files_under(output + "/")
    if existing and output + "/" + atomic.MARKER not in existing:
        raise UserError(f"--output {output}: holds files this pipeline did not write; refusing to replace them")
    staging = f"{output}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _put(f"{staging}/{atomic.MARKER}", "pipeline.preprocess\n")
        facts = run_beam(files, staging, cfg, beam_args)
        counts = check_facts(facts, cfg)
        metadata = write_metadata(staging, facts, counts, cfg, beam_args)
        if existing:
            if output + "/metadata.json" in existing:
                FileSystems.delete([output + "/metadata.json"])  # readers see an incomplete output from here
            FileSystems.delete([p for p in existing if not p.endswith("/metadata.json")])
        staged = [p for p in _files_under(staging + "/") if not p.endswith("/metadata.json")]
        FileSystems.rename(staged, [output + p[len(staging):] for p in staged])
        FileSystems.rename([staging + "/metadata.json"], [output + "/metadata.json"])  # the output is whole
        return metadata
    finally:
        _delete_prefix(staging + "/")
