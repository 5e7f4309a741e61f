"""The documentation is checked like the code. The README and the pages under docs/ (the MkDocs
site, mkdocs.yml): every link resolves (a file that exists; an #anchor that is a heading of the
target page under MkDocs' slug rule, and under GitHub's too, so that it works on both), every
page is in the site's nav, the README stays a short front page with the two commands, and the
commands and code in the pages' code blocks work as written: `seqbench` overrides compose into a
config that check_config accepts, `seqbench-compare` and `seqbench-report` accept their
arguments, `make` targets exist, Python examples run. `make test` also builds the site with
`mkdocs build --strict`, and so does a test here."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml

from tests.conftest import ROOT, compose_config

DOCS = ROOT / "docs"
README = ROOT / "README.md"
# every Markdown page: the README, CONTRIBUTING.md and the site's pages (the preset reports and
# the example report included: their links and figures must resolve too)
PAGES = [README, ROOT / "CONTRIBUTING.md", *sorted(DOCS.rglob("*.md"))]
# pages written by a program or owned elsewhere: their links are checked, their commands are not
# (a report lists every run's command, with the sweep's own paths)
GENERATED = {DOCS / "report_example.md", DOCS / "mutation.md", *DOCS.glob("presets/*.md")}
WRITTEN = [p for p in PAGES if p not in GENERATED]

LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


def rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


# --- reading Markdown ----------------------------------------------------------------------


def blocks(text: str) -> tuple[list[tuple[str, str, int]], str]:
    """The fenced code blocks of `text` as (language, body, line of the fence), and the text
    with every block's lines blanked (same line numbers)."""
    found, prose, fence, lang, body, start = [], [], None, "", [], 0
    for number, line in enumerate(text.split("\n"), 1):
        stripped = line.lstrip()
        if fence is None and stripped.startswith(("```", "~~~")):
            fence, lang, body, start = stripped[:3], stripped[3:].strip(), [], number
            prose.append("")
        elif fence is not None and stripped.startswith(fence):
            found.append((lang, "\n".join(body), start))
            fence = None
            prose.append("")
        elif fence is not None:
            body.append(line)
            prose.append("")
        else:
            prose.append(line)
    return found, "\n".join(prose)


def without_code_spans(prose: str) -> str:
    return re.sub(r"(`+)(?:(?!\1).)+?\1", "", prose, flags=re.S)


def links(page: Path) -> list[str]:
    """Every link and image target of a page, outside code."""
    _, prose = blocks(page.read_text())
    return LINK.findall(without_code_spans(prose))


def heading_texts(text: str) -> list[str]:
    """The headings of a Markdown text as rendered: code spans keep their content, links their
    text, emphasis markers go (ATX headings only: the pages use no other kind)."""
    _, prose = blocks(text)
    texts = []
    for line in prose.split("\n"):
        if m := HEADING.match(line):
            text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(2))
            text = re.sub(r"`([^`]*)`", r"\1", text)
            texts.append(re.sub(r"\*\*|__", "", text))
    return texts


def mkdocs_slug(text: str) -> str:
    """Python-Markdown's toc slugify, the rule of this site's mkdocs.yml (`toc` with its default
    slugify): ASCII only, punctuation removed, runs of spaces and hyphens to one hyphen."""
    from markdown.extensions.toc import slugify

    return slugify(text, "-")


