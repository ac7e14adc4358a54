"""The ``pytest-modelreg`` command (also ``python -m pytest_modelreg``).

Exit codes: 0 done, 1 some sessions could not be replayed, 2 usage error.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from .tracking import SessionRecord


def sync(spool_dir: Path, tracking_uri: str | None, experiment: str | None) -> int:
    """Replay spooled sessions into MLflow; a session already there is completed, not copied."""
    from .tracking.mlflow_tracker import MlflowTracker

    files = sorted(spool_dir.glob("*/session.json")) if spool_dir.is_dir() else []
    if not files:
        print(f"pytest-modelreg sync: nothing to replay in {spool_dir}")
        return 0
    failures = 0
    for path in files:
        try:
            record = SessionRecord.from_json(path.read_text(encoding="utf-8"))
            tracker = MlflowTracker(tracking_uri or record.tracking_uri,
                                    experiment or record.experiment, record.parent_run_id,
                                    resume=True)
            tracker.start(record)
            for test in record.tests:
                tracker.log_test(record, test)
            tracker.finish(record)
        except Exception as exc:
            failures += 1
            print(f"pytest-modelreg sync: {path}: {type(exc).__name__}: {exc}; it stays spooled",
                  file=sys.stderr)
            continue
        shutil.rmtree(path.parent)
        print(f"pytest-modelreg sync: session {record.session_id} ({len(record.tests)} tests) "
              f"-> MLflow run {tracker.run_id} at {tracker.tracking_uri}")
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pytest-modelreg",
                                     description="Tools around pytest-modelreg sessions.")
    commands = parser.add_subparsers(dest="command", required=True)
    replay = commands.add_parser("sync", help="replay sessions spooled while MLflow was "
                                 "unreachable (idempotent: run it as often as you like)")
    replay.add_argument("--spool-dir", type=Path, default=Path(".modelreg-spool"),
                        help="folder of spooled sessions (default: .modelreg-spool)")
    replay.add_argument("--tracking-uri", help="replay to this tracking URI instead of the "
                        "session's own")
    replay.add_argument("--experiment", help="replay into this experiment instead of the "
                        "session's own")
    args = parser.parse_args(argv)
    return sync(args.spool_dir, args.tracking_uri, args.experiment)
