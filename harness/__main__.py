"""`python -m lora_harness COMMAND` (console script `lora-harness`): commands on the reports runs wrote."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lora_harness.inert_text import visible
from lora_harness.reports.merge import MergeError, merge_shards


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lora-harness", description="Commands on the reports of lora-harness runs.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    merge = commands.add_parser(
        "merge",
        help="merge the reports of a run's shards (pytest --shard K/N) into one",
        description="Merge the results.json of every shard of one run (pytest --shard K/N) into one results.json, "
        "results.csv, junit.xml and report.html. Exit code 0 when every check passed, 1 otherwise, 2 when the "
        "folders are not the shards of one run (different base, settings or version, an adapter twice, a shard "
        "missing).",
    )
    merge.add_argument("folders", nargs="+", type=Path, metavar="DIR", help="a shard's --report-dir (its results.json)")
    merge.add_argument("--report-dir", type=Path, required=True, metavar="OUT", help="where the merged report goes")
    args = parser.parse_args(argv)
    try:
        return merge_shards(args.folders, args.report_dir)
    except MergeError as error:  # it names adapters and folders, which come from strangers
        merge.error(visible(str(error)))  # exits 2, as pytest does on a usage error


if __name__ == "__main__":
    sys.exit(main())
