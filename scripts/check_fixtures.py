#!/usr/bin/env python3
"""Send every tests/fixtures/<case>/request.json to a running hook and diff the answer with response.json.

    python scripts/check_fixtures.py --url http://127.0.0.1:8080   # a hook you started (python -m hooks)
    python scripts/check_fixtures.py --serve                        # start one with uvicorn, check, stop it
    python scripts/check_fixtures.py --serve --write                # regenerate the expected answers

A case's call.json names the path and the expected status code. Times the hook sets to "now" (a condition's
lastTransitionTime that the request did not already carry) are checked to be within a minute of the present and
compared as "<now>". Exit 0 when every case matches. The hook must run with default settings.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
NOW = "<now>"


def cases(root: Path = FIXTURES) -> list[Path]:
    return sorted(path.parent for path in root.glob("*/request.json"))


def normalize(request: dict[str, Any], answer: Any) -> Any:
    """Replace fresh transition times by "<now>", after checking that they are the present."""
    if not isinstance(answer, dict) or not isinstance(answer.get("status"), dict):
        return answer
    parent_status = (request.get("parent") or {}).get("status") or {}
    carried = {c.get("lastTransitionTime") for c in parent_status.get("conditions") or [] if isinstance(c, dict)}
    for condition in answer["status"].get("conditions", []):
        stamp = condition.get("lastTransitionTime")
        if stamp in carried:
            continue
        when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        if abs(datetime.now(UTC) - when) > timedelta(minutes=1):
            raise AssertionError(f"lastTransitionTime {stamp} is neither carried over nor now")
        condition["lastTransitionTime"] = NOW
    return answer


def render(value: Any) -> list[str]:
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").splitlines(keepends=True)


def check(url: str, write: bool = False, root: Path = FIXTURES) -> int:
    failures = 0
    with httpx.Client(base_url=url, timeout=10) as client:
        for case in cases(root):
            call = json.loads((case / "call.json").read_text())
            request = json.loads((case / "request.json").read_text())
            reply = client.post(call["path"], content=(case / "request.json").read_bytes(),
                                headers={"content-type": "application/json"})  # fmt: skip
            try:
                actual = normalize(request, reply.json())
            except (ValueError, AssertionError) as error:
                print(f"FAIL {case.name}: {error}")
                failures += 1
                continue
            if write:
                (case / "response.json").write_text("".join(render(actual)))
                call["status"] = reply.status_code
                (case / "call.json").write_text(json.dumps(call, indent=2) + "\n")
                print(f"wrote {case.name} ({reply.status_code})")
                continue
            expected = json.loads((case / "response.json").read_text())
            diff = list(difflib.unified_diff(render(expected), render(actual), f"{case.name}/response.json", "hook"))
            if reply.status_code != call["status"] or diff:
                failures += 1
                print(f"FAIL {case.name}: HTTP {reply.status_code} (expected {call['status']})")
                sys.stdout.writelines(diff)
            else:
                print(f"ok   {case.name}")
    print(f"{len(cases(root)) - failures} passed, {failures} failed")
    return 1 if failures else 0


def serve() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDSTORAGE_")}
    root = Path(__file__).resolve().parent.parent
    process = subprocess.Popen(
        [sys.executable, "-m", "hooks", "--port", str(port), "--log-level", "warning"], cwd=root, env=env
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)
        if process.poll() is not None:
            break
    process.kill()
    raise SystemExit("the hook did not start; see its output above")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="a running hook (default: %(default)s)")
    parser.add_argument("--serve", action="store_true", help="start the hook with uvicorn on a free port")
    parser.add_argument("--write", action="store_true", help="write the answers as the new expectations")
    args = parser.parse_args()
    if not args.serve:
        return check(args.url, args.write)
    process, url = serve()
    try:
        return check(url, args.write)
    finally:
        process.terminate()
        process.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
