"""The ``--help`` text of an experiment, generated from ``probes.config.RunConfig``'s own source:
every key with its type, default and one line of meaning, so that there is no second list to keep
in sync with the dataclass."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import tokenize

from probes.config import RunConfig


def key_docs() -> list[tuple[str, str, str, str, str]]:
    """Every RunConfig key with its section, type, default and meaning, read from the class's
    own source so that the help never drifts from it: a key's meaning is the comment on its line,
    else the comment lines right above it; other full-line comments open a section.

    Returns:
        (section, key, type, default as YAML text, meaning) in field order; the meanings are
        empty when the source cannot be read (a build without .py files).
    """
    try:
        source = inspect.getsource(RunConfig)
    except (OSError, TypeError):
        source = ""
    node = ast.parse(source).body[0] if source else None
    key_at = {n.lineno: n.target.id for n in (node.body if node else [])
              if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    trailing, above, section, sections, pending = {}, {}, "", {}, []
    lines = source.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline) if source else []:
        if tok.type != tokenize.COMMENT:
            continue
        row, text = tok.start[0], tok.string.lstrip("#").strip()
        if row in key_at:
            trailing[key_at[row]] = text
        else:
            pending.append((row, text))
    for row, text in pending:  # a block of full-line comments right above a key
        end = row
        while end + 1 <= len(lines) and lines[end].strip().startswith("#"):
            end += 1
        key = key_at.get(end + 1)
        if key is not None and key not in trailing:
            above[key] = f"{above[key]} {text}" if key in above else text
        else:
            sections[row] = text
    out = []
    for f in dataclasses.fields(RunConfig):
        row = next((r for r, k in key_at.items() if k == f.name), 0)
        section = next((sections[r] for r in sorted(sections, reverse=True) if r < row), section)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        shown = json.dumps(default) if isinstance(default, (bool, list, type(None))) else str(default)
        out.append((section, f.name, str(f.type), shown,
                    trailing.get(f.name) or above.get(f.name, "")))
    return out


def key_help() -> str:
    """The help text of every RunConfig key (``key_docs``), grouped by section: one line per key
    with its type, default and meaning."""
    docs = key_docs()
    width = [max(len(d[i]) for d in docs) for i in (1, 2, 3)]
    text, section = [], None
    for sec, key, tp, default, meaning in docs:
        if sec != section:
            text.append(f"  {sec}:" if sec else "")
            section = sec
        text.append(f"    --{key:<{width[0]}}  {tp:<{width[1]}}  {default:<{width[2]}}  {meaning}".rstrip())
    return "\n".join(text)
