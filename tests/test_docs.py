"""The documentation stands alone: every relative link resolves (anchors included), every module,
attribute and file it names exists, nothing points at notes kept outside the repository, no
internal issue number is cited, the README stays short, and LICENSE / CITATION.cff agree with
pyproject.toml.

Module paths (``probes.measure.units.read_units``) and file paths (``probes/run.py``) are taken from
the Markdown files, from the docstrings and comments of the Python files and from the comments of
the YAML presets, and resolved statically (files and ``ast``), so nothing is imported.
"""

import ast
import io
import re
import subprocess
import tokenize
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
THIS = Path(__file__).resolve()
README_MAX_LINES = 180
README_MAX_LINE = 300
PACKAGES = ("probes", "tasks", "models")
# the notes the project was built from live outside the repository: never cite them
OUTSIDE = re.compile(r"\b(?:SCIENCE|DESIGN|AUTHORS_REGIME|SPLIT_D400)\.md\b|\.\./shared\b")
ISSUE = re.compile(r"\bissues?\s+#?\d+", re.IGNORECASE)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
# a dotted module path, not a file name such as tasks.md (file names are checked as paths)
DOTTED = re.compile(r"(?<![\w./-])((?:probes|tasks|models)(?:\.[A-Za-z_]\w*)+)"
                    r"(?!\w)(?<!\.md)(?<!\.py)(?<!\.yaml)(?<!\.csv)(?<!\.png)(?<!\.txt)")
# committed folders only: reports/<experiment>/ and runs/ are outputs, not files of the repository
FILE_PATH = re.compile(r"(?<![\w./-])((?:probes|tasks|models|benchmarks|configs|tests|docs|\.ci"
                       r"|reports/measured|reports/reproduction)/[\w.*/-]*)")


def tracked() -> list[Path]:
    """The repository's files: git's list (tracked, and new files git does not ignore), or, outside
    a clone, every file that is not hidden or built."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, check=True)
        files = [ROOT / p for p in out.stdout.decode().split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in ROOT.rglob("*") if p.is_file()
                 and not any(s.startswith(".") and s != ".ci" or s == "__pycache__"
                             or s.endswith(".egg-info") for s in p.relative_to(ROOT).parts)]
    return [p for p in files if p.is_file()]


FILES = tracked()
MARKDOWN = sorted(p for p in FILES if p.suffix == ".md")
PYTHON = sorted(p for p in FILES if p.suffix == ".py" and p != THIS)
YAML = sorted(p for p in FILES if p.suffix in (".yaml", ".yml"))


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def python_prose(path: Path) -> str:
    """The docstrings and comments of a Python file, one per line."""
    source = path.read_text()
    tree = ast.parse(source)
    parts = [ast.get_docstring(node, clean=False) or "" for node in ast.walk(tree)
             if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    parts += [t.string for t in tokens if t.type == tokenize.COMMENT]
    return "\n".join(parts)


def yaml_comments(path: Path) -> str:
    return "\n".join(line.split("#", 1)[1] for line in path.read_text().splitlines() if "#" in line)


def prose() -> list[tuple[str, str]]:
    """(file, text) of every place where the project names its own modules and files."""
    return ([(rel(p), p.read_text()) for p in MARKDOWN] + [(rel(p), python_prose(p)) for p in PYTHON]
            + [(rel(p), yaml_comments(p)) for p in YAML])


# --- links ------------------------------------------------------------------------------------
def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text())
    bad = []
    for target in LINK.findall(text) + REF_LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target} (no heading with that anchor)")
    return bad


@pytest.mark.parametrize("path", MARKDOWN, ids=rel)
def test_relative_links_resolve(path):
    assert broken_links(path) == [], rel(path)


def test_the_link_checker_sees_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A title\n[ok](page.md#a-title) [gone](missing.md) [bad](page.md#nowhere)\n"
                    "```\n[in code](ignored.md)\n```\n[web](https://example.org/x.md)\n")
    assert broken_links(page) == ["missing.md (no such file)",
                                  "page.md#nowhere (no heading with that anchor)"]
    assert slug("Checkpoint probes (`--checkpoint`)") == "checkpoint-probes---checkpoint"


# --- module and file paths --------------------------------------------------------------------
def module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def defined_names(body: list[ast.stmt]) -> dict[str, ast.AST]:
    """Names bound at one level of a module or class body: defs, assignments, imports, and the
    names a module's ``__all__`` lists (exported lazily through ``__getattr__``; tests/test_api.py
    imports each)."""
    out: dict[str, ast.AST] = {}
    for node in body:
        if (isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets)
                and isinstance(node.value, (ast.List, ast.Tuple))):
            out |= {e.value: node for e in node.value.elts if isinstance(e, ast.Constant)}
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for name in ast.walk(t):
                    if isinstance(name, ast.Name):
                        out[name.id] = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                out[alias.asname or alias.name.split(".")[0]] = node
        elif isinstance(node, (ast.If, ast.Try)):
            out |= defined_names(node.body)
    return out


def attribute_exists(file: Path, attrs: list[str]) -> bool:
    """Whether ``attrs`` (a.b.c) is defined in ``file``, following classes and from-imports."""
    body = ast.parse(file.read_text()).body
    for i, attr in enumerate(attrs):
        node = defined_names(body).get(attr)
        if node is None:
            return False
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            source = module_file(node.module.split("."))
            original = next(a.name for a in node.names if (a.asname or a.name) == attr)
            sub = module_file([*node.module.split("."), original])
            if sub is not None:
                return resolves(".".join([*node.module.split("."), original, *attrs[i + 1:]]))
            return source is not None and attribute_exists(source, [original, *attrs[i + 1:]])
        if i + 1 < len(attrs):
            if not isinstance(node, ast.ClassDef):
                return True  # an attribute of a value: beyond what a static read can follow
            body = node.body
    return True


def resolves(dotted: str) -> bool:
    """Whether a dotted name is a module of the project, or an attribute defined in one."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        file = module_file(parts[:i])
        if file is not None:
            return i == len(parts) or attribute_exists(file, parts[i:])
        if i == len(parts) and ROOT.joinpath(*parts).is_dir():
            return True
    return False


