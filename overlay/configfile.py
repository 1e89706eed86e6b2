"""Reading TOML config files with errors that name the file and the key.

Both programs build frozen config dataclasses from a :class:`Table`; every typed
getter checks its value, and :meth:`Table.done` refuses keys nobody read, so a
typo (``pasword``) is an error rather than a silently ignored setting.
"""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Any, NoReturn

from overlay.exceptions import ConfigError
from overlay.offload import MAX_RECORD


def load(path: str | Path) -> Table:
    """Read a TOML file; raise :class:`ConfigError` for a missing, unreadable or invalid file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return Table(data, path, "")


class Table:
    """One TOML table, read key by key with type checks."""

    def __init__(self, data: dict[str, Any], path: Path, prefix: str) -> None:
        self._data = data
        self._seen: set[str] = set()
        self.path = path
        self._prefix = prefix

    def _name(self, key: str) -> str:
        return f"{self._prefix}{key}"

    def fail(self, key: str, message: str) -> NoReturn:
        raise ConfigError(f"{self.path}: {self._name(key)}: {message}")

    def _get(self, key: str, default: Any, required: bool) -> Any:
        self._seen.add(key)
        if key not in self._data:
            if required:
                self.fail(key, "is required")
            return default
        return self._data[key]

    def fail_here(self, message: str) -> NoReturn:
        """Refuse the table as a whole (for checks that involve several of its keys)."""
        raise ConfigError(f"{self.path}: {self._prefix.rstrip('.') or 'top level'}: {message}")

    def table(self, key: str, required: bool = False) -> Table:
        value = self._get(key, {}, required)
        if not isinstance(value, dict):
            self.fail(key, "must be a table ([section])")
        return Table(value, self.path, f"{self._name(key)}.")

    def tables(self, key: str) -> list[Table]:
        """An array of tables (``[[key]]``), each named ``key[i]`` in errors."""
        value = self._get(key, [], False)
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.fail(key, f"must be an array of tables ([[{key}]])")
        return [Table(v, self.path, f"{self._name(key)}[{i}].") for i, v in enumerate(value)]

    def raw(self, key: str) -> Any:
        """The value as TOML gave it, for keys that take more than one type."""
        return self._data.get(key)

    def has(self, key: str) -> bool:
        return key in self._data

    def string(self, key: str, default: str | None = None, required: bool = False) -> str:
        value = self._get(key, default, required or default is None)
        if not isinstance(value, str) or not value:
            self.fail(key, f"must be a non-empty string, got {value!r}")
        return value

    def optional_str(self, key: str) -> str | None:
        if key not in self._data:
            self._seen.add(key)
            return None
        return self.string(key)

    def integer(self, key: str, default: int | None = None, low: int = 0, high: int = 2**31) -> int:
        value = self._get(key, default, default is None)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            self.fail(key, f"must be a whole number from {low} to {high}, got {value!r}")
        return value

    def number(self, key: str, default: float, low: float = 0.0, high: float = 1e9) -> float:
        value = self._get(key, default, False)
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not low <= value <= high
        ):
            self.fail(key, f"must be a number from {low} to {high}, got {value!r}")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key, default, False)
        if not isinstance(value, bool):
            self.fail(key, f"must be true or false, got {value!r}")
        return value

    def strings(self, key: str, default: list[str] | None = None) -> list[str]:
        value = self._get(key, default, default is None)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.fail(key, f"must be a list of non-empty strings, got {value!r}")
        return list(value)

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.string(key, default)
        if value not in choices:
            self.fail(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def ipv4(self, key: str, default: str) -> ipaddress.IPv4Address:
        value = self.string(key, default)
        try:
            return ipaddress.IPv4Address(value)
        except ValueError:
            self.fail(key, f"must be an IPv4 address, got {value!r}")

    def file(self, key: str, default: str | None = None) -> Path:
        """A path relative to the config file's folder; the file must exist."""
        path = self.path.parent / self.string(key, default)
        try:
            if not path.is_file():
                self.fail(key, f"file {path} does not exist")
        except PermissionError:
            self.fail(key, f"cannot reach {path}: permission denied (run as a user that may)")
        return path

    def optional_file(self, key: str) -> Path | None:
        if key not in self._data:
            self._seen.add(key)
            return None
        return self.file(key)

    def done(self) -> None:
        """Refuse keys that no getter asked for: they are typos or settings of another version."""
        unknown = sorted(set(self._data) - self._seen)
        if unknown:
            self.fail(unknown[0], "unknown key (check its spelling and section)")


def read_secret(table: Table, key: str, file_key: str) -> str | None:
    """Read a secret given inline (``key``) or in a file (``file_key``), never both."""
    if table.has(key) and table.has(file_key):
        table.fail(key, f"give either {key} or {file_key}, not both")
    path = table.optional_file(file_key)
    if path is not None:
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            table.fail(file_key, f"cannot read {path}: {exc.strerror}")
        if not secret:
            table.fail(file_key, f"{path} is empty")
        return secret
    return table.optional_str(key)


def offload_room(table: Table, key: str, value: int) -> None:
    """Refuse a size that cannot hold two of the 64 KiB segments offload carries."""
    if value < 2 * MAX_RECORD:
        table.fail(
            key,
            f"{value} is too small for offload (64 KiB segments): give at least "
            f"{2 * MAX_RECORD} or turn offload off",
        )
