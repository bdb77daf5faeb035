"""
Tests for L{medichat.auth.checkers}: the bearer JWT checker, the realm and portal, credentials in
STOMP frames, the C{--auth} checker plugins and the development secret.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import os
import stat
from functools import cache
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import HMACAlgorithm
from twisted.cred import strcred
from twisted.cred.portal import IRealm
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

import medichat.auth.checkers as checkers_module
from medichat.auth.checkers import JWTChecker
from medichat.auth.credentials import (
    BearerToken,
    IUserAvatar,
    authenticate,
    credentials_from_stomp,
    parse_bearer,
)
from medichat.auth.devsecret import (
    SecretFileError,
    dev_secret_path,
    load_dev_secret,
    load_or_create_dev_secret,
    read_secret,
)
from medichat.auth.realm import MedichatRealm, build_portal
from medichat.errors import AuthenticationFailed
from medichat.model import User, micros

NOW = 1_700_000_000
SECRET = b"s" * 32


@cache
def rsa_key() -> rsa.RSAPrivateKey:
    """One RSA key for the whole module: making them is slow."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(private_key: Any) -> bytes:
    """The PEM SubjectPublicKeyInfo of C{private_key}'s public half."""
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def claims(**changes: Any) -> dict[str, Any]:
    """A valid customer's claims at L{NOW}, with C{changes} (a value of None removes)."""
    base: dict[str, Any] = {"sub": "cust-1", "name": "Ada", "iat": NOW, "exp": NOW + 600}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def b64(data: bytes) -> str:
    """Unpadded base64url, as in a JWS."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unsigned(header: dict[str, Any], payload: Any) -> str:
    """A compact JWS with an empty signature."""
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}."


class JWTCheckerTestCase(SynchronousTestCase):
    """Helpers for tests of L{JWTChecker}."""

    def make(self, **kwargs: Any) -> tuple[JWTChecker, Clock]:
        clock = Clock()
        clock.advance(NOW)
        return JWTChecker(clock=clock, **kwargs), clock

    def check(self, checker: JWTChecker, token: str) -> User:
        d = checker.requestAvatarId(BearerToken(token))
        return self.successResultOf(d)

    def assertReason(self, checker: JWTChecker, token: Any, reason: str) -> None:
        d = checker.requestAvatarId(BearerToken(token))
        failure = self.failureResultOf(d, AuthenticationFailed)
        self.assertEqual(failure.value.reason, reason)


class HMACTests(JWTCheckerTestCase):
    """
    Tokens signed with an HMAC secret.
    """

    def test_valid(self) -> None:
        """A valid HS256 token gives the user of its claims, expiring at its exp."""
        checker, _ = self.make(secret=SECRET)
        user = self.check(checker, jwt.encode(claims(), SECRET, "HS256"))
        self.assertEqual(user, User("cust-1", "Ada", "customer", expires_at=micros(NOW + 600)))

    def test_name_defaults_to_sub(self) -> None:
        """Without a name claim the user's name is the sub."""
        checker, _ = self.make(secret=SECRET)
        user = self.check(checker, jwt.encode(claims(name=None), SECRET, "HS256"))
        self.assertEqual(user.user_name, "cust-1")

    def test_employee_role(self) -> None:
        """A role claim of employee makes an employee."""
        checker, _ = self.make(secret=SECRET)
        user = self.check(checker, jwt.encode(claims(role="employee"), SECRET, "HS256"))
        self.assertEqual(user.user_role, "employee")

    def test_no_exp(self) -> None:
        """A token without exp is accepted and its user does not expire by itself."""
        checker, _ = self.make(secret=SECRET)
        user = self.check(checker, jwt.encode(claims(exp=None), SECRET, "HS256"))
        self.assertIsNone(user.expires_at)

    def test_wrong_secret(self) -> None:
        """A token signed with another secret has a bad signature."""
        checker, _ = self.make(secret=SECRET)
        token = jwt.encode(claims(), b"t" * 32, "HS256")
        self.assertReason(checker, token, "bad signature")

    def test_tampered_payload(self) -> None:
        """Changing the payload of a signed token breaks its signature."""
        checker, _ = self.make(secret=SECRET)
        header, _payload, signature = jwt.encode(claims(), SECRET, "HS256").split(".")
        forged = b64(json.dumps(claims(role="employee")).encode())
        self.assertReason(checker, f"{header}.{forged}.{signature}", "bad signature")

    def test_alg_none(self) -> None:
        """An unsigned alg none token is refused for its algorithm."""
        checker, _ = self.make(secret=SECRET)
        token = unsigned({"alg": "none", "typ": "JWT"}, claims())
        self.assertReason(checker, token, "unsupported algorithm")

    def test_alg_none_any_case(self) -> None:
        """alg None in another case is no way around the refusal."""
        checker, _ = self.make(secret=SECRET)
        token = unsigned({"alg": "None"}, claims())
        self.assertReason(checker, token, "unsupported algorithm")

    def test_algorithm_not_allowed(self) -> None:
        """An HS512 token is refused when only HS256 is allowed (the default)."""
        checker, _ = self.make(secret=b"s" * 64)
        token = jwt.encode(claims(), b"s" * 64, "HS512")
        self.assertReason(checker, token, "unsupported algorithm")

    def test_algorithms_option(self) -> None:
        """Algorithms given explicitly are accepted."""
        checker, _ = self.make(secret=b"s" * 64, algorithms=["HS256", "HS512"])
        user = self.check(checker, jwt.encode(claims(), b"s" * 64, "HS512"))
        self.assertEqual(user.user_id, "cust-1")

    def test_missing_alg(self) -> None:
        """A header without alg is malformed."""
        checker, _ = self.make(secret=SECRET)
        self.assertReason(checker, unsigned({"typ": "JWT"}, claims()), "malformed token")

    def test_kid_ignored(self) -> None:
        """A kid header is of no concern to a checker with one secret."""
        checker, _ = self.make(secret=SECRET)
        token = jwt.encode(claims(), SECRET, "HS256", headers={"kid": "k1"})
        self.assertEqual(self.check(checker, token).user_id, "cust-1")

    def test_clock_is_used(self) -> None:
        """Expiry is judged by the injected clock, not the system time."""
        checker, clock = self.make(secret=SECRET)
        token = jwt.encode(claims(), SECRET, "HS256")
        self.check(checker, token)
        clock.advance(600)
        self.assertReason(checker, token, "credential expired")

    def test_attach_gives_clock(self) -> None:
        """attach() gives a checker made without a clock its clock."""
        checker = JWTChecker(secret=SECRET)
        clock = Clock()
        clock.advance(NOW)
        checker.attach(None, clock)  # type: ignore[arg-type]
        self.assertEqual(
            self.check(checker, jwt.encode(claims(), SECRET, "HS256")).user_id, "cust-1"
        )

    def test_no_clock(self) -> None:
        """A checker without a clock refuses to guess the time."""
        checker = JWTChecker(secret=SECRET)
        self.assertRaises(RuntimeError, checker.verify, jwt.encode(claims(), SECRET, "HS256"))


