"""Keep credentials out of the store: nothing whose text holds a secret from the environment is written.

Besides the values of credential-like environment variables, it refuses the content of any private key
this process has loaded (a signing key): a key pasted into a model card or a summary must not be published.
"""

from __future__ import annotations

import os
import re

from jnreg.errors import StoreError

SECRET_NAME = re.compile(r"TOKEN|SECRET|KEY|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
# Shorter values (KEY=1) are too likely to occur by chance to be worth refusing a publish over.
MIN_SECRET_LENGTH = 8
# Each base64 line of a PEM body is random enough that finding one means the key leaked.
_remembered: dict[bytes, str] = {}


def remember_secret(pem: bytes, what: str) -> None:
    """Refuse from now on to store any line of ``pem``'s body (a private key just loaded, named by ``what``)."""
    for line in pem.splitlines():
        line = line.strip()
        if len(line) >= 16 and not line.startswith(b"-----"):
            _remembered[line] = what


def refuse_secrets(data: str | bytes, what: str) -> None:
    """Raise when ``data`` holds the value of an environment variable that looks like a credential, or a key loaded."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    for name, value in os.environ.items():
        if SECRET_NAME.search(name) and len(value) >= MIN_SECRET_LENGTH and value.encode("utf-8") in raw:
            raise StoreError(f"refusing to store a secret: {what} contains the value of ${name}")
    for line, source in _remembered.items():
        if line in raw:
            raise StoreError(f"refusing to store a secret: {what} contains part of the private key of {source}")
