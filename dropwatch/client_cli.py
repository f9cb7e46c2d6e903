"""Client commands that talk to a running daemon's API (top, query).

Registered by cli.build_parser through add_commands().
"""

from __future__ import annotations

import argparse


def add_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register client subcommands on the main parser."""
    return None