def github_slug(text: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation removed (not '-' or '_'), each
    space a hyphen (runs are not merged)."""
    text = unicodedata.normalize("NFC", text).lower()
    return "".join(c for c in text if c.isalnum() or c in " -_").replace(" ", "-")


def anchors(page: Path, slug) -> set[str]:
    """The anchors of a page's headings, numbered as both renderers do for repeats (_1, -1)."""
    seen: dict[str, int] = {}
    out = set()
    separator = "_" if slug is mkdocs_slug else "-"
    for text in heading_texts(page.read_text()):
        base = slug(text)
        if base in seen:
            seen[base] += 1
            out.add(f"{base}{separator}{seen[base]}")
        else:
            seen[base] = 0
            out.add(base)
    return out


def test_the_slug_rules() -> None:
    """The two rules agree on plain headings and differ where GitHub keeps a run of hyphens."""
    text = "## The fused path (`model.engine=fused`)\n\n```bash\n# a comment, no heading\n```\n"
    assert heading_texts(text) == ["The fused path (model.engine=fused)"]
    plain = "The fused path (model.engine=fused)"
    assert mkdocs_slug(plain) == github_slug(plain) == "the-fused-path-modelenginefused"
    spaced = "copy at T = 50"
    assert (mkdocs_slug(spaced), github_slug(spaced)) == ("copy-at-t-50", "copy-at-t--50")


# --- links ---------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_link_resolves(page: Path) -> None:
    """A relative link names a file that exists (a page of the site links only inside docs/,
    which `mkdocs build --strict` requires); its #anchor is a heading of the target page under
    MkDocs' rule and GitHub's. Anchors into the API reference are the ids mkdocstrings gives
    the objects it renders (seqbench.module.name): the strict build checks those."""
    problems = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / unquote(path)).resolve() if path else page
        if not dest.exists():
            problems.append(f"{target}: no such file")
            continue
        if page.is_relative_to(DOCS) and not dest.is_relative_to(DOCS):
            problems.append(f"{target}: outside docs/, which the site cannot link to")
        if not anchor or dest.suffix != ".md":
            continue
        if "\n::: " in "\n" + dest.read_text():  # a page of mkdocstrings blocks
            if not anchor.startswith("seqbench."):
                problems.append(f"{target}: not an object of the API reference")
            continue
        for rule in (mkdocs_slug, github_slug):
            if anchor not in anchors(dest, rule):
                problems.append(f"{target}: no heading with that anchor ({rule.__name__})")
    assert not problems, f"{rel(page)}: " + "; ".join(problems)


def test_the_link_check_can_fail(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# A page\n\n## Two words\n\n[a](missing.md) [b](#two-words) [c](#nope)\n")
    assert links(page) == ["missing.md", "#two-words", "#nope"]
    assert anchors(page, mkdocs_slug) == {"a-page", "two-words"}


# --- the site's structure ------------------------------------------------------------------


def nav_pages(nav) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [p for value in nav.values() for p in nav_pages(value)]
    return [p for item in nav for p in nav_pages(item)]


def test_every_page_is_in_the_nav() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["docs_dir"] == "docs"
    listed = nav_pages(config["nav"])
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(listed) == pages
    assert listed[0] == "index.md"


def test_the_readme_is_a_front_page_that_links_every_page() -> None:
    text = README.read_text()
    assert len(text.split("\n")) <= 250
    # the Quick start is the two commands, nothing else
    quick = text.split("## Quick start\n", 1)[1]
    code, _ = blocks(quick)
    commands = [line.split("#")[0].split() for line in code[0][1].split("\n") if line.strip()]
    assert commands == [["make", "run"], ["make", "test"]]
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README)}
    written = {p.resolve() for p in DOCS.glob("*.md") if p not in GENERATED}
    assert written - linked == set(), "pages the README does not link"


# --- commands and code in the pages --------------------------------------------------------

PROGRAMS = ("seqbench", "seqbench-compare", "seqbench-report", "make")
# placeholders the pages write in commands, and a value each can take in a check
PLACEHOLDERS = {"NAME": "adding_lengths", "N": "2", "NUM_GPUS": "2"}
# flags of `seqbench` that are not overrides (Hydra's own), with how many values follow each
FLAGS = {"-m": 0, "--multirun": 0, "--help": 0, "-h": 0, "--info": 0, "--cfg": 1, "-c": 1,
         "-sc": 1, "--shell-completion": 1, "--package": 1, "-p": 1}  # fmt: skip


def placeholder(word: str) -> str:
    """A word, or an override's value, that is a placeholder, given a value it can take."""
    key, eq, value = word.rpartition("=")
    return f"{key}{eq}{PLACEHOLDERS.get(value, value)}"


def commands(page: Path) -> list[tuple[str, list[str]]]:
    """The commands of a page: every line of its shell code blocks (a backslash continues a
    line) and every inline code span, that starts with one of PROGRAMS followed by arguments."""
    found = []
    code, prose = blocks(page.read_text())
    lines = [
        (f"{rel(page)}:{start}", line)
        for lang, body, start in code
        if lang in ("bash", "sh", "shell", "console", "")
        for line in body.replace("\\\n", " ").split("\n")
    ]
    for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", prose):
        number = prose[: m.start()].count("\n") + 1
        lines.append((f"{rel(page)}:{number}", m.group(1).replace("\n", " ")))
    for where, line in lines:
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # not shell (an unbalanced quote in prose)
            continue
        if len(words) >= 1 and words[0] in PROGRAMS and (len(words) > 1 or words[0] == "seqbench"):
            found.append((where, [placeholder(w) for w in words]))
    return found


