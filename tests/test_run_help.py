"""What following the README on a running `./run serve` found (reviewer r5, session 25)."""

from __future__ import annotations

import re

from ops import supervisor


def test_run_help_names_every_command_run_accepts(capsys):
    """`./run --help` hides six commands that `./run` runs and the README tells operators
    to use: set-payout-account, set-home-point, close-point, move-point, rename-point
    ("Setting up production") and erase-recipient ("Keeping and erasing personal data").
    An operator who asks `./run --help` what there is does not learn of them. Every command
    of CLI_COMMANDS should be named in the usage (fix: ops/supervisor.py USAGE)."""
    assert supervisor.main(["--help"]) == 0
    usage = capsys.readouterr().out
    named = set(re.findall(r"[a-z][a-z-]+", usage))
    missing = sorted(c for c in supervisor.CLI_COMMANDS if c not in named)
    assert missing == [], f"./run --help does not name: {', '.join(missing)}"
