"""Command lines and YAML config files derived from frozen config dataclasses (jsonargparse).

Each stage declares its settings once, as dataclass fields with a default and a docstring of one line; this
module turns a tree of them into `--section.field` flags grouped by section in --help, a `--config FILE` (YAML,
keys nested by section) that any flag overrides, and `--print_config` to show the resolved tree. jsonargparse was
chosen because it builds all three from the dataclasses alone (help from attribute docstrings, validation from
type hints and the classes' own checks) and is what Lightning's CLI is built on.

The flags users typed before keep working: `--num-layers 3` is `--model.num_layers 3` (a field's plain name,
with dashes or underscores, wherever it is unique), `--stateful` alone is `--run.stateful true`, and a list field
takes its values one after the other (`--cells gru lstm`).
"""
from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Sequence
from typing import Any

from common.cli import UserError

TRUE_FALSE = ("true", "false", "1", "0", "yes", "no", "on", "off")


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _is_dataclass_type(hint) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def leaves(sections: dict[str, type]) -> dict[str, Any]:
    """Every field of a tree of dataclasses: 'section.field' (nested sections joined by dots) → its type hint."""
    found = {}
    for name, cls in sections.items():
        for field in dataclasses.fields(cls):
            hint = _hints(cls)[field.name]
            key = f"{name}.{field.name}" if name else field.name
            if _is_dataclass_type(hint):
                found.update(leaves({key: hint}))
            else:
                found[key] = hint
    return found


