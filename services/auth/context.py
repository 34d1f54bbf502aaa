"""What the auth service's routes share: its context (set on start) and the signed-in user."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends

from libs import tokens
from libs.access import BearerCredentials, signed_in
from libs.clientip import TrustedProxies
from libs.runtime import context_dependency
from services.auth import NAME
from services.auth.accounts import Accounts
from services.auth.jobs import KeyJobs
from services.auth.keys import AppKeys
from services.auth.oidc import OidcSignIn


@dataclass(frozen=True)
class AuthContext:
    accounts: Accounts  # users and sessions
    keys: AppKeys  # apps and their API keys
    jobs: KeyJobs  # background: expiry warnings, last-use times, republishing key states
    proxies: TrustedProxies  # whose X-Forwarded-For names the client (login limits per IP)
    oidc: OidcSignIn  # sign-in through an OpenID provider (off unless configured)


AuthCtx = Annotated[AuthContext, Depends(context_dependency(NAME, AuthContext))]


async def current_user(ctx: AuthCtx, credentials: BearerCredentials) -> tokens.TokenClaims:
    """The signed-in user (their access token's claims); 401 otherwise."""
    return await signed_in(ctx.accounts.settings, credentials, ctx.accounts.redis)


User = Annotated[tokens.TokenClaims, Depends(current_user)]
