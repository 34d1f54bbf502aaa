"""Request and response bodies of the auth service (field names are a public contract)."""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

USERNAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{3,40}$")
_LINE_BREAKS_AND_TABS = frozenset("\t\n\r")


def _control_characters(value: str, allowed: frozenset[str], info: ValidationInfo) -> str:
    """Refuse Unicode control characters (category Cc: NUL, ESC, DEL, C1...): Postgres cannot store
    NUL in text (asyncpg raised, a 500) and the others have no place in names, tokens or mail."""
    if not isinstance(value, str):  # before an email's own validation, which refuses it
        return value
    for char in value:
        if char not in allowed and unicodedata.category(char) == "Cc":
            if len(f"a{char}b".splitlines()) > 1:  # a line break, as str.splitlines and mail headers see it
                raise ValueError(f"{info.field_name} must be one line: found a line break (control character U+{ord(char):04X})")
            raise ValueError(f"{info.field_name} must not contain control characters (found U+{ord(char):04X})")
    return value


def _single_line(value: str, info: ValidationInfo) -> str:
    return _control_characters(value, frozenset(), info)


def _multi_line(value: str, info: ValidationInfo) -> str:
    return _control_characters(value, _LINE_BREAKS_AND_TABS, info)


def _subject_line(value: str, info: ValidationInfo) -> str:
    return _control_characters(value, frozenset("\t"), info)


# Every text field a client sends the auth service is one of these.
Line = Annotated[str, AfterValidator(_single_line)]
SubjectLine = Annotated[str, AfterValidator(_subject_line)]  # a mail subject: one line, tabs allowed
Lines = Annotated[str, AfterValidator(_multi_line)]  # line breaks and tabs allowed (a mail's body)
# Checked before the address's own validation, so that the answer names the control character.
Email = Annotated[EmailStr, BeforeValidator(_single_line)]


def _future_expiry(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("expires_at needs a time zone, e.g. 2027-01-01T00:00:00Z")
    if value <= datetime.now(UTC):
        raise ValueError("expires_at must be in the future")
    return value


class SignupIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{'username': 'ada', 'email': 'ada@example.com', 'password': 'Str0ng!pass'}]})
    username: Line = Field(min_length=3, max_length=40, examples=["ada"])
    email: Email = Field(examples=["ada@example.com"])
    password: str = Field(min_length=1, max_length=256, examples=["Str0ng!pass"])

    @field_validator("username")
    @classmethod
    def _username_chars(cls, value: str) -> str:
        if not USERNAME_RE.match(value):
            raise ValueError("username may contain letters, digits, '_', '.' and '-' (3 to 40 characters)")
        return value


class SignupOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "5f0c2a9e-8d1b-4c3e-9a7f-2b6d4e8f1a3c", "email": "ada@example.com",
        "message": "account created; a welcome email is on its way"}]})
    id: str
    email: str
    message: str


class LoginIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{'username': 'ada', 'password': 'Str0ng!pass'}]})
    username: Line = Field(min_length=1, max_length=254, description="username or email")
    password: str = Field(min_length=1, max_length=256)


class TokenPair(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "access_token": "eyJhbGciOiJIUzI1NiJ9...", "refresh_token": "eyJhbGciOiJIUzI1NiJ9...", "token_type": "bearer",
        "expires_in": 14400}]})
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


class RefreshIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{'refresh_token': 'eyJhbGciOiJIUzI1NiJ9...'}, {}]})
    refresh_token: Line | None = Field(
        default=None, min_length=1, max_length=4096,
        description="leave out to use the session cookie the dashboard got at login (then send a JSON body, e.g. {})",
    )


Password = Annotated[str, Field(min_length=1, max_length=256)]


class PasswordChangeIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"current_password": "Str0ng!pass", "new_password": "N3w!passphrase"}]})
    current_password: Password
    new_password: Password = Field(description="8+ characters with upper and lower case, a digit and a special character")


class PasswordResetIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"email": "ada@example.com"}]})
    email: Email


class PasswordResetOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "status": "accepted", "message": "if an account has this address, a reset link is on its way (valid for an hour)"}]})
    status: Literal["accepted"] = "accepted"
    message: str = "if an account has this address, a reset link is on its way (valid for an hour)"


class PasswordResetConfirmIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"token": "q3Jd...", "new_password": "N3w!passphrase"}]})
    token: Line = Field(min_length=1, max_length=200, description="the token from the mailed link")
    new_password: Password


class AccountDeleteIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"password": "Str0ng!pass"}, {}]})
    password: str | None = Field(
        default=None, min_length=1, max_length=256,
        description="your password; an account without one (signed up through an OpenID provider) leaves it "
                    "out and needs a sign-in in the last 5 minutes",
    )


class UserProfile(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "5f0c2a9e-8d1b-4c3e-9a7f-2b6d4e8f1a3c", "username": "ada", "email": "ada@example.com",
        "created_at": "2026-01-31T12:00:00Z"}]})
    id: str
    username: str
    email: str
    created_at: datetime


class RegisterAppIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{'name': 'My blog', 'domain': 'blog.example.com'}]})
    name: Line = Field(min_length=1, max_length=120, examples=["My blog"])
    domain: Line | None = Field(default=None, max_length=253, examples=["blog.example.com"])
    expires_at: datetime | None = Field(default=None, description="when the keys stop working (default: a year)")

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        return _future_expiry(value)


class RegisterAppOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "app_id": "0b6e1f3a-2c4d-4e5f-8a9b-1c2d3e4f5a6b", "name": "My blog", "domain": "blog.example.com", "api_key": "sk_...",
        "write_key": "wk_...", "expires_at": "2027-01-31T12:00:00Z"}]})
    app_id: str
    name: str
    domain: str | None
    api_key: str = Field(description="secret key (ingest + read): shown only now")
    write_key: str = Field(description="publishable ingest-only key for browsers: shown only now")
    expires_at: datetime | None


def _time_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {value!r}; send an IANA name such as Europe/Berlin or UTC") from exc
    return value


def _ip_or_network(value: str) -> str:
    """An address or a CIDR block, written as `ipaddress` normalises it (host bits cleared)."""
    try:
        network = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IP address or CIDR block (e.g. 203.0.113.7, 10.0.0.0/8, 2001:db8::/32)") from exc
    return str(network.network_address) if network.num_addresses == 1 else str(network)


_ORIGIN = re.compile(r"^https?://(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*(:[0-9]{1,5})?$")


def _origin(value: str) -> str:
    """A browser origin (scheme://host[:port], no path), or https://*.example.com for every subdomain."""
    origin = value.strip().rstrip("/").lower()
    if not _ORIGIN.fullmatch(origin):
        raise ValueError(f"{value!r} is not an origin such as https://example.com, http://localhost:3000 "
                         "or https://*.example.com")
    return origin


TimeZone = Annotated[str, AfterValidator(_time_zone)]
IpOrNetwork = Annotated[str, Field(max_length=64), AfterValidator(_ip_or_network)]
Origin = Annotated[str, Field(max_length=300), AfterValidator(_origin)]

APP_EXAMPLE: dict[str, Any] = {
    "app_id": "0b6e1f3a-2c4d-4e5f-8a9b-1c2d3e4f5a6b", "name": "My blog", "domain": "blog.example.com",
    "created_at": "2026-01-31T12:00:00Z", "timezone": "Europe/Berlin", "excluded_ips": ["203.0.113.7", "10.0.0.0/8"],
    "allowed_origins": ["https://blog.example.com"],
}


class AppOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [APP_EXAMPLE]})
    app_id: str
    name: str
    domain: str | None
    created_at: datetime
    timezone: str = Field(description="IANA time zone: the site's day boundaries in every report")
    excluded_ips: list[str] = Field(description="client addresses and CIDR blocks whose events are dropped")
    allowed_origins: list[str] = Field(description="browser origins the write key accepts events from (empty: any)")