def path_exists(path: str) -> bool:
    path = path.rstrip(".,:;-")
    if "*" in path:
        return any(ROOT.glob(path))
    return (ROOT / path).exists()


def test_named_modules_exist():
    bad = sorted({f"{where}: {name}" for where, text in prose() for name in DOTTED.findall(text)
                  if not resolves(name)})
    assert bad == []


def test_named_files_exist():
    bad = sorted({f"{where}: {path}" for where, text in prose() for path in FILE_PATH.findall(text)
                  if not path_exists(path)})
    assert bad == []


def test_the_path_checker_sees_missing_names():
    assert resolves("probes.measure.units.read_units")
    assert resolves("probes.config.RunConfig")  # re-exported by the package
    assert resolves("tasks.TASKS")
    assert not resolves("probes.neurons")
    assert not resolves("probes.measure.units.no_such_reader")
    assert path_exists("probes/run.py") and path_exists("configs/mlp_*.yaml")
    assert not path_exists("probes/config.py")
    assert DOTTED.findall("see probes.run. And test_tasks.py, models/mlp.py, [t](tasks.md)") == ["probes.run"]


# --- nothing outside the repository, no issue numbers -----------------------------------------
def test_no_reference_to_notes_outside_the_repository():
    bad = []
    for path in FILES:
        if path == THIS or path.stat().st_size > 5_000_000:
            continue
        for n, line in enumerate(path.read_bytes().decode("utf-8", "ignore").splitlines(), 1):
            if OUTSIDE.search(line):
                bad.append(f"{rel(path)}:{n}")
    assert bad == []


@pytest.mark.parametrize("path", MARKDOWN, ids=rel)
def test_docs_cite_no_issue_numbers(path):
    assert ISSUE.findall(path.read_text()) == []


# --- README size ------------------------------------------------------------------------------
def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES
    long = [n for n, line in enumerate(lines, 1) if len(line) > README_MAX_LINE]
    assert long == [], f"README lines over {README_MAX_LINE} characters: {long}"


# --- LICENSE and CITATION.cff -----------------------------------------------------------------
def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11; skipped on 3.10
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_license_matches_pyproject():
    assert pyproject()["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Permission is hereby granted, free of charge" in text


def test_citation_file():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    assert cff["version"] == pyproject()["version"]
    assert cff["license"] == "MIT"
    assert cff["title"] and cff["message"]
    assert all("name" in a or "family-names" in a for a in cff["authors"])
    refs = cff["references"]
    assert refs and all(r["type"] and r["title"] and r["authors"] for r in refs)
    arxiv = {i["value"] for r in refs for i in r.get("identifiers", []) if i["type"] == "other"}
    assert {"arXiv:2405.05409", "arXiv:2504.09484"} <= arxiv