COMMANDS = [c for page in WRITTEN for c in commands(page)]


def first_of_each_sweep(overrides: list[str]) -> list[str]:
    """A sweep's first job: each swept value list, range or interval replaced by its first value
    (its start)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for o in OverridesParser.create().parse_overrides(overrides):
        if not o.is_sweep_override():
            out.append(o.input_line)
            continue
        value = next(iter(o.sweep_string_iterator())) if o.is_discrete_sweep() else o.value().start
        out.append(f"{o.get_key_element()}={value}")
    return out


def check_seqbench(args: list[str]) -> None:
    from seqbench.checks import check_config

    overrides, skip = [], 0
    for arg in args:
        if skip:
            skip -= 1
        elif arg in FLAGS:
            skip = FLAGS[arg]
        else:
            overrides.append(arg)
    cfg = compose_config(first_of_each_sweep(overrides), hydra=True)
    if cfg.hardware.device != "cuda":  # a command for a GPU machine: composing is the check
        check_config(cfg)


def check_compare(args: list[str], tmp_path: Path, capsys) -> None:
    """seqbench-compare parses the arguments, then refuses the paths, which do not exist here:
    exit status 2 with that message, not argparse's usage error."""
    from seqbench.compare import main

    assert main(args) == 2
    assert "does not exist" in capsys.readouterr().err


def check_make(args: list[str]) -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = [a for a in args if not a.startswith("-") and "=" not in a]
    for target in targets:
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"no make target {target}"


@pytest.mark.parametrize("where,args", COMMANDS, ids=[f"{w} {' '.join(a)}" for w, a in COMMANDS])
def test_the_commands_in_the_pages_run_as_written(
    where: str, args: list[str], tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    program, rest = args[0], args[1:]
    if program == "seqbench":
        check_seqbench(rest)
    elif program == "seqbench-compare":
        check_compare(rest, tmp_path, capsys)
    elif program == "seqbench-report":
        from seqbench.report.cli import parse_args

        parse_args(rest)
    else:
        check_make(rest)


def test_the_pages_hold_the_commands_that_are_checked() -> None:
    """The collection finds what the pages show: the Quick start, a sweep, a preset, the
    comparison and the report (a page that lost its commands would pass vacuously)."""
    shown = {" ".join(args) for _, args in COMMANDS}
    for command in ("make run", "make test", "seqbench -m model=rnn,lstm,gru seed=0,1,2",
                    "seqbench -m experiment=adding_lengths", "make docs"):  # fmt: skip
        assert command in shown
    assert any(c.startswith("seqbench-compare ") for c in shown)
    assert any(c.startswith("seqbench-report ") for c in shown)
    assert len(shown) > 40


def test_a_wrong_command_in_a_page_would_fail(tmp_path: Path, capsys) -> None:
    from hydra.errors import ConfigCompositionException

    from seqbench.errors import ConfigError

    with pytest.raises(ConfigCompositionException):  # a misspelled key
        check_seqbench(["-m", "model=rnn,lstm", "model.hiden_size=8"])
    with pytest.raises(ConfigError):  # a value check_config refuses
        check_seqbench(["model.dropout=0.1"])
    with pytest.raises(SystemExit):  # an option seqbench-compare does not have
        check_compare(["multirun/x", "--versus", "model"], tmp_path, capsys)
    with pytest.raises(AssertionError):
        check_make(["no-such-target"])


PYTHON = [
    (f"{rel(page)}:{start}", body)
    for page in WRITTEN
    for lang, body, start in blocks(page.read_text())[0]
    if lang in ("python", "py")
]


@pytest.mark.parametrize("where,code", PYTHON, ids=[w for w, _ in PYTHON])
def test_the_python_examples_run(where: str, code: str, capsys) -> None:
    exec(compile(code, where, "exec"), {"__name__": "__docs__"})


# --- the site builds -----------------------------------------------------------------------


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """`mkdocs build --strict` (as `make docs` and `make test` run it): a broken link or anchor, a
    page outside the nav, a docstring mkdocstrings cannot render, each fails it. A few seconds."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").is_file()
