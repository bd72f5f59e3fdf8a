"""Keep credentials out of the store: nothing whose text holds a secret from the environment is written."""

from __future__ import annotations

import os
import re

from jnreg.errors import StoreError

SECRET_NAME = re.compile(r"TOKEN|SECRET|KEY|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
# Shorter values (KEY=1) are too likely to occur by chance to be worth refusing a publish over.
MIN_SECRET_LENGTH = 8


def refuse_secrets(data: str | bytes, what: str) -> None:
    """Raise when ``data`` holds the value of an environment variable that looks like a credential."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    for name, value in os.environ.items():
        if SECRET_NAME.search(name) and len(value) >= MIN_SECRET_LENGTH and value.encode("utf-8") in raw:
            raise StoreError(f"refusing to store a secret: {what} contains the value of ${name}")