def kind(hint) -> str:
    """How a field is written on a command line: bool (a flag alone means true), list (items one after the
    other), or value."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if hint is bool or (args and all(a is bool for a in args)):
        return "bool"
    origin = typing.get_origin(hint)
    if origin in (tuple, list) or any(typing.get_origin(a) in (tuple, list) for a in args):
        return "list"
    return "value"


def aliases(sections: dict[str, type], renames: dict[str, str] | None = None) -> dict[str, str]:
    """Plain flag names → 'section.field': each field's own name (dashes or underscores) where it is unique,
    plus `renames` (an old flag's name → its key) for flags whose name changed."""
    keys = leaves(sections)
    by_leaf: dict[str, list[str]] = {}
    for key in keys:
        by_leaf.setdefault(key.rsplit(".", 1)[-1], []).append(key)
    found = {}
    for leaf, candidates in by_leaf.items():
        if len(candidates) == 1:
            found[leaf] = found[leaf.replace("_", "-")] = candidates[0]
    for old, key in (renames or {}).items():
        found[old] = found[old.replace("-", "_")] = key
    return found


def translate(argv: Sequence[str], sections: dict[str, type], renames: dict[str, str] | None = None,
              flags: dict[str, str] | None = None) -> list[str]:
    """argv with plain and dashed flag names rewritten to their `--section.field=value` form; `flags` maps a
    flag that takes no value to the assignment it stands for (e.g. --quiet → run.progress=epoch)."""
    kinds = {key: kind(hint) for key, hint in leaves(sections).items()}
    names = aliases(sections, renames)
    out, i = [], 0
    argv = list(argv)
    while i < len(argv):
        token = argv[i]
        i += 1
        if not token.startswith("--") or token == "--":
            out.append(token)
            continue
        name, eq, value = token[2:].partition("=")
        if (flags or {}).get(name) and not eq:
            out.append("--" + flags[name])
            continue
        key = names.get(name)
        if key is None and "." in name:  # --section.field, any dashes in the field's name
            head, _, leaf = name.rpartition(".")
            key = f"{head}.{leaf.replace('-', '_')}" if f"{head}.{leaf.replace('-', '_')}" in kinds else None
        if key is None:
            out.append(token)
            continue
        form = kinds[key]
        if form == "bool":
            if not eq and i < len(argv) and not argv[i].startswith("--"):  # its value (a bad one is reported)
                value, i = argv[i], i + 1
            value = {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false", "off": "false"}.get(
                value.lower(), value) if value else "true"
            out.append(f"--{key}={value}")
        elif eq:
            out.append(f"--{key}={value}")
        elif form == "value" and i < len(argv) and not argv[i].startswith("--"):
            out.append(f"--{key}={argv[i]}")  # joined, so a value such as -x is not taken for a flag
            i += 1
        elif form == "list":
            values = []
            while i < len(argv) and not argv[i].startswith("--"):
                values.append(argv[i])
                i += 1
            out.append(f"--{key}={json.dumps(values)}")
        else:
            out.append(f"--{key}")
    return out


def pop_value(argv: list[str], flag: str, remove: bool = True) -> str | None:
    """The value of `flag VALUE` (or flag=VALUE) in argv, removed from it unless remove is False; None if absent.
    For the few flags a command reads before parsing (a file of defaults)."""
    for i, token in enumerate(argv):
        if token == flag and i + 1 < len(argv):
            value = argv[i + 1]
            if remove:
                del argv[i:i + 2]
            return value
        if token.startswith(flag + "="):
            if remove:
                del argv[i]
            return token.split("=", 1)[1]
    return None


def split_unknown(argv: Sequence[str], sections: dict[str, type], own: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the flags this command knows, the rest): for commands that pass unknown flags on to another program
    (pipeline.preprocess gives them to Beam). argv must already be translated; a flag's values go with it."""
    known = {"--config", "--print_config", "-h", "--help", *own} | {f"--{key}" for key in leaves(sections)}
    known |= {f"--{name}" for name in sections}
    mine, rest, target = [], [], None
    for token in argv:
        if token.startswith("-") and token not in ("-", "--"):
            target = mine if token.split("=", 1)[0] in known else rest
        (target if target is not None else rest).append(token)
    return mine, rest


def make_parser(prog: str, description: str, epilog: str, sections: dict[str, type]):
    """A jsonargparse parser with `--config FILE`, `--print_config` and one group of `--section.field` flags per
    section, each with its help and default; add a command's own arguments (paths) to it by hand."""
    import jsonargparse

    jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = jsonargparse.ArgumentParser(prog=prog, description=description, epilog=epilog, exit_on_error=False,
                                         formatter_class=_formatter(), default_meta=False)
    parser.add_argument("--config", action=jsonargparse.ActionConfigFile,
                        help="YAML file of settings, keys nested by section as in --print_config; flags after it "
                             "override it")
    for name, cls in sections.items():
        parser.add_class_arguments(cls, name, fail_untyped=True, sub_configs=False)
    return parser


def _formatter():
    from jsonargparse import DefaultHelpFormatter

    class Formatter(DefaultHelpFormatter):
        """Keeps the epilog's line breaks (examples stay examples)."""

        def _fill_text(self, text, width, indent):
            return "".join(indent + line for line in text.splitlines(keepends=True))

    return Formatter


def parse(parser, argv: Sequence[str] | None, sections: dict[str, type], renames: dict[str, str] | None = None,
          flags: dict[str, str] | None = None, defaults: dict[str, Any] | None = None):
    """(namespace of plain values, {section: dataclass instance}); every problem, a bad value or a class's own
    check, is a UserError of one line naming the flag."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if defaults:
        parser.set_defaults(defaults)
    try:
        namespace = parser.parse_args(translate(argv, sections, renames, flags))
        built = parser.instantiate(namespace)
    except (TypeError, ValueError) as err:  # a class's own check, naming its field
        raise UserError(f"{parser.prog}: {_with_flag(one_line(err), sections)}") from None
    except Exception as err:  # jsonargparse's ArgumentError and friends
        if type(err).__name__ in ("ArgumentError", "NSKeyError", "ParserError"):
            raise UserError(f"{parser.prog}: {one_line(err)}") from None
        raise
    return namespace, {name: getattr(built, name) for name in sections}


def _with_flag(message: str, sections: dict[str, type]) -> str:
    """A field's check names the field ('time_budget must be > 0'): put the flag that sets it in front."""
    if message.startswith("--"):  # it names its flag already
        return message
    first = message.split(" ", 1)[0]
    for key in leaves(sections):
        if key.rsplit(".", 1)[-1] == first:
            return f"--{key} (--{first.replace('_', '-')}): {message}"
    return message


def one_line(err: BaseException) -> str:
    """An exception's message on one line, without jsonargparse's nested detail after the first reason."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if lines and lines[0].startswith('Parser key "') and len(lines) > 1:  # 'Parser key "model.cell":' + reason
        key = lines[0].split('"')[1]
        plain = key.rsplit(".", 1)[-1].replace("_", "-")
        return f"--{key} (--{plain}): {lines[1].replace('typing.', '')}"
    return " ".join(lines)


def dump(parser, namespace, sections: Sequence[str]) -> str:
    """The resolved settings of `sections` as YAML: a file that `--config` reads back."""
    import yaml

    values = parser.dump(namespace, format="parser_mode", skip_none=False)
    tree = yaml.safe_load(values)
    return yaml.safe_dump({name: tree[name] for name in sections}, sort_keys=False)


def flat_defaults(values: dict[str, Any], sections: dict[str, type]) -> dict[str, Any]:
    """Plain field names (a best_hparams.json) → 'section.field' keys for parser defaults; unknown names are a
    UserError naming them."""
    names = aliases(sections)
    unknown = sorted(k for k in values if k not in names)
    if unknown:
        raise UserError(f"unknown settings {', '.join(unknown)}")
    return {names[k]: v for k, v in values.items()}
