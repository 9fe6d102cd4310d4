"""Who may call the manager: its token (made on first start and kept in the data dir), and
the Host and Origin headers the REST mirror answers to.

Loopback alone keeps out other machines, not other local users' processes nor a web page in
the user's browser: a page can post to 127.0.0.1 (its Origin says so) or, by DNS rebinding,
make its own name resolve to 127.0.0.1 (its Host says so). So a token is required by default,
and REST refuses a Host that is not this machine's loopback or bound name and any browser
Origin not configured.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

TOKEN_FILE = "token"  # in the data dir: mode 0600, one line
ANY = "*"


class AccessError(SystemExit):
    """A setting or file that makes the manager refuse to start (one line, no traceback)."""


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token_file(path: Path) -> str:
    """The token in `path`, which must be a regular file only its owner can read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise AccessError(f"cannot read the token file {path}: {e.strerror}") from None
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() \
                or st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise AccessError(
                f"the token file {path} is mode {stat.S_IMODE(st.st_mode):04o} (owner uid "
                f"{st.st_uid}): it must be yours and mode 0600; delete it and a new token is "
                "made at the next start")
        token = f.read().strip()
    if not token:
        raise AccessError(f"the token file {path} is empty; delete it and a new token is made "
                          "at the next start")
    return token


def data_dir_token(data_dir: Path) -> tuple[str, Path]:
    """The token kept in `data_dir`, made (secrets.token_urlsafe) on first start: (token, its
    file). Written whole or not at all (a temp file, hard-linked into place), so two managers
    starting on one data dir agree on one token."""
    path = data_dir / TOKEN_FILE
    if not path.exists() and not path.is_symlink():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=".token-")  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
            with contextlib.suppress(FileExistsError):  # another manager was first: use its
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    return read_token_file(path), path


def resolve_token(token: str | None, no_token: bool,
                  data_dir: Path) -> tuple[str | None, Path | None]:
    """The token to require and the file it is kept in: an explicit one (kept nowhere), none
    (`--no-token`), else the data dir's."""
    if token and no_token:
        raise AccessError("--token and --no-token contradict each other: pass one")
    if no_token:
        return None, None
    if token:
        return token, None
    return data_dir_token(data_dir)


def _host_name(header: str) -> str:
    """'127.0.0.1:10900' -> '127.0.0.1', '[::1]:10900' -> '::1', 'Example.COM' -> 'example.com'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def host_problem(header: str | None, bound: str, allowed: Iterable[str]) -> str | None:
    """Why the Host header is refused, or None: loopback names, the address the server is
    bound to and the configured names are allowed ('*': any)."""
    allowed = {a.lower() for a in allowed}
    if ANY in allowed:
        return None
    name = _host_name(header or "")
    if name and (is_loopback(name) or name == _host_name(bound) or name in allowed):
        return None
    return (f"Host header {header!r} is not allowed: the venv manager answers to loopback "
            f"names (127.0.0.1, localhost, ::1){'' if is_loopback(bound) else ', ' + bound}"
            + (f", {', '.join(sorted(allowed))}" if allowed else "")
            + "; add a name with --allowed-host (a web page may be rebinding its DNS name)")


def origin_problem(header: str | None, allowed: Iterable[str]) -> str | None:
    """Why the Origin header is refused, or None. A browser sends one with every cross-site
    request (and fetch()); other clients send none. Only configured origins are allowed."""
    if header is None:
        return None
    allowed = {a.rstrip("/").lower() for a in allowed}
    if ANY in allowed or header.rstrip("/").lower() in allowed:
        return None
    return (f"Origin header {header!r} is not allowed: the venv manager refuses requests "
            "from web pages; allow one with --allowed-origin")
