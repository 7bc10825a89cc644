#!/usr/bin/env python3
"""Compares a kosoku (Autobahn) report with the committed expected results.

Fails when a case is missing, when a case that is expected to pass no longer does, or when any
case ends in anything but OK, NON-STRICT or INFORMATIONAL. A case that improves is reported so
the expected file can be updated (`--update` rewrites it).
"""
import argparse
import json
import sys
from pathlib import Path

ACCEPTED = {"OK", "NON-STRICT", "INFORMATIONAL"}
RANK = {"OK": 0, "NON-STRICT": 1, "INFORMATIONAL": 1, "UNIMPLEMENTED": 2, "FAILED": 3, "ERROR": 3}


def load_report(report_dir: Path) -> dict:
    index = json.loads((report_dir / "index.json").read_text())
    if len(index) != 1:
        sys.exit(f"expected one server in {report_dir}/index.json, found {len(index)}")
    (cases,) = index.values()
    return {case: {"behavior": r["behavior"], "behaviorClose": r["behaviorClose"]} for case, r in cases.items()}


def case_key(case: str):
    return tuple(int(part) for part in case.split("."))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("report_dir", type=Path)
    parser.add_argument("expected", type=Path)
    parser.add_argument("--update", action="store_true", help="rewrite the expected results")
    parser.add_argument("--label", default="", help="a name for the server under test")
    args = parser.parse_args()
    report_dir, expected_path = args.report_dir, args.expected
    label = f"{args.label}: " if args.label else ""
    actual = load_report(report_dir)
    if args.update:
        ordered = {case: actual[case] for case in sorted(actual, key=case_key)}
        expected_path.write_text(json.dumps(ordered, indent=1) + "\n")
        print(f"{label}wrote {len(ordered)} expected results to {expected_path}")
        return 0
    expected = json.loads(expected_path.read_text())
    problems, improvements = [], []
    for case in sorted(expected, key=case_key):
        want = expected[case]
        got = actual.get(case)
        if got is None:
            problems.append(f"{case}: missing from the report")
            continue
        for field in ("behavior", "behaviorClose"):
            if got[field] not in ACCEPTED:
                problems.append(f"{case}: {field} {got[field]}")
            elif RANK.get(got[field], 3) > RANK.get(want[field], 3):
                problems.append(f"{case}: {field} regressed from {want[field]} to {got[field]}")
            elif got[field] != want[field]:
                improvements.append(f"{case}: {field} {want[field]} -> {got[field]}")
    for case in sorted(set(actual) - set(expected), key=case_key):
        problems.append(f"{case}: not in the expected results (run with --update after review)")
    counts = {}
    for result in actual.values():
        counts[result["behavior"]] = counts.get(result["behavior"], 0) + 1
    summary = ", ".join(f"{n} {b}" for b, n in sorted(counts.items()))
    for line in improvements:
        print(f"{label}improved: {line}")
    if problems:
        for line in problems:
            print(f"{label}REGRESSION {line}")
        print(f"conformance: {label}{len(actual) - len(problems)} passed, {len(problems)} failed")
        return 1
    print(f"{label}{len(actual)} cases as expected ({summary})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
