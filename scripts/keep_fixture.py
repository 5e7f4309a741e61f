"""Keep a preset sweep's numbers as a test fixture: copy each run's metrics.json (which holds
its overrides) from SWEEP_DIR to tests/fixtures/presets/NAME/<run>/metrics.json.

    python scripts/keep_fixture.py multirun/long_adding/DATE_TIME long_adding

tests/test_committed_results.py recomputes, from these files, every table that docs/presets/
NAME.md and the README show, so a committed table cannot drift from what seqbench-report
computes. Only metrics.json is kept (a few KB per run): no checkpoints, no event files.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "presets"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="the preset's sweep directory")
    parser.add_argument("name", help="the preset's name (conf/experiment/NAME.yaml)")
    args = parser.parse_args(argv)
    runs = sorted(p.parent for p in args.sweep_dir.glob("*/metrics.json"))
    if not runs:
        print(f"keep_fixture: no */metrics.json under {args.sweep_dir}", file=sys.stderr)
        return 2
    target = FIXTURES / args.name
    shutil.rmtree(target, ignore_errors=True)
    for run in runs:
        (target / run.name).mkdir(parents=True)
        shutil.copyfile(run / "metrics.json", target / run.name / "metrics.json")
    print(f"{len(runs)} runs -> {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
