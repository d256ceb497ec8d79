"""Authentication (OIDC tokens, API keys), the scopes a request needs, and
the hash-chained audit trail, enforced in front of every route by one ASGI
middleware (`guard.Guard`)."""

from pathlib import Path

#: Where an archive keeps its API key file and its audit trail, unless told otherwise.
KEYS_FILE = Path("security") / "api-keys.json"
AUDIT_FOLDER = Path("audit")
