"""The documentation names only things that exist.

README.md is the front door (at most 200 lines); the manual is docs/*.md. These tests read
them as text (no network, no pipeline run) and fail when they name something that does not
exist:

- links: every relative markdown link in README.md, docs/*.md and benchmarks/README.md
  resolves to an existing file or folder, and a ``#anchor`` to a heading of the linked
  markdown file (GitHub's slugs: lowercase; every character but letters, digits, ``_``,
  ``-`` and spaces dropped; spaces become ``-``; a repeated heading gets ``-1``, ``-2``).
  Links inside code are not links. ``http(s):`` and ``mailto:`` links are not fetched.
- ``make <target>`` in a code span or code block: the target is a rule of the Makefile,
  and each ``VAR=value`` after it a variable the Makefile defines.
- ``pql <command>`` in a code span or code block: the command is a subcommand of the
  ``pql`` CLI (``pql_pipeline.cli.main``, a click group; importing it imports only click),
  and each ``--option`` after it one of that command's options.
- repository paths in code spans (README.md and docs/*.md):
  - a token under ``pql_pipeline/``, ``pql_pipeline_tests/``, ``data_contracts/``,
    ``benchmarks/``, ``docs/`` or ``.ci/``, or one of the top-level files (``Makefile``,
    ``dagster.yaml``, ``workspace.yaml``, ``pyproject.toml``, ``README.md``) must exist;
  - what a run creates is exempt: ``warehouse/``, ``data/``, ``.dagster_home/``,
    ``benchmarks/results/``, ``benchmarks/.data/``, ``spark_staging/``, ``.venv/``;
  - a placeholder (``<stage>``, ``{date}``) or a glob (``*``) is matched loosely: each
    placeholder becomes ``*`` and the pattern must match at least one existing path;
  - a bare or partial name of a source file (ending ``.py``, ``.yaml``, ``.yml``,
    ``.toml``, ``.md``, ``.j2``, such as ``signals.yaml`` or ``lib/versions.py``) must be
    the end of some path in those folders;
  - a dotted module reference ``pql_pipeline.a.b.name`` must name a module, and the name
    after it something the module defines (``def``, ``class`` or an assignment).
- configuration keys in code spans and code blocks: a dotted token whose first segment is
  a top-level key of ``pql_pipeline/config/pipeline.yaml`` resolves in that file, walking
  mappings (a segment with ``*`` matches keys by pattern; below a list or a ``null``
  value nothing more is checked). A token that is part of a path (next to ``/``) or ends
  in a file extension (``features.odcs.yaml``, ``model.joblib``) is a file name, not a key.
- the asset graph in README.md: the ``mermaid`` block and the asset table name exactly the
  assets of the project's ``Definitions`` (built from the default configuration).
- every dependency of pyproject.toml is named in README.md's "Dependencies and why".

The ``test_*_flags_*`` tests feed each checker a small fabricated document, so a checker
that stops finding anything fails too.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import shlex
import tomllib
from functools import cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MANUAL = [README, *DOCS]
LINKED = [*MANUAL, ROOT / "benchmarks" / "README.md"]
CONFIG = ROOT / "pql_pipeline" / "config" / "pipeline.yaml"

PATH_ROOTS = ("pql_pipeline/", "pql_pipeline_tests/", "data_contracts/", "benchmarks/", "docs/", ".ci/")
TOP_FILES = ("Makefile", "dagster.yaml", "workspace.yaml", "pyproject.toml", "README.md")
RUNTIME_ROOTS = ("warehouse/", "data/", ".dagster_home/", "benchmarks/results/", "benchmarks/.data/",
                 "spark_staging/", ".venv/")
SOURCE_SUFFIXES = (".py", ".yaml", ".yml", ".toml", ".md", ".j2")
FILE_EXTENSIONS = {"py", "yaml", "yml", "md", "toml", "j2", "json", "jsonl", "joblib", "duckdb", "html",
                   "csv", "gz", "parquet", "txt", "log", "wal", "png"}
SKIP_DIRS = {".git", ".venv", "__pycache__", ".data", "results", ".pytest_cache"}


# ----------------------------------------------------------------------------- markdown

FENCE = re.compile(r"^[ \t]*(```|~~~)[^\n]*\n(.*?)^[ \t]*\1[ \t]*$", re.S | re.M)
SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)


def fenced_blocks(text: str) -> list[str]:
    return [m.group(2) for m in FENCE.finditer(text)]


def without_blocks(text: str) -> str:
    return FENCE.sub("\n", text)


def code_spans(text: str) -> list[str]:
    return [m.group(2) for m in SPAN.finditer(without_blocks(text))]


def code_texts(text: str) -> list[str]:
    """Everything written as code: inline spans and fenced blocks."""
    return code_spans(text) + fenced_blocks(text)


def prose(text: str) -> str:
    """The text without code, where links live."""
    return SPAN.sub(" ", without_blocks(text))


def slug(heading: str) -> str:
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in HEADING.finditer(without_blocks(text)):
        s = slug(m.group(2))
        n = seen.get(s, 0)
        out.add(s if n == 0 else f"{s}-{n}")
        seen[s] = n + 1
    return out


# ----------------------------------------------------------------------------- checkers

def broken_links(text: str, doc: Path) -> list[str]:
    """Relative links of ``text`` (a document at ``doc``) that point nowhere."""
    problems = []
    body = prose(text)
    for target in [m.group(1) for m in LINK.finditer(body)] + REF_LINK.findall(body):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        if path_part:
            dest = (doc.parent / path_part).resolve()
            if not dest.exists():
                problems.append(f"{target}: {path_part} does not exist")
                continue
            dest_text = dest.read_text(encoding="utf-8") if dest.is_file() else None
        else:
            dest, dest_text = doc, text
        if anchor:
            if dest_text is None or dest.suffix != ".md":
                problems.append(f"{target}: an anchor into something that is not a markdown file")
            elif anchor not in anchors(dest_text):
                problems.append(f"{target}: no heading '#{anchor}' in {dest.name}")
    return problems


@cache
def make_rules() -> tuple[frozenset[str], frozenset[str]]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets, variables = set(), set()
    for line in text.splitlines():
        if line.startswith(("\t", "#")) or not line.strip():
            continue
        if m := re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*(?::=|\?=|\+=|=)", line):
            variables.add(m.group(1))
        elif m := re.match(r"^([^:=#]+):(?!=)", line):
            targets.update(t for t in m.group(1).split() if "$" not in t)
    return frozenset(targets), frozenset(variables)


def _words_after(command: str, text: str) -> list[list[str]]:
    """For each use of ``command`` in a code text: the words after it, up to the end of the
    shell command (a newline, ``#``, ``;``, ``&&``, ``|``)."""
    uses = []
    for m in re.finditer(rf"(?:^|(?<=[\s;&|(]))(?:[\w./$()-]*/)?{command}[ \t]+([^\n]*)", text):
        rest = re.split(r"\s(?:#|;|&&|\|\|?)|[;)`]", m.group(1))[0]
        try:
            words = shlex.split(rest)
        except ValueError:
            words = rest.split()
        uses.append(words)
    return uses


def unknown_make_targets(text: str) -> list[str]:
    targets, variables = make_rules()
    problems = []
    for code in code_texts(text):
        for words in _words_after("make", code):
            for w in words:
                if w.startswith("-") or any(c in w for c in "<{*."):
                    continue
                if "=" in w:
                    name = w.split("=", 1)[0]
                    if name not in variables:
                        problems.append(f"make ... {w}: no variable {name} in the Makefile")
                elif w not in targets:
                    problems.append(f"make {w}: no such target in the Makefile")
    return problems


@cache
def pql_commands() -> dict[str, frozenset[str]]:
    from pql_pipeline.cli import main

    return {name: frozenset(o for p in cmd.params for o in (*p.opts, *p.secondary_opts))
            for name, cmd in main.commands.items()}


def unknown_pql_commands(text: str) -> list[str]:
    commands = pql_commands()
    problems = []
    for code in code_texts(text):
        for words in _words_after("pql", code):
            if not words or words[0].startswith("-") or "<" in words[0]:
                continue
            name = words[0].strip("[]")
            if name not in commands:
                problems.append(f"pql {name}: no such command (commands: {', '.join(sorted(commands))})")
                continue
            for w in words[1:]:
                opt = w.strip("[]").split("=", 1)[0]
                if opt.startswith("--") and opt != "--help" and opt not in commands[name]:
                    problems.append(f"pql {name} {opt}: no such option")
    return problems


@cache
def repo_files() -> tuple[str, ...]:
    """Relative paths (files and folders, '/'-separated) of the documented part of the repository."""
    out = [f for f in TOP_FILES if (ROOT / f).exists()]
    for top in PATH_ROOTS:
        base = ROOT / top
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")]
            rel = Path(dirpath).relative_to(ROOT).as_posix()
            out.append(rel + "/")
            out.extend(f"{rel}/{f}" for f in filenames)
    return tuple(out)


def _module_defines(module: Path, name: str) -> bool:
    src = module.read_text(encoding="utf-8")
    return re.search(rf"^\s*(?:async\s+)?(?:def|class)\s+{re.escape(name)}\b|^{re.escape(name)}\s*[:=]",
                     src, re.M) is not None


def _missing_module_ref(token: str) -> str | None:
    parts = token.split(".")
    for i in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:i])
        module = base.with_suffix(".py") if not base.is_dir() else base / "__init__.py"
        if module.is_file():
            rest = parts[i:]
            if rest and not _module_defines(module, rest[0]):
                return f"{token}: {module.relative_to(ROOT).as_posix()} defines no {rest[0]}"
            return None
    return f"{token}: no such module"


