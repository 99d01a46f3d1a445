"""`python -m hooks`: serve the sync and customize hooks with uvicorn (settings from ETCDSTORAGE_* variables)."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from etcdstorage import settings as settings_module
from hooks.app import create_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hooks", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default: %(default)s)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = settings_module.from_env()
    except settings_module.SettingsError as error:
        print(f"python -m hooks: {error}", file=sys.stderr)
        return 2
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,  # Metacontroller calls every few seconds per object; /metrics counts them instead
        server_header=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
