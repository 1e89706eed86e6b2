"""Where the live firewall rules come from and go to.

At start the rules are the config's (``[[firewall.rule]]``), unless they were
changed at run time: then they are the state file's (``firewall-rules.json``),
so a restart keeps what the operator did with ``overlay rule …``. ``reset``
deletes the file and returns to the config's rules. Each change is checked in
full before anything is saved or applied, and the file is replaced atomically,
so a bad command leaves both the file and the running rules as they were.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from overlay.exceptions import ConfigError
from overlay.server.config import FirewallConfig
from overlay.server.rules import STEP, RuleError, Ruleset, make_rule


class Rulebook:
    """The running rules (shared with the firewall) and their persistence."""

    def __init__(self, config: FirewallConfig, path: Path) -> None:
        self.config = config
        self.path = path
        saved = self._saved()
        self.changed = saved is not None  # the rules differ from the config's
        if saved is None:
            self.ruleset = Ruleset.build(config.rules, config.profiles)  # checked with the config
            return
        try:
            self.ruleset = Ruleset.build(saved, config.profiles)
        except RuleError as exc:
            raise ConfigError(f"{self.path}: {exc} (or run overlay rule reset)") from None

    def _saved(self) -> list[dict[str, Any]] | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{self.path}: cannot read the saved firewall rules ({exc}); "
                "repair the file, or return to the config's rules with overlay rule reset"
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
            raise ConfigError(f"{self.path}: no rules list; repair it or run overlay rule reset")
        rules: list[dict[str, Any]] = data["rules"]
        return rules

    def listing(self) -> dict[str, Any]:
        return {
            "rules": [rule.as_dict() for rule in self.ruleset.rules],
            "unmatched": self.ruleset.unmatched,
            "source": str(self.path) if self.changed else "config",
        }

    def change(self, command: dict[str, Any]) -> dict[str, Any]:
        """Apply one command (``op``: list, add, delete, move, renumber, reset) and save."""
        op = command.get("op")
        if op == "list":
            return self.listing()
        if op == "reset":
            fresh = Ruleset.build(self.config.rules, self.config.profiles)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.ruleset.rules = fresh.rules
            self.changed = False
            return self.listing()
        trial = Ruleset(list(self.ruleset.rules))
        if op == "add":
            spec = dict(command.get("rule") or {})
            number = command.get("number") or trial.next_number()
            trial.insert(make_rule(integer(number), spec, self.config.profiles))
        elif op == "remove":
            trial.remove(integer(command.get("number")))
        elif op == "move":
            trial.move(integer(command.get("number")), integer(command.get("to")))
        elif op == "renumber":
            trial.renumber(integer(command.get("start", STEP)), integer(command.get("step", STEP)))
        else:
            raise RuleError(f"unknown rule command {op!r}")
        self._save(trial)
        self.ruleset.rules = trial.rules
        self.changed = True
        return self.listing()

    def _save(self, ruleset: Ruleset) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"rules": ruleset.specs()}, indent=2) + "\n")
        os.replace(temporary, self.path)


def integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RuleError(f"{value!r} is not a rule number")
    return value
