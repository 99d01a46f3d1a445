#!/usr/bin/env python3
"""Send every tests/fixtures/<case>/request.json to a running hook and diff the answer with response.json.

    python scripts/check_fixtures.py --serve                        # start one with uvicorn, check, stop it
    python scripts/check_fixtures.py --serve --write                # regenerate the expected answers
    python scripts/check_fixtures.py --url http://127.0.0.1:8080   # a hook you started (python -m hooks)

A case's call.json names the path and the expected status code. `--serve` runs the hook under uvicorn with its clock
pinned at FIXTURE_TIME, so the answers that depend on time (how soon to resync before a certificate's renewal,
whether it expired) do not drift as the fixtures' certificates age. A hook given by `--url` runs on the real clock:
its answers match until those certificates near renewal (2030). Times the hook sets to "now" (a condition's
lastTransitionTime that the request did not already carry) are checked to be within a minute of the hook's clock and
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

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
NOW = "<now>"
FIXTURE_TIME = datetime(2026, 12, 1, tzinfo=UTC)  # shortly after the fixtures' certificates were issued


def cases(root: Path = FIXTURES) -> list[Path]:
    return sorted(path.parent for path in root.glob("*/request.json"))


def normalize(request: dict[str, Any], answer: Any, now: datetime) -> Any:
    """Replace fresh transition times by "<now>", after checking that they are the hook's present, `now`."""
    if not isinstance(answer, dict) or not isinstance(answer.get("status"), dict):
        return answer
    parent_status = (request.get("parent") or {}).get("status") or {}
    carried = {c.get("lastTransitionTime") for c in parent_status.get("conditions") or [] if isinstance(c, dict)}
    for condition in answer["status"].get("conditions", []):
        stamp = condition.get("lastTransitionTime")
        if stamp in carried:
            continue
        when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        if abs(now - when) > timedelta(minutes=1):
            raise AssertionError(f"lastTransitionTime {stamp} is neither carried over nor now")
        condition["lastTransitionTime"] = NOW
    return answer


def render(value: Any) -> list[str]:
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").splitlines(keepends=True)


def check(url: str, write: bool = False, root: Path = FIXTURES, now: datetime | None = None) -> int:
    """Every case against the hook at `url`, whose clock reads `now` (None: the real clock)."""
    failures = 0
    with httpx.Client(base_url=url, timeout=10) as client:
        for case in cases(root):
            call = json.loads((case / "call.json").read_text())
            request = json.loads((case / "request.json").read_text())
            reply = client.post(call["path"], content=(case / "request.json").read_bytes(),
                                headers={"content-type": "application/json"})  # fmt: skip
            try:
                actual = normalize(request, reply.json(), now or datetime.now(UTC))
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


def serve(at: datetime) -> tuple[subprocess.Popen[bytes], str]:
    """The hook of this tree under uvicorn on a free port, default settings, its clock pinned at `at`."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDSTORAGE_")}
    process = subprocess.Popen(
        [sys.executable, __file__, "--hook-at", at.isoformat(), "--port", str(port)], cwd=ROOT, env=env
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


def serve_at(at: datetime, port: int) -> int:
    """The child of `serve`: the app of hooks/ with a fixed clock, under uvicorn as `python -m hooks` runs it."""
    sys.path.insert(0, str(ROOT))
    import uvicorn  # noqa: PLC0415 -- only this mode serves

    from etcdstorage import settings  # noqa: PLC0415
    from hooks.app import create_app  # noqa: PLC0415

    app = create_app(settings.from_env(), clock=lambda: at)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="a running hook (default: %(default)s)")
    parser.add_argument("--serve", action="store_true", help="start the hook with uvicorn on a free port")
    parser.add_argument("--write", action="store_true", help="write the answers as the new expectations")
    parser.add_argument(
        "--at",
        type=datetime.fromisoformat,
        default=FIXTURE_TIME,
        help="--serve: the hook's clock (default: %(default)s)",
    )
    parser.add_argument("--hook-at", type=datetime.fromisoformat, help=argparse.SUPPRESS)  # serve's child
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hook_at is not None:
        return serve_at(args.hook_at, args.port)
    if not args.serve:
        return check(args.url, args.write)
    process, url = serve(args.at)
    try:
        return check(url, args.write, now=args.at)
    finally:
        process.terminate()
        process.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
