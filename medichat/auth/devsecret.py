"""
Secret files: the development JWT secret that C{twistd medichat} makes for itself when run
without C{--auth}, and the HMAC secret files that operators hand to C{--auth jwt:...}.

The development secret lives in C{<data-dir>/jwt-dev.secret}: 32 random bytes written as 64
hex digits, readable by its owner only.  The HMAC key is the file's text with surrounding
whitespace removed, so a token minted elsewhere with the same file verifies here.
"""

from __future__ import annotations

import os
import secrets

DEV_SECRET_NAME = "jwt-dev.secret"


class SecretFileError(Exception):
    """
    A secret file could not be read, or holds nothing.
    """


def dev_secret_path(data_dir: str) -> str:
    """
    Where the development secret of the data directory C{data_dir} lives.
    """
    return os.path.join(data_dir, DEV_SECRET_NAME)


def read_secret(path: str) -> bytes:
    """
    Read a secret file.

    @return: the file's bytes without surrounding whitespace.
    @raise SecretFileError: if the file cannot be read or holds only whitespace.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise SecretFileError(f"cannot read secret file {path}: {e.strerror or e}") from e
    secret = data.strip()
    if not secret:
        raise SecretFileError(f"secret file {path} is empty")
    return secret


def load_dev_secret(data_dir: str) -> bytes | None:
    """
    The development secret of C{data_dir}, or L{None} if it was never made.

    @raise SecretFileError: if the file exists but cannot be read or is empty.
    """
    path = dev_secret_path(data_dir)
    if not os.path.exists(path):
        return None
    return read_secret(path)


def load_or_create_dev_secret(data_dir: str) -> bytes:
    """
    The development secret of C{data_dir}, made on first use.

    The file is created with mode C{0600} and never overwritten, so no other user can read it
    and two processes starting at once agree on one secret; C{data_dir} is created if missing.

    @return: the secret (64 ASCII hex digits).
    @raise SecretFileError: if the secret can be neither read nor created.
    """
    path = dev_secret_path(data_dir)
    try:
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
    except OSError as e:
        raise SecretFileError(f"cannot create data directory {data_dir}: {e.strerror}") from e
    existing = load_dev_secret(data_dir)
    if existing is not None:
        return existing
    secret = secrets.token_bytes(32).hex().encode("ascii")
    # Written whole under a private name, then linked into place: another process starting
    # at the same moment either wins the link or reads a complete file, never an empty one.
    tmp = f"{path}.{secrets.token_hex(8)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secret + b"\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            return read_secret(path)
    except OSError as e:
        raise SecretFileError(f"cannot create secret file {path}: {e.strerror}") from e
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    return secret
