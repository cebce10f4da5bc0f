"""The command line shared by the examples."""

from __future__ import annotations

import argparse


def redis_url(description: str) -> str:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--redis-url",
        default="fakeredis://",
        help="redis://host:port/db for a real server (default: embedded fakeredis://)",
    )
    return str(parser.parse_args().redis_url)
