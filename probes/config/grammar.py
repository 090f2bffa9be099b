"""The one option grammar of every command, read off dataclass fields (as
``transformers.HfArgumentParser`` does): a key's type is its field's annotation, its default the
field's default and its help ``field.metadata["help"]``; ``metadata["choices"]`` lists the names a
key accepts. Standard library only, so that ``--help`` loads neither torch nor the tasks.

The grammar, the same for ``train``, ``probe``, ``measure``, ``align``, ``table`` and ``convert``:

- ``--key value`` or ``--key=value``; a token that is no option's value is a positional argument
  (``measure DIR``, ``align A B``, ``probe DIR ...``).
- A boolean key: ``--flag`` alone (last, or before another ``--option``) means true;
  ``--flag true|false`` (also yes/no, on/off, 1/0, any case) sets it.
- A list-typed key (``thresholds``, ``merge_steps``, ``heatmap_layers``, ``checkpoint``): ``[a, b]``,
  ``a,b`` or one value ``a`` (a list of one); given twice, the lists are joined.
- A single-valued key takes one value. Only where a key may be a grid (``train``'s keys that are
  not shared by all runs) does ``[a, b]`` give a list of values (a grid); there ``a,b`` is
  refused with the hint that a grid is written ``[a, b]`` (a string key keeps its commas:
  ``--held_out 34,43``).
- ``null`` (or ``~``) is None for a key that accepts None; a number key given an integer keeps it
  an integer, as YAML reads it (the run id hashes the value as given).

Every problem is one ``ConfigError`` line that names the value and what is accepted.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Collection

TRUE = ("true", "yes", "on", "1")
FALSE = ("false", "no", "off", "0")
NULLS = ("null", "Null", "NULL", "~")
NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
         type(None): "null"}
_NO = object()  # a text that does not read as the type asked for


class ConfigError(ValueError):
    """Bad configuration or command line: the message names the bad value and what is accepted."""


def fields_of(cls) -> dict[str, dataclasses.Field]:
    """name -> dataclass field of ``cls``, in field order."""
    return {f.name: f for f in dataclasses.fields(cls)}


def hints(cls) -> dict[str, typing.Any]:
    """name -> the evaluated annotation of every field of dataclass ``cls``."""
    return typing.get_type_hints(cls)


def _options(tp) -> tuple:
    """The member types of a union annotation (``int | None`` -> (int, NoneType)), else (tp,)."""
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    return typing.get_args(tp) if union else (tp,)


def list_item(tp):
    """The item type of a list-typed annotation (``list[float] | None`` -> float), else None."""
    found = [o for o in _options(tp) if typing.get_origin(o) is list]
    return typing.get_args(found[0])[0] if found else None


def type_name(tp) -> str:
    """What an annotation accepts, in words: 'a number', 'an integer or null', 'a list of numbers
    (0.9,0.95 or [0.9, 0.95])', ..."""
    words = []
    for o in _options(tp):
        if typing.get_origin(o) is list:
            item = typing.get_args(o)[0]
            plural = {int: "integers", float: "numbers", str: "strings"}.get(item, str(item))
            words.append(f"a list of {plural} (a,b or [a, b])")
        else:
            words.append(NAMES.get(o, getattr(o, "__name__", str(o))))
    return " or ".join(words)


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def scalar(text: str, tp):
    """``text`` read as one value of annotation ``tp`` (not a list), or ``_NO``. Tried in the
    order null, bool, int, number, string, so that ``34`` for ``str | int`` is 34 and ``1`` for a
    number stays the integer 1 (as YAML reads them)."""
    options = _options(tp)
    text = text.strip()
    if type(None) in options and text in NULLS:
        return None
    if bool in options and text.lower() in TRUE + FALSE:
        return text.lower() in TRUE
    if int in options or float in options:
        try:
            return int(text)
        except ValueError:
            pass
    if float in options:
        try:
            value = float(text)
            if value == value and abs(value) != float("inf"):  # nan and inf are no settings
                return value
        except ValueError:
            pass
    if str in options:
        return _unquote(text)
    return _NO


