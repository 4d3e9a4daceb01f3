"""Credentials for the remote backend: OAuth2 client credentials and where their secret lives."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_serializer, field_validator, model_validator

from spillover.policy.meta import Base, resolve_path
from spillover.policy.types import fail, fail_many


class SecretRef(Base):
    """Where a secret lives: a Kubernetes Secret key ({name, key}) or a file ({file})."""

    name: str | None = None
    key: str | None = None
    namespace: str | None = None
    file: str | None = Field(default=None, description="Path of a file holding the secret (file mode)")

    @field_validator("file", mode="after")
    @classmethod
    def _abs(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else resolve_path(value, info)

    @model_validator(mode="after")
    def _one_form(self) -> SecretRef:
        k8s = self.name is not None or self.key is not None or self.namespace is not None
        if self.file is not None and k8s:
            raise fail("set either file, or name and key of a Kubernetes Secret, not both")
        if self.file is None:
            if not k8s:
                raise fail("set either file, or name and key of a Kubernetes Secret")
            if self.name is None:
                raise fail("is required", "name")
            if self.key is None:
                raise fail("is required", "key")
        elif not self.file:
            raise fail("must not be empty", "file")
        return self


class OAuthConfig(Base):
    """OAuth2 client credentials (Beamlit fields, plus clientSecretRef and scopes)."""

    client_id: str = Field(alias="clientId")
    client_secret: SecretStr | None = Field(default=None, description="Inline secret (prefer clientSecretRef)")
    client_secret_ref: SecretRef | None = None
    token_url: str = Field(alias="tokenUrl")
    scopes: list[str] = Field(default_factory=list)

    @field_serializer("client_secret", when_used="always")
    def _hide(self, value: SecretStr | None) -> str | None:
        return None if value is None else "**********"

    @model_validator(mode="after")
    def _check(self) -> OAuthConfig:
        problems: list[tuple[Any, str]] = []
        if self.client_secret is not None and self.client_secret_ref is not None:
            problems.append(("clientSecret", "set either clientSecret or clientSecretRef, not both"))
        elif self.client_secret is None and self.client_secret_ref is None:
            problems.append(("clientSecret", "set clientSecret or clientSecretRef"))
        elif self.client_secret is not None and not self.client_secret.get_secret_value():
            problems.append(("clientSecret", "must not be empty"))
        if not self.client_id:
            problems.append(("clientId", "must not be empty"))
        if not re.match(r"^https?://[^/\s]+", self.token_url):
            problems.append(("tokenUrl", "must be an http:// or https:// URL"))
        if problems:
            raise fail_many(problems)
        return self


class AuthConfig(Base):
    type: Literal["oauth"]
    oauth_config: OAuthConfig | None = Field(default=None, alias="oauthConfig")

    @model_validator(mode="after")
    def _check(self) -> AuthConfig:
        if self.oauth_config is None:
            raise fail('is required when type is "oauth"', "oauthConfig")
        return self
