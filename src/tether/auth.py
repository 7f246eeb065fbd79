"""Who a connection is and what it may do: JWT verification and topic permissions.

Pure apart from reading key files at construction. Verification is PyJWT's
(signature, ``exp``, ``nbf``, ``iat``, ``aud``, ``iss``, with a leeway); this
module only decides which key and algorithms apply and turns claims into an
:class:`Identity`.

Claims: ``sub`` names the identity, ``topics`` lists the topic patterns it may
subscribe to, ``publish`` those it may publish to. A missing claim grants
nothing: a token must say what it allows.
"""

from __future__ import annotations

import enum
import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from .config import HubConfig
from .errors import TetherError

#: Subprotocol every Tether client offers; the hub selects it.
SUBPROTOCOL = "tether.v1"
#: Prefix of the subprotocol that carries a browser's token.
TOKEN_SUBPROTOCOL_PREFIX = "tether.token."


class Action(enum.StrEnum):
    SUBSCRIBE = "subscribe"
    PUBLISH = "publish"


class AuthError(TetherError):
    """A credential was refused; ``message`` is safe to send to the client."""


@dataclass(frozen=True, slots=True)
class Identity:
    subject: str
    subscribe: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    #: Unix time the credential expires, ``None`` if it does not.
    expires_at: float | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)

    def allows(self, action: Action, topic: str) -> bool:
        patterns = self.subscribe if action is Action.SUBSCRIBE else self.publish
        return any(topic_pattern(pattern).fullmatch(topic) for pattern in patterns)


@functools.lru_cache(maxsize=4096)  # patterns come from a few token shapes: cache them
def topic_pattern(pattern: str) -> re.Pattern[str]:
    """A claim's topic pattern as a regex: ``*`` matches any run of characters, and
    nothing else is special (``?`` and ``[...]`` are literal, unlike shell globs)."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


#: Who connects when the hub has no authentication configured (loopback by default).
ANONYMOUS = Identity("anonymous", ("*",), ("*",))


def _patterns(value: Any, claim: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise AuthError(f"claim {claim!r} must be a string or a list of strings")


class Authenticator:
    """Verifies tokens with one HS256 secret, one PEM public key, or a JWKS file."""

    def __init__(
        self,
        *,
        secret: str = "",
        public_key: str = "",
        jwks: Mapping[str, Any] | None = None,
        audience: str = "",
        issuer: str = "",
        leeway: float = 30.0,
    ) -> None:
        if sum(bool(x) for x in (secret, public_key, jwks)) != 1:
            raise ValueError("configure exactly one of a secret, a public key or a JWKS")
        self._secret = secret
        self._public_key = public_key
        self._jwks = jwt.PyJWKSet.from_dict(dict(jwks)) if jwks else None
        self.audience = audience or None
        self.issuer = issuer or None
        self.leeway = leeway

    def __repr__(self) -> str:
        kind = "secret" if self._secret else "public key" if self._public_key else "JWKS"
        return f"<Authenticator {kind} aud={self.audience} iss={self.issuer}>"

    @classmethod
    def from_config(cls, config: HubConfig) -> Authenticator | None:
        """The authenticator the config asks for, or ``None`` when auth is off."""
        if not (config.jwt_secret or config.jwt_public_key or config.jwt_jwks):
            return None
        return cls(
            secret=config.jwt_secret,
            public_key=Path(config.jwt_public_key).read_text() if config.jwt_public_key else "",
            jwks=json.loads(Path(config.jwt_jwks).read_text()) if config.jwt_jwks else None,
            audience=config.jwt_audience,
            issuer=config.jwt_issuer,
            leeway=config.jwt_leeway,
        )

    def _key(self, token: str) -> tuple[Any, list[str]]:
        if self._secret:
            return self._secret, ["HS256", "HS384", "HS512"]
        if self._public_key:
            return self._public_key, ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]
        assert self._jwks is not None
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        for key in self._jwks.keys:
            if kid is None or key.key_id == kid:
                algorithm = key.algorithm_name
                return key.key, [algorithm] if algorithm else ["RS256", "ES256"]
        raise AuthError("invalid token: no key for its kid")

    def verify(self, token: str) -> Identity:
        """The identity a token proves; raises :class:`AuthError` with a client-safe reason."""
        key, algorithms = self._key(token)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise AuthError("invalid token: 'sub' must be a non-empty string")
        return Identity(
            subject=subject,
            subscribe=_patterns(claims.get("topics"), "topics"),
            publish=_patterns(claims.get("publish"), "publish"),
            expires_at=float(claims["exp"]),
            claims=claims,
        )


def token_from_handshake(
    headers: Mapping[str, str],
    subprotocols: Sequence[str],
    query: Mapping[str, str],
    *,
    allow_query: bool,
) -> str | None:
    """The token a handshake carries: Authorization header, subprotocol, then (if allowed) query."""
    authorization = headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip() or None
    for protocol in subprotocols:
        if protocol.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            return protocol[len(TOKEN_SUBPROTOCOL_PREFIX) :] or None
    if allow_query:
        return query.get("token") or None
    return None
