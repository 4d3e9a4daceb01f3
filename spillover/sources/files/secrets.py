"""Reading OAuth client secrets in file mode.

The value only ever travels inside a SecretStr; errors name the file, never the content.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from spillover.policy import OAuthConfig, SecretRef


class SecretError(Exception):
    pass


def read_secret_file(path: str | Path) -> SecretStr:
    """The file's content without the trailing newline most tools write."""
    try:
        data = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SecretError(f"secret file {path} does not exist") from None
    except UnicodeDecodeError:
        raise SecretError(f"secret file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise SecretError(f"cannot read secret file {path}: {exc.strerror}") from None
    value = data.rstrip("\r\n")
    if not value:
        raise SecretError(f"secret file {path} is empty")
    return SecretStr(value)


def is_kubernetes_ref(ref: SecretRef | None) -> bool:
    return ref is not None and ref.file is None


def resolve_client_secret(oauth: OAuthConfig) -> SecretStr | None:
    """The client secret for file mode: inline, or read from clientSecretRef.file.

    Returns None for a Kubernetes Secret reference ({name, key}), which only the
    Kubernetes source can resolve. Read on every call so a rotated file is picked up.
    """
    if oauth.client_secret is not None:
        return oauth.client_secret
    ref = oauth.client_secret_ref
    if ref is None or ref.file is None:
        return None
    return read_secret_file(ref.file)
