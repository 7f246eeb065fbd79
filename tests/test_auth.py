from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tether.auth import ANONYMOUS, Action, Authenticator, AuthError, token_from_handshake

SECRET = "s3cret-for-tests-only-0123456789abcdef"


def token(
    claims: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256", **headers: Any
) -> str:
    base = {"sub": "user-7", "exp": int(time.time()) + 300}
    return jwt.encode({**base, **claims}, key, algorithm=algorithm, headers=headers or None)


def test_hs256_identity_and_permissions() -> None:
    auth = Authenticator(secret=SECRET)
    identity = auth.verify(token({"topics": ["projects.42.*"], "publish": "chat.room1"}))
    assert identity.subject == "user-7"
    assert identity.allows(Action.SUBSCRIBE, "projects.42.tasks")
    assert not identity.allows(Action.SUBSCRIBE, "projects.43.tasks")
    assert identity.allows(Action.PUBLISH, "chat.room1")
    assert not identity.allows(Action.PUBLISH, "projects.42.tasks")
    assert identity.expires_at is not None


def test_missing_claims_grant_nothing() -> None:
    identity = Authenticator(secret=SECRET).verify(token({}))
    assert not identity.allows(Action.SUBSCRIBE, "anything")
    assert not identity.allows(Action.PUBLISH, "anything")
    assert ANONYMOUS.allows(Action.PUBLISH, "anything")


#: Claims holding times, given here as seconds from *when the test runs*: a time taken at
#: collection is stale by the time a long suite reaches the test (an nbf 600 s ahead had
#: passed when CI got here, 11 minutes in).
RELATIVE = ("exp", "nbf")


@pytest.mark.parametrize(
    ("claims", "key", "message"),
    [
        ({"exp": -120}, SECRET, "token expired"),
        ({}, "another-secret-another-secret-0123", "invalid token"),
        ({"sub": ""}, SECRET, "invalid token"),
        ({"nbf": 600}, SECRET, "invalid token"),
        ({"topics": 5}, SECRET, "claim 'topics'"),
    ],
)
def test_refusals_say_why(claims: dict[str, Any], key: str, message: str) -> None:
    now = int(time.time())
    claims = {k: now + v if k in RELATIVE else v for k, v in claims.items()}
    with pytest.raises(AuthError, match=message):
        Authenticator(secret=SECRET).verify(token(claims, key))


def test_leeway_tolerates_small_clock_skew() -> None:
    skewed = token({"exp": int(time.time()) - 10})
    assert Authenticator(secret=SECRET, leeway=30).verify(skewed).subject == "user-7"
    with pytest.raises(AuthError, match="expired"):
        Authenticator(secret=SECRET, leeway=0).verify(skewed)


def test_audience_and_issuer_are_enforced() -> None:
    auth = Authenticator(secret=SECRET, audience="tether", issuer="https://id.example")
    good = token({"aud": "tether", "iss": "https://id.example"})
    assert auth.verify(good).subject == "user-7"
    for claims in ({"aud": "other", "iss": "https://id.example"}, {"aud": "tether"}):
        with pytest.raises(AuthError):
            auth.verify(token(claims))


def test_none_algorithm_is_refused() -> None:
    unsigned = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, None, algorithm="none")
    with pytest.raises(AuthError):
        Authenticator(secret=SECRET).verify(unsigned)


def test_rs256_public_key() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    auth = Authenticator(public_key=pem)
    assert auth.verify(token({"topics": "*"}, private, "RS256")).allows(Action.SUBSCRIBE, "t")
    with pytest.raises(AuthError):  # algorithm confusion: HS256 keyed with the public key
        auth.verify(forge_hs256({"sub": "x", "exp": int(time.time()) + 60}, pem.encode()))


def forge_hs256(claims: dict[str, Any], key: bytes) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


def test_es256_from_jwks_by_kid() -> None:
    signing = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    keys = []
    for kid, private in (("k1", signing), ("k2", other)):
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
        keys.append({**jwk, "kid": kid, "alg": "ES256", "use": "sig"})
    auth = Authenticator(jwks={"keys": keys})
    assert auth.verify(token({}, signing, "ES256", kid="k1")).subject == "user-7"
    with pytest.raises(AuthError):
        auth.verify(token({}, signing, "ES256", kid="k2"))
    with pytest.raises(AuthError, match="no key"):
        auth.verify(token({}, signing, "ES256", kid="k9"))


def test_exactly_one_key_source() -> None:
    with pytest.raises(ValueError):
        Authenticator()
    with pytest.raises(ValueError):
        Authenticator(secret="a", public_key="b")


def test_token_sources_in_order_of_preference() -> None:
    headers = {"authorization": "Bearer from-header"}
    protocols = ["tether.v1", "tether.token.from-protocol"]
    query = {"token": "from-query"}
    assert token_from_handshake(headers, protocols, query, allow_query=True) == "from-header"
    assert token_from_handshake({}, protocols, query, allow_query=True) == "from-protocol"
    assert token_from_handshake({}, [], query, allow_query=True) == "from-query"
    assert token_from_handshake({}, [], query, allow_query=False) is None
