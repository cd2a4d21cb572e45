"""Who may use a team server: the token file (``--token-file``), one client a line, ``NAME TOKEN``.

Blank lines and lines starting with ``#`` are skipped. A client presents its token in
``initializationOptions.token``; ``TokenTable.name_of`` compares it with every entry in constant
time (``hmac.compare_digest``) so that neither a match's position nor a prefix shows in the
timing. Tokens are never logged or shown: errors name the file and the line number only.
"""

from __future__ import annotations

import hmac
from pathlib import Path

MIN_TOKEN_LENGTH = 16  # a shorter one can be guessed over the network


class TokenFileError(ValueError):
    """The token file cannot be read or has a bad line."""


class TokenTable:
    def __init__(self, entries: list[tuple[str, str]]):
        if not entries:
            raise TokenFileError("the token file names no client")
        self._entries = [(name, token.encode("utf-8")) for name, token in entries]

    @classmethod
    def read(cls, path: str | Path) -> TokenTable:
        path = Path(path).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenFileError(f"cannot read the token file {path}: {exc}") from None
        entries: list[tuple[str, str]] = []
        names: set[str] = set()
        for number, line in enumerate(lines, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.split()
            if len(parts) != 2:
                raise TokenFileError(f"{path}:{number}: expected 'NAME TOKEN' (two words)")
            name, token = parts
            if len(token) < MIN_TOKEN_LENGTH:
                raise TokenFileError(f"{path}:{number}: the token of {name!r} is shorter than {MIN_TOKEN_LENGTH} "
                                     "characters (make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))')")
            if name in names:
                raise TokenFileError(f"{path}:{number}: {name!r} is named twice")
            names.add(name)
            entries.append((name, token))
        return cls(entries)

    def name_of(self, token: object) -> str | None:
        """The client's name for ``token``, or None. Every entry is compared, match or not."""
        if not isinstance(token, str):
            return None
        given = token.encode("utf-8", "surrogatepass")
        found = None
        for name, expected in self._entries:
            if hmac.compare_digest(given, expected):
                found = name
        return found

    def __len__(self) -> int:
        return len(self._entries)