class VerifiedTokenTests(JWTCheckerTestCase):
    """
    A token verified once is not verified again; its claims are judged on every use.
    """

    def count_decodes(self) -> list[object]:
        calls: list[object] = []
        original = checkers_module.JWTChecker._decode

        def counting(checker: Any, token: str, *args: Any) -> Any:
            calls.append(token)
            return original(checker, token, *args)

        self.patch(checkers_module.JWTChecker, "_decode", counting)
        return calls

    def test_signature_verified_once(self) -> None:
        """The second use of a token gives the same user without verifying it again."""
        checker, _ = self.make(secret=SECRET)
        calls = self.count_decodes()
        token = jwt.encode(claims(), SECRET, "HS256")
        first = self.check(checker, token)
        self.assertEqual(self.check(checker, token), first)
        self.assertEqual(len(calls), 1)

    def test_expiry_judged_on_every_use(self) -> None:
        """A remembered token that has since expired is refused, and forgotten."""
        checker, clock = self.make(secret=SECRET)
        calls = self.count_decodes()
        token = jwt.encode(claims(), SECRET, "HS256")
        self.check(checker, token)
        clock.advance(600)
        self.assertReason(checker, token, "credential expired")
        self.assertReason(checker, token, "credential expired")
        self.assertEqual(len(calls), 2)

    def test_other_signature_not_remembered(self) -> None:
        """A token differing only in its signature is verified (and refused) on its own."""
        checker, _ = self.make(secret=SECRET)
        token = jwt.encode(claims(), SECRET, "HS256")
        self.check(checker, token)
        forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        self.assertReason(checker, forged, "bad signature")

    def test_bounded(self) -> None:
        """At most VERIFIED_TOKENS are remembered; the oldest is forgotten first."""
        self.patch(checkers_module, "VERIFIED_TOKENS", 3)
        checker, _ = self.make(secret=SECRET)
        tokens = [jwt.encode(claims(sub=f"u{i}"), SECRET, "HS256") for i in range(4)]
        for token in tokens:
            self.check(checker, token)
        calls = self.count_decodes()
        self.check(checker, tokens[3])
        self.assertEqual(calls, [])
        self.check(checker, tokens[0])
        self.assertEqual(calls, [tokens[0]])