def items(text: str) -> list[str] | None:
    """The items of a list written ``[a, b]`` or ``a,b`` (``[]``: none); None for one value."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [t.strip() for t in inner.split(",")] if inner else []
    return [t.strip() for t in text.split(",")] if "," in text else None


def read(key: str, text: str, tp, *, grid: bool = False, choices=None):
    """The value of ``--key text`` for annotation ``tp``.

    Args:
        key: the key's name (for the error line); text: the command-line text; tp: the field's
            evaluated annotation; grid: whether the key may take a list of values (a grid);
            choices: the names the key accepts (each item of a grid too), or None.

    Returns:
        the value: a list for a list-typed key or a grid, else one value.

    Raises:
        ConfigError: a value (or item) that does not read as ``tp``, a list for a single-valued
            key (with the grid hint where the key may be a grid), or a name outside ``choices``.
    """
    item = list_item(tp)
    parts = items(text)
    if item is not None:
        if parts is None and text.strip() in NULLS and type(None) in _options(tp):
            return None
        values = [scalar(p, item) for p in (parts if parts is not None else [text])]
        if _NO in values or (parts is not None and "" in parts):
            raise ConfigError(f"{key}={text!r} has the wrong type: accepted is {type_name(tp)}")
        return _chosen(key, values, choices)
    if parts is not None and text.strip().startswith("["):
        if not grid:
            raise ConfigError(f"{key}={text!r} is a list: accepted is one value, "
                              f"{'one of ' + _names(choices) if choices else type_name(tp)}")
        if not parts:
            raise ConfigError(f"{key}=[] is an empty grid: accepted is a list of at least one value")
        values = [scalar(p, tp) for p in parts]
        if _NO in values:
            bad = parts[values.index(_NO)]
            raise ConfigError(f"{key}={bad!r} has the wrong type: accepted is {type_name(tp)}")
        return _chosen(key, values, choices)
    value = scalar(text, tp)
    if value is _NO:
        hint = ""
        if parts and all(scalar(p, tp) is not _NO for p in parts):
            hint = (f"; a list of values for a grid is written [{', '.join(parts)}]" if grid
                    else f" (one value: {key} takes no list here)")
        elif bool in _options(tp):
            hint = f" (--{key} alone, last or before another --option, means true)"
        raise ConfigError(f"{key}={text!r} has the wrong type: accepted is {type_name(tp)}{hint}")
    return _chosen(key, [value], choices)[0] if choices else value


def _chosen(key: str, values: list, choices) -> list:
    """``values``, each the one of ``choices`` it names (case aside). Raises ConfigError."""
    if choices is None:
        return values
    by_name = {str(c).lower(): c for c in choices}
    for v in values:
        if str(v).lower() not in by_name:
            raise ConfigError(f"{key}={v!r} is unknown: accepted are {_names(choices)}")
    return [by_name[str(v).lower()] for v in values]


def _names(choices) -> str:
    """The names of ``choices`` as they are written on the command line (true, not True)."""
    return ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in choices)


def unknown(key: str, accepted: Collection[str], command: str) -> ConfigError:
    """The error of an unknown ``--key``: a close match as a hint, and every accepted key."""
    if not accepted:
        return ConfigError(f"unknown key {key!r}: {command} takes no key (accepted are its "
                           f"positional arguments alone)")
    close = difflib.get_close_matches(key, list(accepted), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown key {key!r}{hint}: accepted with {command} are "
                       f"{', '.join(accepted)}")


def parse(argv: list[str], cls, *, command: str, accepted: Collection[str] | None = None,
          grid: Collection[str] = (), extra: Collection[str] = (),
          listed: Collection[str] | None = None) -> tuple[list[str], dict]:
    """Read ``argv`` by the grammar above against the fields of dataclass ``cls``.

    Args:
        argv: the command's arguments (its name removed).
        cls: the dataclass whose fields are the keys; command: its name, for error lines.
        accepted: the keys this command takes (default: every field); extra: string options
            that are no field (``config``); grid: the keys that may take a grid; listed: the
            keys an unknown key's error names (default: ``extra`` and ``accepted``), for a
            command that reads more keys than it takes (``measure`` refuses training keys
            with a line of its own).

    Returns:
        (the positional arguments in order, {key: value} of the keys given; a key given twice
        keeps its last value, as argparse does (so a base command line can be overridden), a
        list-typed key the joined lists).

    Raises:
        ConfigError: an unknown key, a key without its value, or a value ``read`` refuses.
    """
    fields, types_ = fields_of(cls), hints(cls)
    accepted = list(accepted if accepted is not None else fields)
    positional, values, i = [], {}, 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token == "--" or not token.startswith("--"):
            if token == "--":
                raise ConfigError(f"unexpected argument '--': accepted with {command} are "
                                  f"--KEY VALUE and its positional arguments")
            positional.append(token)
            continue
        key, eq, text = token[2:].partition("=")
        if key not in accepted and key not in extra:
            raise unknown(key, [*extra, *accepted] if listed is None else list(listed), command)
        tp = types_.get(key, str)
        if not eq:
            if i < len(argv) and not argv[i].startswith("--"):
                text, i = argv[i], i + 1
            elif bool in _options(tp):
                text = "true"  # a flag alone
            else:
                raise ConfigError(f"--{key} needs a value: accepted is {type_name(tp)}")
        if key in extra:
            values[key] = text
            continue
        value = read(key, text, tp, grid=key in grid, choices=fields[key].metadata.get("choices"))
        if list_item(tp) is not None and isinstance(values.get(key), list) and value is not None:
            value = values[key] + value
        values[key] = value
    return positional, values


def take(argv: list[str], cls, *, command: str) -> tuple[list[str], dict]:
    """Take the options of dataclass ``cls`` (``--key value``, ``--key=value``, a flag alone) off
    ``argv``, read by the grammar above; every other token is left, in order.

    Returns:
        (the other arguments, {key: value} of the keys of ``cls`` given).

    Raises:
        ConfigError: as ``parse``, for the keys of ``cls``.
    """
    names = fields_of(cls)
    rest, mine, i = [], [], 0
    while i < len(argv):
        key, eq, _ = argv[i].partition("=")
        if not (key.startswith("--") and key[2:] in names):
            rest.append(argv[i])
            i += 1
            continue
        mine.append(argv[i])
        if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            mine.append(argv[i + 1])
            i += 1
        i += 1
    return rest, parse(mine, cls, command=command)[1]


def default(field: dataclasses.Field):
    """A field's default value (its factory called for a mutable one)."""
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def key_docs(cls, names: Collection[str] | None = None, defaults: dict | None = None) -> list[tuple]:
    """(section, key, type, default as YAML text, help) of the fields ``names`` of ``cls``, in
    that order (default: every field, in field order); ``defaults`` replaces a field's default
    where a command has its own."""
    out, fields = [], fields_of(cls)
    for f in (fields.values() if names is None else (fields[n] for n in names)):
        value = (defaults or {}).get(f.name, default(f))
        shown = json.dumps(value) if isinstance(value, (bool, list, type(None))) else str(value)
        out.append((f.metadata.get("section", ""), f.name, str(f.type), shown, f.metadata["help"]))
    return out


def key_help(cls, names: Collection[str] | None = None, defaults: dict | None = None,
             sections: bool = True) -> str:
    """One help line per key (``--key  type  default  help``), under a header per section when
    ``sections``; see ``key_docs`` for the arguments."""
    docs = key_docs(cls, names, defaults)
    if not docs:
        return "    (no keys)"
    width = [max(len(d[i]) for d in docs) for i in (1, 2, 3)]
    text, section = [], None
    for sec, key, tp, value, meaning in docs:
        if sections and sec != section:
            text.append(f"  {sec}:")
            section = sec
        text.append(f"    --{key:<{width[0]}}  {tp:<{width[1]}}  {value:<{width[2]}}  {meaning}".rstrip())
    return "\n".join(text)