def missing_paths(text: str) -> list[str]:
    files = repo_files()
    problems = []
    for span in code_spans(text):
        for raw in span.split():
            token = raw.strip("()[],;:'\"")
            if not token or "://" in token:
                continue
            if re.match(r"pql_pipeline(?:_tests)?\.\w", token) and not token.endswith(SOURCE_SUFFIXES):
                if problem := _missing_module_ref(re.match(r"[\w.]+", token).group(0).rstrip(".")):
                    problems.append(problem)
                continue
            if token.startswith(RUNTIME_ROOTS):
                continue
            if token.startswith(PATH_ROOTS) or token in TOP_FILES:
                if any(c in token for c in "<{*"):
                    pattern = re.sub(r"<[^>]*>|\{[^}]*\}", "*", token)
                    if not glob.glob(str(ROOT / pattern)):
                        problems.append(f"{token}: nothing matches {pattern}")
                elif not (ROOT / token).exists():
                    problems.append(f"{token}: no such file or folder")
            elif (token.endswith(SOURCE_SUFFIXES) and re.fullmatch(r"[\w.\-/]+", token)
                  and not token.startswith((".", "/"))):
                if not any(f == token or f.endswith("/" + token) for f in files):
                    problems.append(f"{token}: no file of that name in the repository")
    return problems