class VerificationCostTests(JWTCheckerTestCase):
    """
    A new token costs one reading of the token and no preparation of the secret.
    """

    def count(self, owner: Any, name: str) -> list[object]:
        calls: list[object] = []
        original = getattr(owner, name)

        def counting(*args: Any, **kwargs: Any) -> Any:
            calls.append(args)
            return original(*args, **kwargs)

        self.patch(owner, name, counting)
        return calls

    def test_secret_prepared_once(self) -> None:
        """The HMAC secret is prepared when the checker is made, not per token."""
        checker, _ = self.make(secret=SECRET)
        tokens = [jwt.encode(claims(sub=f"u{n}"), SECRET, "HS256") for n in range(3)]
        calls = self.count(HMACAlgorithm, "prepare_key")
        for token in tokens:
            self.check(checker, token)
        self.assertEqual(calls, [])

    def test_token_read_once(self) -> None:
        """The token's parts are decoded once, not once for the header and again."""
        checker, _ = self.make(secret=SECRET)
        token = jwt.encode(claims(), SECRET, "HS256")
        calls = self.count(jwt.PyJWS, "_load")
        self.check(checker, token)
        self.assertEqual(len(calls), 1)

    def test_other_secret_still_prepared(self) -> None:
        """The prepared algorithm still prepares (and checks) any other key it is given."""
        algorithm = checkers_module._PreparedHMAC(HMACAlgorithm.SHA256, SECRET)
        self.assertEqual(algorithm.prepare_key(b"another secret"), b"another secret")
        self.assertRaises(jwt.InvalidKeyError, algorithm.prepare_key,
                          b"-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----")


class TimeClaimTests(JWTCheckerTestCase):
    """
    exp, nbf and iat against the clock, with and without leeway.
    """

    def test_expired(self) -> None:
        """A token past its exp is expired."""
        checker, _ = self.make(secret=SECRET)
        token = jwt.encode(claims(exp=NOW - 1), SECRET, "HS256")
        self.assertReason(checker, token, "credential expired")

    def test_expires_at_exp(self) -> None:
        """A token is expired at the very second of its exp."""
        checker, _ = self.make(secret=SECRET)
        token = jwt.encode(claims(exp=NOW), SECRET, "HS256")
        self.assertReason(checker, token, "credential expired")

    def test_nbf_in_future(self) -> None:
        """A token whose nbf is to come is not yet valid."""
        checker, _ = self.make(secret=SECRET)
        token = jwt.encode(claims(nbf=NOW + 30), SECRET, "HS256")
        self.assertReason(checker, token, "token not yet valid")

    def test_iat_in_future(self) -> None:
        """A token issued in the future is not yet valid."""
        checker, _ = self.make(secret=SECRET)
        token = jwt.encode(claims(iat=NOW + 30), SECRET, "HS256")
        self.assertReason(checker, token, "token not yet valid")

    def test_leeway_expired(self) -> None:
        """Leeway accepts a token that expired less than leeway seconds ago."""
        checker, _ = self.make(secret=SECRET, leeway=10)
        self.check(checker, jwt.encode(claims(exp=NOW - 9), SECRET, "HS256"))
        token = jwt.encode(claims(exp=NOW - 10), SECRET, "HS256")
        self.assertReason(checker, token, "credential expired")

    def test_leeway_nbf(self) -> None:
        """Leeway accepts a token valid less than leeway seconds from now."""
        checker, _ = self.make(secret=SECRET, leeway=10)
        self.check(checker, jwt.encode(claims(nbf=NOW + 10), SECRET, "HS256"))
        token = jwt.encode(claims(nbf=NOW + 11), SECRET, "HS256")
        self.assertReason(checker, token, "token not yet valid")

    def test_exp_not_a_number(self) -> None:
        """A non-numeric exp is an invalid claim."""
        checker, _ = self.make(secret=SECRET)
        token = jwt.encode(claims(exp="tomorrow"), SECRET, "HS256")
        self.assertReason(checker, token, "invalid claims")

    def test_exp_out_of_range(self) -> None:
        """An exp beyond year 9999, or infinite, or negative, is an invalid claim."""
        checker, _ = self.make(secret=SECRET)
        for exp in (10**400, 253_402_300_800, -1):
            token = jwt.encode(claims(exp=exp), SECRET, "HS256")
            self.assertReason(checker, token, "invalid claims")
        header, _, _ = jwt.encode(claims(), SECRET, "HS256").split(".")
        payload = b'{"sub": "cust-1", "exp": 1e999}'
        signing_input = f"{header}.{b64(payload)}"
        signature = hmac.new(SECRET, signing_input.encode(), hashlib.sha256).digest()
        self.assertReason(checker, f"{signing_input}.{b64(signature)}", "invalid claims")

    def test_exp_boolean(self) -> None:
        """A boolean exp is an invalid claim, not the number 1."""
        checker, _ = self.make(secret=SECRET)
        token = jwt.encode(claims(exp=True), SECRET, "HS256")
        self.assertReason(checker, token, "invalid claims")


