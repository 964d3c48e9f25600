"""Every set-up command of core.cli runs as `./run <command>`, as the README's "Setting up
production" says (set-payout-account was missing: found by a helper, session 21)."""

from __future__ import annotations

import re
from pathlib import Path

from ops import supervisor

ROOT = Path(__file__).resolve().parent.parent
# Run by the Procfile and the supervisor themselves, not by an operator.
INTERNAL = {"release", "sandbox-worker"}


def test_every_cli_command_runs_through_run():
    source = (ROOT / "core" / "cli.py").read_text()
    commands = set(re.findall(r'sub\.add_parser\(\s*"([a-z-]+)"', source))
    assert {"add-partner", "set-payout-account", "set-home-point"} <= commands
    assert commands - INTERNAL == set(supervisor.CLI_COMMANDS)


def test_the_readme_names_only_commands_that_run():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Setting up production", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([a-z]+(?:-[a-z]+)+|migrate|seed|retention) --", section))
    assert named and named <= set(supervisor.CLI_COMMANDS), named - set(supervisor.CLI_COMMANDS)