@cache
def config() -> dict:
    return yaml.safe_load(CONFIG.read_text(encoding="utf-8"))


KEY = re.compile(r"(?<![\w./\-*])([a-z_][a-z0-9_]*(?:\.(?:[a-z0-9_*]+))+)(?![\w/(\-])")


def unknown_config_keys(text: str) -> list[str]:
    cfg = config()
    problems = []
    for code in code_texts(text):
        for m in KEY.finditer(code):
            token = m.group(1)
            parts = token.split(".")
            if parts[0] not in cfg or parts[-1] in FILE_EXTENSIONS:
                continue
            node = cfg
            for i, part in enumerate(parts):
                if not isinstance(node, dict):
                    break  # below a list or a null value: lenient
                keys = [k for k in node if fnmatch.fnmatchcase(str(k), part)]
                if not keys:
                    problems.append(f"{token}: no key {part!r} under {'.'.join(parts[:i]) or 'the top level'}"
                                    f" of pipeline.yaml")
                    break
                node = node[keys[0]]
    return problems


@cache
def defined_assets() -> frozenset[str]:
    """The assets the project's Definitions hold (built from the default configuration)."""
    from pql_pipeline.definitions import build_definitions
    from pql_pipeline.settings import load_settings

    return frozenset(s.key.to_user_string() for s in build_definitions(load_settings()).resolve_all_asset_specs())


def mermaid_nodes(text: str) -> set[str]:
    nodes = set()
    for m in FENCE.finditer(text):
        if not m.group(0).lstrip().startswith("```mermaid"):
            continue
        for line in m.group(2).splitlines():
            line = line.strip()
            if not line or line.startswith(("flowchart", "graph", "subgraph", "end", "%%", "classDef", "style")):
                continue
            nodes.update(re.findall(r"\b([A-Za-z_]\w*)\b", re.sub(r"-->|---|-\.->|==>", " ", line)))
    return nodes