class ClaimTests(JWTCheckerTestCase):
    """
    Issuer, audience, subject and role.
    """

    def token(self, **changes: Any) -> str:
        return jwt.encode(claims(**changes), SECRET, "HS256")

    def test_issuer(self) -> None:
        """A configured issuer must be the token's iss."""
        checker, _ = self.make(secret=SECRET, issuer="https://idp.example/")
        self.check(checker, self.token(iss="https://idp.example/"))
        self.assertReason(checker, self.token(iss="https://evil.example/"), "wrong issuer")
        self.assertReason(checker, self.token(), "wrong issuer")

    def test_audience(self) -> None:
        """A configured audience must be the token's aud, or be in its list."""
        checker, _ = self.make(secret=SECRET, audience="medichat")
        self.check(checker, self.token(aud="medichat"))
        self.check(checker, self.token(aud=["other", "medichat"]))
        self.assertReason(checker, self.token(aud="other"), "wrong audience")
        self.assertReason(checker, self.token(), "wrong audience")

    def test_unexpected_audience(self) -> None:
        """Without a configured audience, a token meant for some audience is refused."""
        checker, _ = self.make(secret=SECRET)
        self.assertReason(checker, self.token(aud="other"), "wrong audience")

    def test_missing_sub(self) -> None:
        """A token without sub names nobody."""
        checker, _ = self.make(secret=SECRET)
        self.assertReason(checker, self.token(sub=None), "invalid claims")

    def test_empty_sub(self) -> None:
        """An empty sub names nobody."""
        checker, _ = self.make(secret=SECRET)
        self.assertReason(checker, self.token(sub=""), "invalid claims")

    def test_control_characters(self) -> None:
        """A sub or name with NUL, a line break or a lone surrogate is an invalid claim."""
        checker, _ = self.make(secret=SECRET)
        for claims in [{"sub": "a\x00b"}, {"sub": "a\nb"}, {"name": "Ann\r\nX: y"},
                       {"name": "\ud800"}]:
            self.assertReason(checker, self.token(**claims), "invalid claims")

    def test_sub_not_string(self) -> None:
        """A numeric sub is an invalid claim."""
        checker, _ = self.make(secret=SECRET)
        self.assertReason(checker, self.token(sub=42), "invalid claims")

    def test_name_not_string(self) -> None:
        """A non-string name is an invalid claim."""
        checker, _ = self.make(secret=SECRET)
        self.assertReason(checker, self.token(name=["Ada"]), "invalid claims")

    def test_bad_role(self) -> None:
        """A role other than customer or employee is refused."""
        checker, _ = self.make(secret=SECRET)
        self.assertReason(checker, self.token(role="admin"), "invalid claims")


class MalformedTokenTests(JWTCheckerTestCase):
    """
    Strings that are no JWT.
    """

    def test_empty(self) -> None:
        """An empty token is missing credentials."""
        checker, _ = self.make(secret=SECRET)
        self.assertReason(checker, "", "missing credentials")

    def test_garbage(self) -> None:
        """Arbitrary text is malformed."""
        checker, _ = self.make(secret=SECRET)
        self.assertReason(checker, "hello world", "malformed token")

    def test_two_parts(self) -> None:
        """Two dot-separated parts are malformed."""
        checker, _ = self.make(secret=SECRET)
        token = jwt.encode(claims(), SECRET, "HS256")
        self.assertReason(checker, token.rsplit(".", 1)[0], "malformed token")

    def test_four_parts(self) -> None:
        """Four dot-separated parts (a JWE has five) are malformed."""
        checker, _ = self.make(secret=SECRET)
        self.assertReason(checker, jwt.encode(claims(), SECRET, "HS256") + ".x", "malformed token")

    def test_not_base64(self) -> None:
        """Parts outside the base64url alphabet are malformed."""
        checker, _ = self.make(secret=SECRET)
        self.assertReason(checker, "!!!.@@@.###", "malformed token")

    def test_bad_base64_length(self) -> None:
        """A part of impossible base64 length is malformed."""
        checker, _ = self.make(secret=SECRET)
        self.assertReason(checker, "a.b.c", "malformed token")

    def test_header_not_json(self) -> None:
        """A header that is not JSON is malformed."""
        checker, _ = self.make(secret=SECRET)
        token = f"{b64(b'not json')}.{b64(json.dumps(claims()).encode())}.{b64(b'sig')}"
        self.assertReason(checker, token, "malformed token")

    def test_payload_not_json(self) -> None:
        """A correctly signed payload that is not JSON is malformed."""
        checker, _ = self.make(secret=SECRET)
        api = jwt.PyJWS()
        token = api.encode(b"not json", SECRET, "HS256")
        self.assertReason(checker, token, "malformed token")

    def test_payload_not_object(self) -> None:
        """A correctly signed payload that is a JSON list is malformed."""
        checker, _ = self.make(secret=SECRET)
        token = jwt.PyJWS().encode(b"[1, 2]", SECRET, "HS256")
        self.assertReason(checker, token, "malformed token")

    def test_not_a_string(self) -> None:
        """A token that is not text is malformed."""
        checker, _ = self.make(secret=SECRET)
        self.assertReason(checker, b"a.b.c", "malformed token")

    def test_too_long(self) -> None:
        """A token of more than 16 KiB is refused unread."""
        checker, _ = self.make(secret=SECRET)
        token = jwt.encode(claims(pad="x" * 20_000), SECRET, "HS256")
        self.assertReason(checker, token, "malformed token")