class AppSettingsIn(BaseModel):
    """What `PATCH /api/auth/apps/{app_id}` changes: only the fields sent."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"timezone": "America/Los_Angeles"},
        {"name": "My blog", "domain": "blog.example.com", "excluded_ips": ["203.0.113.7", "10.0.0.0/8"],
         "allowed_origins": ["https://blog.example.com", "https://*.example.com"]},
    ]})
    name: Line | None = Field(default=None, min_length=1, max_length=120)
    domain: Line | None = Field(default=None, max_length=253, description="null clears it")
    timezone: TimeZone | None = Field(default=None, max_length=64, examples=["America/Los_Angeles"])
    excluded_ips: list[IpOrNetwork] | None = Field(default=None, max_length=200)
    allowed_origins: list[Origin] | None = Field(default=None, max_length=50)

    @model_validator(mode="after")
    def _something(self) -> AppSettingsIn:
        if not self.model_fields_set:
            raise ValueError("send at least one of name, domain, timezone, excluded_ips, allowed_origins")
        for name in ("name", "timezone", "excluded_ips", "allowed_origins"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class KeyMeta(BaseModel):
    key_id: str
    kind: Literal["secret", "write"]
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked: bool
    revoked_at: datetime | None
    last_used_at: datetime | None


class KeyListOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "app_id": "0b6e1f3a-2c4d-4e5f-8a9b-1c2d3e4f5a6b",
        "keys": [{"key_id": "7d1e2f3a-4b5c-4d6e-8f9a-0b1c2d3e4f5a", "kind": "secret", "prefix": "sk_3f9a",
                  "created_at": "2026-01-31T12:00:00Z", "expires_at": "2027-01-31T12:00:00Z", "revoked": False,
                  "revoked_at": None, "last_used_at": None}]}]})
    app_id: str
    keys: list[KeyMeta]


class RevokeIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{'key_id': '7d1e2f3a-4b5c-4d6e-8f9a-0b1c2d3e4f5a'}]})
    app_id: Line | None = Field(default=None, max_length=64)
    key_id: Line | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _one_target(self) -> RevokeIn:
        if bool(self.app_id) == bool(self.key_id):
            raise ValueError("send either app_id (revokes all of the app's keys) or key_id (one key)")
        return self


class RevokeOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{'revoked': ['7d1e2f3a-4b5c-4d6e-8f9a-0b1c2d3e4f5a']}]})
    revoked: list[str]


class RegenerateIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{'app_id': '0b6e1f3a-2c4d-4e5f-8a9b-1c2d3e4f5a6b'}]})
    app_id: Line = Field(max_length=64)
    expires_at: datetime | None = Field(default=None, description="when the new keys stop working (default: a year)")

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        return _future_expiry(value)


class RegenerateOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "app_id": "0b6e1f3a-2c4d-4e5f-8a9b-1c2d3e4f5a6b", "api_key": "sk_...", "write_key": "wk_...",
        "expires_at": "2027-01-31T12:00:00Z", "revoked": ["7d1e2f3a-4b5c-4d6e-8f9a-0b1c2d3e4f5a"]}]})
    app_id: str
    api_key: str
    write_key: str
    expires_at: datetime | None
    revoked: list[str]


class NotificationIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{'subject': 'Deploy finished', 'body': 'Version 1.4 is live.'}]})
    subject: SubjectLine = Field(min_length=1, max_length=200, description="one line")
    body: Lines = Field(min_length=1, max_length=20000, description="plain text; may have many lines")
    to: Email | None = Field(default=None, description="must be your own address, if given")

    @field_validator("subject")
    @classmethod
    def _one_line(cls, value: str) -> str:
        # A mail header is one line: a line break (any that str.splitlines knows, as the email package
        # refuses) could never be sent, and must not add headers.
        if value.splitlines() != [value]:
            raise ValueError("subject must be one line (no line breaks); put the rest in body")
        return value


class NotificationOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{'message_id': '9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d', 'status': 'queued'}]})
    message_id: str
    status: Literal["queued"] = "queued"