def section(text: str, title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    return m.group(1) if m else ""


def table_column(text: str, col: int) -> list[str]:
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [row.strip("|").split("|")[col].strip() for row in rows[2:]]


def _report(problems: dict[Path, list[str]]) -> str:
    return "\n".join(f"{p.relative_to(ROOT)}: {msg}" for p, msgs in problems.items() for msg in msgs)


def _each(files, checker) -> dict[Path, list[str]]:
    found = {}
    for doc in files:
        if msgs := checker(doc.read_text(encoding="utf-8"), doc):
            found[doc] = msgs
    return found


# ----------------------------------------------------------------------------- the docs

def test_the_readme_is_a_front_door_of_at_most_200_lines():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= 200, f"README.md has {lines} lines; move detail to docs/ (the limit is 200)"


def test_the_readme_links_every_docs_page():
    linked = {(README.parent / m.group(1).partition("#")[0]).resolve()
              for m in LINK.finditer(prose(README.read_text(encoding="utf-8")))}
    assert not [d.name for d in DOCS if d.resolve() not in linked]


def test_links_resolve():
    assert not (found := _each(LINKED, broken_links)), _report(found)


def test_make_targets_exist():
    assert not (found := _each(MANUAL, lambda t, d: unknown_make_targets(t))), _report(found)


def test_pql_commands_exist():
    assert not (found := _each(MANUAL, lambda t, d: unknown_pql_commands(t))), _report(found)


def test_repository_paths_exist():
    assert not (found := _each(MANUAL, lambda t, d: missing_paths(t))), _report(found)


def test_config_keys_exist():
    assert not (found := _each(MANUAL, lambda t, d: unknown_config_keys(t))), _report(found)


def test_the_readme_graph_and_table_name_exactly_the_defined_assets():
    text = README.read_text(encoding="utf-8")
    assets = defined_assets()
    assert len(assets) >= 20, sorted(assets)
    assert mermaid_nodes(text) - {"ingest", "features", "model", "scoring", "monitoring", "activation"} == assets
    graph = section(text, "The asset graph")
    named = {a for cell in table_column(graph, 1) for a in re.findall(r"`(\w+)`", cell)}
    assert named == assets


def test_the_readme_justifies_every_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    specs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        specs += extra
    names = {re.match(r"[A-Za-z0-9_.\-]+", s).group(0).lower() for s in specs}
    listed = " ".join(table_column(section(README.read_text(encoding="utf-8"), "Dependencies and why"), 0)).lower()
    assert not [n for n in sorted(names) if not re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", listed)]


# ----------------------------------------------------------------------------- the checkers can fail

DOC = ROOT / "docs" / "example.md"


def test_broken_links_flags_a_missing_file_and_a_missing_anchor():
    text = "# Top\n\n## A section\n\nSee [a](missing.md), [b](#nowhere), [c](operations.md#no-such-heading).\n"
    assert len(broken_links(text, DOC)) == 3
    good = ("# Top\n\n## A section: with `code`, punctuation (and more)\n\n[x](#a-section-with-code-punctuation-and-more)"
            " [y](operations.md) [z](../README.md#two-commands) [w](https://example.com/x#y)\n"
            "`[not](a-link.md)`\n```\n[not](a-link-either.md)\n```\n")
    assert broken_links(good, DOC) == []


def test_slugs_follow_github():
    assert slug("raw → validated (`bench_validate.py`, `make bench`)") == "raw--validated-bench_validatepy-make-bench"
    assert slug("What people see: the UI and the PQL report") == "what-people-see-the-ui-and-the-pql-report"
    assert anchors("## A\n## A\n") == {"a", "a-1"}


def test_unknown_make_targets_flags_a_target_and_a_variable_the_makefile_lacks():
    assert len(unknown_make_targets("Run `make deploy`, then `make run NOPE=1`.")) == 2
    assert unknown_make_targets("```bash\nmake run ACCOUNTS=1000   # demo\nX=1 make test\n```\n`make`") == []


def test_unknown_pql_commands_flags_a_command_and_an_option_the_cli_lacks():
    assert len(unknown_pql_commands("`pql deploy --now` and `pql backfill --start D --fast`")) == 2
    assert unknown_pql_commands("`pql materialize [--start D] [--end D]`, `pql/stage`, `pql <command>`") == []


def test_missing_paths_flags_paths_modules_and_names_that_do_not_exist():
    text = ("`pql_pipeline/defs/nowhere.py`, `data_contracts/<x>.odcs.json`, `no_such_file.yaml`, "
            "`pql_pipeline.lib.engine.no_such_function`, `pql_pipeline.no_module`")
    assert len(missing_paths(text)) == 5
    good = ("`pql_pipeline/defs/<stage>/`, `signals.yaml`, `lib/versions.py`, `warehouse/models/x.joblib`, "
            "`data/events/`, `pql_pipeline.lib.engine.render(sql, \"spark\")`, `Makefile`")
    assert missing_paths(good) == []


def test_unknown_config_keys_flags_a_key_pipeline_yaml_lacks():
    text = "`model.no_such_key`, `scoring.routing.sales_segmentz`, `milestones.nope*`\n```yaml\nx: 1 # labels.nope\n```"
    assert len(unknown_config_keys(text)) == 4
    good = ("`model.gates`, `activation.crm.*`, `features.odcs.yaml`, `model.joblib`, `segments`, "
            "`warehouse/pql.duckdb`, `features.engine: spark`, `model.pinned_version: <version>`")
    assert unknown_config_keys(good) == []