class PublicKeyTests(JWTCheckerTestCase):
    """
    Tokens signed with a private key whose public half the checker holds.
    """

    def test_rs256(self) -> None:
        """A valid RS256 token is accepted against its PEM public key."""
        checker, _ = self.make(public_key=public_pem(rsa_key()))
        user = self.check(checker, jwt.encode(claims(), rsa_key(), "RS256"))
        self.assertEqual(user.user_id, "cust-1")

    def test_es256(self) -> None:
        """A valid ES256 token is accepted against its PEM public key."""
        key = ec.generate_private_key(ec.SECP256R1())
        checker, _ = self.make(public_key=public_pem(key))
        self.assertEqual(self.check(checker, jwt.encode(claims(), key, "ES256")).user_id, "cust-1")

    def test_eddsa(self) -> None:
        """A valid EdDSA (Ed25519) token is accepted against its PEM public key."""
        key = ed25519.Ed25519PrivateKey.generate()
        checker, _ = self.make(public_key=public_pem(key))
        self.assertEqual(self.check(checker, jwt.encode(claims(), key, "EdDSA")).user_id, "cust-1")

    def test_certificate(self) -> None:
        """The public key may come as a PEM X.509 certificate."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.example")])
        start = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=3650))
            .sign(key, hashes.SHA256())
        )
        checker, _ = self.make(public_key=certificate.public_bytes(serialization.Encoding.PEM))
        self.assertEqual(self.check(checker, jwt.encode(claims(), key, "ES256")).user_id, "cust-1")

    def test_wrong_key(self) -> None:
        """A token signed with another key has a bad signature."""
        other = ec.generate_private_key(ec.SECP256R1())
        checker, _ = self.make(public_key=public_pem(ec.generate_private_key(ec.SECP256R1())))
        self.assertReason(checker, jwt.encode(claims(), other, "ES256"), "bad signature")

    def test_hmac_with_public_key(self) -> None:
        """An HS256 token keyed with the public key's PEM (algorithm confusion) is refused."""
        pem = public_pem(rsa_key())
        checker, _ = self.make(public_key=pem)
        header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = b64(json.dumps(claims()).encode())
        signature = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        forged = f"{header}.{payload}.{b64(signature)}"
        self.assertReason(checker, forged, "unsupported algorithm")

    def test_alg_none(self) -> None:
        """An alg none token is refused against a public key."""
        checker, _ = self.make(public_key=public_pem(rsa_key()))
        self.assertReason(checker, unsigned({"alg": "none"}, claims()), "unsupported algorithm")

    def test_algorithm_of_other_key_type(self) -> None:
        """An ES256 token is refused for its algorithm when the key is RSA."""
        checker, _ = self.make(public_key=public_pem(rsa_key()))
        key = ec.generate_private_key(ec.SECP256R1())
        self.assertReason(checker, jwt.encode(claims(), key, "ES256"), "unsupported algorithm")

    def test_algorithm_not_allowed(self) -> None:
        """An RS512 token is refused unless RS512 is allowed."""
        checker, _ = self.make(public_key=public_pem(rsa_key()))
        self.assertReason(
            checker, jwt.encode(claims(), rsa_key(), "RS512"), "unsupported algorithm"
        )
        allowing, _ = self.make(public_key=public_pem(rsa_key()), algorithms=["RS512"])
        self.check(allowing, jwt.encode(claims(), rsa_key(), "RS512"))

    def test_algorithms(self) -> None:
        """The allowed algorithms are those of the default that fit the key."""
        checker, _ = self.make(public_key=public_pem(rsa_key()))
        self.assertEqual(checker.algorithms, {"RS256"})


class JWKSTests(JWTCheckerTestCase):
    """
    Keys from a JWKS document, chosen by kid.
    """

    def jwk(self, private_key: Any, kid: str | None, alg: str) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(alg)
        jwk: dict[str, Any] = json.loads(algorithm.to_jwk(private_key.public_key()))
        if kid is not None:
            jwk["kid"] = kid
        return jwk

    def test_by_kid(self) -> None:
        """The token's kid chooses the key."""
        ec_key = ec.generate_private_key(ec.SECP256R1())
        jwks = {"keys": [self.jwk(rsa_key(), "r1", "RS256"), self.jwk(ec_key, "e1", "ES256")]}
        checker, _ = self.make(jwks=json.dumps(jwks))
        self.check(checker, jwt.encode(claims(), rsa_key(), "RS256", headers={"kid": "r1"}))
        self.check(checker, jwt.encode(claims(), ec_key, "ES256", headers={"kid": "e1"}))

    def test_kid_of_other_key(self) -> None:
        """A kid naming another key of the set fails on the algorithm or the signature."""
        ec_key = ec.generate_private_key(ec.SECP256R1())
        other = ec.generate_private_key(ec.SECP256R1())
        jwks = {"keys": [self.jwk(ec_key, "e1", "ES256"), self.jwk(other, "e2", "ES256")]}
        checker, _ = self.make(jwks=jwks)
        token = jwt.encode(claims(), ec_key, "ES256", headers={"kid": "e2"})
        self.assertReason(checker, token, "bad signature")
        token = jwt.encode(claims(), rsa_key(), "RS256", headers={"kid": "e1"})
        self.assertReason(checker, token, "unsupported algorithm")

    def test_unknown_kid(self) -> None:
        """A kid that names no key of the set cannot be verified."""
        jwks = {"keys": [self.jwk(rsa_key(), "r1", "RS256")]}
        checker, _ = self.make(jwks=jwks)
        token = jwt.encode(claims(), rsa_key(), "RS256", headers={"kid": "r2"})
        self.assertReason(checker, token, "bad signature")

    def test_single_key_without_kid(self) -> None:
        """A token without kid is checked with the only key of a one-key set."""
        key = ed25519.Ed25519PrivateKey.generate()
        checker, _ = self.make(jwks={"keys": [self.jwk(key, None, "EdDSA")]})
        self.check(checker, jwt.encode(claims(), key, "EdDSA"))

    def test_several_keys_without_kid(self) -> None:
        """A token without kid cannot choose among several keys."""
        key = ed25519.Ed25519PrivateKey.generate()
        other = ed25519.Ed25519PrivateKey.generate()
        jwks = {"keys": [self.jwk(key, "a", "EdDSA"), self.jwk(other, "b", "EdDSA")]}
        checker, _ = self.make(jwks=jwks)
        self.assertReason(checker, jwt.encode(claims(), key, "EdDSA"), "bad signature")

    def test_hmac_token(self) -> None:
        """An HS256 token is refused against a key set."""
        checker, _ = self.make(jwks={"keys": [self.jwk(rsa_key(), "r1", "RS256")]})
        token = jwt.encode(claims(), SECRET, "HS256", headers={"kid": "r1"})
        self.assertReason(checker, token, "unsupported algorithm")

    def test_symmetric_key_refused(self) -> None:
        """A key set holding a symmetric key is refused when the checker is made."""
        jwks = {"keys": [{"kty": "oct", "k": b64(SECRET), "kid": "s"}]}
        self.assertRaises(ValueError, JWTChecker, jwks=jwks)

    def test_unusable_keys_skipped(self) -> None:
        """Keys for encryption, of unknown types or with alg none are skipped."""
        good = self.jwk(rsa_key(), "r1", "RS256")
        jwks = {
            "keys": [
                {**good, "kid": "enc", "use": "enc"},
                {**good, "kid": "none", "alg": "none"},
                {"kty": "XYZ", "kid": "xyz"},
                "not a key",
                good,
            ]
        }
        checker, _ = self.make(jwks=jwks)
        for kid in ("enc", "none", "xyz"):
            token = jwt.encode(claims(), rsa_key(), "RS256", headers={"kid": kid})
            self.assertReason(checker, token, "bad signature")
        self.check(checker, jwt.encode(claims(), rsa_key(), "RS256", headers={"kid": "r1"}))

    def test_unusable(self) -> None:
        """A key set that is not JSON, or has no usable key, is refused."""
        self.assertRaises(ValueError, JWTChecker, jwks="{")
        self.assertRaises(ValueError, JWTChecker, jwks={"keys": []})
        self.assertRaises(ValueError, JWTChecker, jwks={"keys": [{"kty": "XYZ"}]})
        self.assertRaises(ValueError, JWTChecker, jwks=b"[]")


class ConstructorTests(SynchronousTestCase):
    """
    Refusals when a checker is made.
    """

    def test_one_key_source(self) -> None:
        """Exactly one key source must be given."""
        self.assertRaises(ValueError, JWTChecker)
        self.assertRaises(ValueError, JWTChecker, secret=SECRET, public_key=public_pem(rsa_key()))

    def test_short_secret(self) -> None:
        """An HMAC secret shorter than its hash is refused."""
        self.assertRaises(ValueError, JWTChecker, secret=b"short")
        self.assertRaises(ValueError, JWTChecker, secret=SECRET, algorithms=["HS512"])

    def test_secret_with_key_algorithm(self) -> None:
        """A secret cannot verify RS256."""
        self.assertRaises(ValueError, JWTChecker, secret=SECRET, algorithms=["RS256"])

    def test_key_with_hmac_algorithm(self) -> None:
        """A public key is never used as an HMAC secret."""
        self.assertRaises(
            ValueError, JWTChecker, public_key=public_pem(rsa_key()), algorithms=["HS256"]
        )

    def test_none_algorithm(self) -> None:
        """alg none cannot be allowed."""
        self.assertRaises(ValueError, JWTChecker, secret=SECRET, algorithms=["none"])

    def test_no_fitting_algorithm(self) -> None:
        """A key that none of the allowed algorithms fits is refused."""
        self.assertRaises(
            ValueError, JWTChecker, public_key=public_pem(rsa_key()), algorithms=["ES256"]
        )

    def test_not_a_key(self) -> None:
        """Text that is no PEM public key is refused."""
        self.assertRaises(ValueError, JWTChecker, public_key=b"hello")

    def test_negative_leeway(self) -> None:
        """Leeway cannot be negative."""
        self.assertRaises(ValueError, JWTChecker, secret=SECRET, leeway=-1)


class RealmPortalTests(SynchronousTestCase):
    """
    The realm and the portal.
    """

    def test_login(self) -> None:
        """Logging a token in through the portal gives its user."""
        clock = Clock()
        clock.advance(NOW)
        portal = build_portal([JWTChecker(secret=SECRET, clock=clock)])
        token = BearerToken(jwt.encode(claims(), SECRET, "HS256"))
        user: User = self.successResultOf(authenticate(portal, token))
        self.assertEqual(user.user_id, "cust-1")

    def test_login_failure(self) -> None:
        """A failed check reaches the caller with its reason."""
        clock = Clock()
        clock.advance(NOW)
        portal = build_portal([JWTChecker(secret=SECRET, clock=clock)])
        d: Deferred[Any] = authenticate(portal, BearerToken("nonsense"))
        self.assertEqual(
            self.failureResultOf(d, AuthenticationFailed).value.reason, "malformed token"
        )

    def test_realm(self) -> None:
        """The realm hands back the user as the IUserAvatar with a logout callable."""
        user = User("u", "U", "customer")
        interface, avatar, logout = MedichatRealm().requestAvatar(user, None, IUserAvatar)
        self.assertIs(interface, IUserAvatar)
        self.assertIs(avatar, user)
        logout()

    def test_realm_other_avatar(self) -> None:
        """The realm makes nothing but a User into nothing but an IUserAvatar."""
        realm = MedichatRealm()
        self.assertRaises(NotImplementedError, realm.requestAvatar, b"alice", None, IUserAvatar)
        user = User("u", "U", "customer")
        self.assertRaises(NotImplementedError, realm.requestAvatar, user, None, IRealm)


class WireCredentialTests(SynchronousTestCase):
    """
    Credentials in handshake headers and CONNECT frames.
    """

    def test_parse_bearer(self) -> None:
        """The Bearer scheme is read in any case."""
        for value in ("Bearer abc", "bearer abc", "BEARER  abc ", "Bearer\tabc"):
            self.assertEqual(parse_bearer(value), BearerToken("abc"))

    def test_parse_bearer_malformed(self) -> None:
        """Other schemes and shapes are malformed tokens."""
        for value in ("", "Bearer", "Basic YWxhZGRpbjpvcGVu", "Bearer a b", "abc"):
            e = self.assertRaises(AuthenticationFailed, parse_bearer, value)
            self.assertEqual(e.reason, "malformed token")

    def frame(self, **headers: str) -> Any:
        lowered = {k.replace("_", "-").lower(): v for k, v in headers.items()}
        return lambda name: lowered.get(name.lower())

    def test_authorization_header(self) -> None:
        """An Authorization header in the frame gives a bearer token."""
        got = credentials_from_stomp(self.frame(Authorization="Bearer x.y.z"))
        self.assertEqual(got, BearerToken("x.y.z"))

    def test_authorization_first(self) -> None:
        """Authorization wins over passcode."""
        got = credentials_from_stomp(self.frame(authorization="Bearer a.b.c", passcode="d.e.f"))
        self.assertEqual(got, BearerToken("a.b.c"))

    def test_malformed_authorization(self) -> None:
        """An Authorization header of another scheme is a malformed token."""
        e = self.assertRaises(
            AuthenticationFailed, credentials_from_stomp, self.frame(Authorization="Basic eA==")
        )
        self.assertEqual(e.reason, "malformed token")

    def test_passcode_jwt(self) -> None:
        """A passcode shaped like a JWT is a bearer token."""
        token = jwt.encode(claims(), SECRET, "HS256")
        got = credentials_from_stomp(self.frame(login="ignored", passcode=token))
        self.assertEqual(got, BearerToken(token))

    def test_passcode_not_jwt(self) -> None:
        """A passcode that is no JWT is no credential."""
        self.assertIsNone(credentials_from_stomp(self.frame(login="guest", passcode="guest")))

    def test_nothing(self) -> None:
        """A frame without credential headers carries none."""
        self.assertIsNone(credentials_from_stomp(self.frame(host="example")))


class CheckerPluginTests(SynchronousTestCase):
    """
    The C{--auth jwt:...} and C{--auth session} plugins.
    """

    def write(self, content: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(content)
        return path

    def test_jwt_secret_file(self) -> None:
        """jwt:secret-file= makes a checker keyed with the file's stripped contents."""
        path = self.write(SECRET + b"\n")
        checker = strcred.makeChecker(f"jwt:secret-file={path}")
        clock = Clock()
        clock.advance(NOW)
        checker.attach(None, clock)
        user = self.successResultOf(
            checker.requestAvatarId(BearerToken(jwt.encode(claims(), SECRET, "HS256")))
        )
        self.assertEqual(user.user_id, "cust-1")

    def test_jwt_options(self) -> None:
        """Issuer URLs, audience, leeway and algorithms are read from the argstring."""
        path = self.write(b"s" * 64)
        checker = strcred.makeChecker(
            f"jwt:secret-file={path}:issuer=https://idp.example:8443/realm"
            ":audience=urn\\:medichat:leeway=30:algorithms=HS256,HS512"
        )
        clock = Clock()
        clock.advance(NOW)
        checker.attach(None, clock)
        token = jwt.encode(
            claims(iss="https://idp.example:8443/realm", aud="urn:medichat", exp=NOW - 20),
            b"s" * 64,
            "HS512",
        )
        self.assertEqual(
            self.successResultOf(checker.requestAvatarId(BearerToken(token))).user_id, "cust-1"
        )

    def test_jwt_public_key_file(self) -> None:
        """jwt:public-key-file= reads a PEM public key."""
        checker = strcred.makeChecker(f"jwt:public-key-file={self.write(public_pem(rsa_key()))}")
        self.assertEqual(checker.algorithms, {"RS256"})

    def test_jwt_jwks_file(self) -> None:
        """jwt:jwks-file= reads a key set."""
        key = ed25519.Ed25519PrivateKey.generate()
        jwk = json.loads(jwt.get_algorithm_by_name("EdDSA").to_jwk(key.public_key()))
        path = self.write(json.dumps({"keys": [jwk]}).encode())
        checker = strcred.makeChecker(f"jwt:jwks-file={path}")
        self.assertEqual(checker.algorithms, {"RS256", "ES256", "EdDSA"})

    def assertInvalid(self, description: str, fragment: str) -> None:
        e = self.assertRaises(strcred.InvalidAuthArgumentString, strcred.makeChecker, description)
        self.assertIn(fragment, str(e))

    def test_jwt_bad_argstrings(self) -> None:
        """Bad jwt argstrings are refused with a message saying what is wrong."""
        secret = self.write(SECRET)
        empty = self.write(b"  \n")
        missing = os.path.join(self.mktemp(), "nothing")
        self.assertInvalid("jwt", "exactly one of")
        self.assertInvalid("jwt:issuer=x", "exactly one of")
        self.assertInvalid(f"jwt:secret-file={secret}:jwks-file={secret}", "exactly one of")
        self.assertInvalid(f"jwt:secret-file={missing}", "cannot read")
        self.assertInvalid(f"jwt:secret-file={empty}", "is empty")
        self.assertInvalid(f"jwt:secret-file={secret}:colour=red", "unknown option")
        self.assertInvalid(f"jwt:secret-file={secret}:leeway=soon", "leeway")
        self.assertInvalid(f"jwt:secret-file={secret}:algorithms=RS256", "needs a public key")
        self.assertInvalid(f"jwt:secret-file={secret}:issuer=a:issuer=b", "twice")
        self.assertInvalid(f"jwt:public-key-file={secret}", "PEM")
        self.assertInvalid(f"jwt:jwks-file={secret}", "JSON")
        self.assertInvalid("jwt:/etc/key.pem", "name=value")

    def test_session(self) -> None:
        """session makes a cookie checker, with the default or the given ttl."""
        self.assertEqual(strcred.makeChecker("session").ttl, 43200)
        self.assertEqual(strcred.makeChecker("session:ttl=600").ttl, 600)

    def test_session_bad_ttl(self) -> None:
        """A ttl that is no positive whole number is refused."""
        self.assertInvalid("session:ttl=0", "ttl")
        self.assertInvalid("session:ttl=1.5", "ttl")
        self.assertInvalid("session:age=1", "unknown option")


class DevSecretTests(SynchronousTestCase):
    """
    The development secret and secret files.
    """

    def test_created_once(self) -> None:
        """The secret is made once, private to its owner, and read back after."""
        data_dir = os.path.join(self.mktemp(), "data")
        secret = load_or_create_dev_secret(data_dir)
        self.assertEqual(len(secret), 64)
        int(secret, 16)
        mode = stat.S_IMODE(os.stat(dev_secret_path(data_dir)).st_mode)
        self.assertEqual(mode, 0o600)
        self.assertEqual(load_or_create_dev_secret(data_dir), secret)
        self.assertEqual(load_dev_secret(data_dir), secret)
        self.assertEqual(os.listdir(data_dir), ["jwt-dev.secret"])

    def test_usable(self) -> None:
        """The development secret is long enough for every HMAC algorithm."""
        secret = load_or_create_dev_secret(self.mktemp())
        JWTChecker(secret=secret, algorithms=["HS256", "HS384", "HS512"])

    def test_load_missing(self) -> None:
        """Loading never creates a secret."""
        data_dir = self.mktemp()
        self.assertIsNone(load_dev_secret(data_dir))
        self.assertFalse(os.path.exists(data_dir))

    def test_read_secret(self) -> None:
        """A secret file is read without surrounding whitespace; empty ones are refused."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"\n  abc def \n")
        self.assertEqual(read_secret(path), b"abc def")
        with open(path, "wb") as f:
            f.write(b"\n")
        self.assertRaises(SecretFileError, read_secret, path)
        self.assertRaises(SecretFileError, read_secret, path + ".missing")
