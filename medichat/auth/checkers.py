"""
Authentication through L{twisted.cred}: one realm, one portal, a checker per credential kind.

  - L{JWTChecker} checks bearer JWTs (L{IBearerToken}) issued by an identity provider that
    medichat does not run: signed with an HMAC secret, or with a private key whose public
    half medichat holds as a PEM file or in a JWKS file.
  - L{SessionCookieChecker} checks employee session cookies (L{ISessionCookie}) against the
    login sessions in the store (see L{medichat.domain.accounts}).

Both produce the L{medichat.model.User} itself as the avatar id, and L{MedichatRealm} hands
it back as the L{IUserAvatar}.  Every rejection is an L{AuthenticationFailed} whose C{reason}
is one of the short phrases below, safe to show to the client.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import HMACAlgorithm
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from medichat.auth.credentials import (
    ACCOUNT_DISABLED,
    BAD_SIGNATURE,
    CREDENTIAL_EXPIRED,
    INVALID_CLAIMS,
    INVALID_SESSION,
    MALFORMED_TOKEN,
    MISSING_CREDENTIALS,
    NOT_YET_VALID,
    SESSION_EXPIRED,
    SESSION_REVOKED,
    UNSUPPORTED_ALGORITHM,
    WRONG_AUDIENCE,
    WRONG_ISSUER,
    looks_like_jwt,
)
from medichat.errors import AuthenticationFailed
from medichat.interfaces import IBearerToken, ISessionCookie, IStore, IStoreBound
from medichat.model import ROLES, User, is_blank, is_display_name, is_unicode, micros

DEFAULT_SESSION_TTL = 12 * 60 * 60
"""Seconds an employee's login session lives without use (it slides with use)."""

VERIFIED_TOKENS = 4096
"""How many verified tokens a L{JWTChecker} remembers, so as not to verify them again."""

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
DEFAULT_HMAC_ALGORITHMS = ("HS256",)
DEFAULT_KEY_ALGORITHMS = ("RS256", "ES256", "EdDSA")

_log = Logger()


def hash_session_token(token: str) -> str:
    """
    The form in which a session token is stored and looked up: its SHA-256, in hex.

    The token has 256 random bits, so a fast unsalted hash is enough: nobody can guess a
    token from its hash, and a leaked table of hashes lets nobody log in.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------
# Bearer JWTs

_HMAC_MIN_KEY_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
_EC_CURVE_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_MAX_ID_LENGTH = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _plain_text(text: str) -> bool:
    """
    C{True} for text without control characters or lone surrogates: ids and names end up
    in STOMP headers, JSON and the store (PostgreSQL refuses NUL).
    """
    return _CONTROL.search(text) is None and is_unicode(text)
_LATEST_TIME = 253_402_300_799
"""9999-12-31T23:59:59Z."""

PublicKey: TypeAlias = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)


def load_public_key(pem: bytes) -> PublicKey:
    """
    Read a PEM public key (C{BEGIN PUBLIC KEY}) or the key of a PEM X.509 certificate.

    @raise ValueError: if C{pem} is neither, or holds a key of a kind JWTs cannot use.
    """
    try:
        if b"-----BEGIN CERTIFICATE-----" in pem:
            key: object = x509.load_pem_x509_certificate(pem).public_key()
        else:
            key = serialization.load_pem_public_key(pem)
    except ValueError as e:
        raise ValueError("not a PEM public key or certificate") from e
    if not isinstance(key, PublicKey):
        raise ValueError(f"a {type(key).__name__} cannot verify JWTs")
    return key


def _key_algorithms(key: PublicKey) -> frozenset[str]:
    """The JWS algorithms that can verify with C{key}."""
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC_CURVE_ALGORITHMS.get(key.curve.name)
        return frozenset({alg}) if alg else frozenset()
    return frozenset({"EdDSA"})


def _check_algorithm_names(algorithms: Sequence[str]) -> tuple[str, ...]:
    known = set(jwt.algorithms.get_default_algorithms()) - {"none"}
    for alg in algorithms:
        if alg not in known:
            raise ValueError(f"unknown or forbidden JWT algorithm {alg!r}")
    if not algorithms:
        raise ValueError("no JWT algorithms allowed")
    return tuple(algorithms)


def _load_jwks(jwks: bytes | str | Mapping[str, Any]) -> list[jwt.PyJWK]:
    """
    The usable verification keys of a JWKS document.

    Keys of an unknown type or for encryption are skipped (RFC 7517 section 5); a
    symmetric (C{oct}) key is refused, since a secret belongs in a secret file.
    """
    if isinstance(jwks, bytes | str):
        try:
            document = json.loads(jwks)
        except ValueError as e:
            raise ValueError(f"JWKS is not JSON: {e}") from e
    else:
        document = jwks
    entries = document.get("keys") if isinstance(document, Mapping) else None
    if not isinstance(entries, list):
        raise ValueError('JWKS has no "keys" list')
    keys = []
    for entry in entries:
        if not isinstance(entry, Mapping) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") == "oct":
            raise ValueError("JWKS holds a symmetric (oct) key; give a secret file instead")
        try:
            keys.append(jwt.PyJWK(dict(entry)))
        except (jwt.PyJWTError, NotImplementedError):
            # An unknown kty or alg, or "alg": "none" (which PyJWT cannot make a key of).
            continue
    if not keys:
        raise ValueError("JWKS holds no usable signature key")
    return keys


def _time_claim(payload: Mapping[str, Any], name: str) -> float | None:
    """
    A NumericDate claim (C{exp}, C{nbf}, C{iat}): seconds since the epoch, up to the end of
    year 9999 so that it converts to microseconds and to RFC 3339 alike.
    """
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthenticationFailed(INVALID_CLAIMS)
    if not 0 <= value <= _LATEST_TIME:
        raise AuthenticationFailed(INVALID_CLAIMS)
    return float(value)


class _PreparedHMAC(HMACAlgorithm):
    """
    PyJWT's HMAC algorithm with the checker's secret prepared once: PyJWT prepares the key
    on every verification, trying it as a PEM, an SSH and a DER key (and JSON) each time
    to refuse asymmetric keys used as HMAC secrets.
    """

    def __init__(self, hash_alg: Any, secret: bytes) -> None:
        super().__init__(hash_alg)
        self._secret = secret
        self._prepared = super().prepare_key(secret)

    def prepare_key(self, key: Any) -> bytes:
        if key is self._secret:
            return self._prepared  # type: ignore[no-any-return]
        return super().prepare_key(key)  # type: ignore[no-any-return]


_HMAC_HASHES = {
    "HS256": HMACAlgorithm.SHA256, "HS384": HMACAlgorithm.SHA384, "HS512": HMACAlgorithm.SHA512,
}


def _decode_payload(payload: bytes) -> dict[str, Any]:
    """A JWS payload as a JWT's claims: a JSON object, as PyJWT reads it."""
    try:
        claims = json.loads(payload)
    except (ValueError, RecursionError) as e:
        raise jwt.DecodeError(f"Invalid payload string: {e}") from e
    if not isinstance(claims, dict):
        raise jwt.DecodeError("Invalid payload string: must be a json object")
    return claims


@implementer(ICredentialsChecker, IStoreBound)
class JWTChecker:
    """
    Checks bearer JWTs.

    Give exactly one key source:
      - C{secret}: an HMAC secret (bytes) for C{HS256}/C{HS384}/C{HS512}; at least as
        many bytes as the hash has (32 for HS256), as RFC 7518 asks;
      - C{public_key}: a PEM public key or certificate (bytes), or a loaded
        C{cryptography} public key, for RSA (C{RS*}, C{PS*}), ECDSA (C{ES*}) or EdDSA;
      - C{jwks}: a JWKS document (JSON text or the parsed mapping); the key is chosen by
        the token's C{kid}, or is the only key when the token has no C{kid}.

    The token's C{alg} must be one of C{algorithms} (by default C{HS256} for a secret and
    C{RS256}, C{ES256}, C{EdDSA} for keys) and must fit the key: C{none} and HMAC tokens
    against a public key are always refused.

    Claims: C{sub} (required, 1 to 255 characters) becomes C{user_id}; C{name} the
    C{user_name} (the C{sub} when absent); C{role} the C{user_role} (C{customer} when
    absent; only C{customer} or C{employee}); C{exp} the C{expires_at}.  C{exp}, C{nbf}
    and C{iat} are checked against the clock, allowing C{leeway} seconds of skew.  With
    an C{issuer}, C{iss} must equal it; with an C{audience}, C{aud} must name it, and
    without one a token naming any audience is refused (RFC 7519 section 4.1.3).

    @ivar credentialInterfaces: L{IBearerToken}.
    """

    credentialInterfaces = (IBearerToken,)

    def __init__(
        self,
        *,
        secret: bytes | None = None,
        public_key: bytes | PublicKey | None = None,
        jwks: bytes | str | Mapping[str, Any] | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        leeway: float = 0.0,
        algorithms: Sequence[str] | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param clock: the time source for C{exp}, C{nbf} and C{iat}; if not given here,
            L{attach} must give it before the first check.
        @raise ValueError: if the key source, the algorithms or the leeway are unusable.
        """
        if sum(source is not None for source in (secret, public_key, jwks)) != 1:
            raise ValueError("give exactly one of secret, public_key and jwks")
        if leeway < 0 or not math.isfinite(leeway):
            raise ValueError("leeway must be a non-negative number of seconds")
        self._issuer = issuer
        self._audience = audience
        self._leeway = float(leeway)
        self._clock = clock
        self._secret: bytes | None = None
        self._public_key: PublicKey | None = None
        self._jwks: list[jwt.PyJWK] = []
        # Tokens whose signature has been verified, with the user they name and their time
        # claims (exp, nbf, iat): a client sends the same token with every request, and
        # the signature is what costs.  The time claims are checked against the clock
        # again on every use; the others cannot change.
        self._verified: dict[
            str, tuple[User, float | None, float | None, float | None]
        ] = {}
        # PyJWT's token reader of this checker, with a prepared HMAC key.
        self._jws = jwt.PyJWS()

        if secret is not None:
            allowed = _check_algorithm_names(algorithms or DEFAULT_HMAC_ALGORITHMS)
            for alg in allowed:
                if alg not in HMAC_ALGORITHMS:
                    raise ValueError(f"{alg} needs a public key, not a secret")
                if len(secret) < _HMAC_MIN_KEY_BYTES[alg]:
                    raise ValueError(
                        f"an {alg} secret needs at least {_HMAC_MIN_KEY_BYTES[alg]} bytes; "
                        f"this one has {len(secret)}"
                    )
            self._secret = secret
            for alg in allowed:
                self._jws.unregister_algorithm(alg)
                self._jws.register_algorithm(alg, _PreparedHMAC(_HMAC_HASHES[alg], secret))
        else:
            allowed = _check_algorithm_names(algorithms or DEFAULT_KEY_ALGORITHMS)
            for alg in allowed:
                if alg in HMAC_ALGORITHMS:
                    raise ValueError(f"{alg} needs a secret, not a public key")
            if public_key is not None:
                key = load_public_key(public_key) if isinstance(public_key, bytes) else public_key
                allowed = tuple(alg for alg in allowed if alg in _key_algorithms(key))
                if not allowed:
                    raise ValueError(
                        "none of the allowed algorithms fits the key "
                        f"(it can verify {', '.join(sorted(_key_algorithms(key)))})"
                    )
                self._public_key = key
            else:
                assert jwks is not None
                self._jwks = [k for k in _load_jwks(jwks) if k.algorithm_name in allowed]
                if not self._jwks:
                    raise ValueError("no key in the JWKS fits the allowed algorithms")
        self._algorithms = frozenset(allowed)
        self._algorithm_list = list(allowed)

    @property
    def algorithms(self) -> frozenset[str]:
        """The algorithms a token may be signed with."""
        return self._algorithms

    def attach(self, store: IStore, clock: IReactorTime) -> None:
        """
        Take the clock (the store is of no use to this checker).
        """
        self._clock = clock

    # medichat's avatar ids are Users, not the bytes that twisted.cred's stubs expect.
    def requestAvatarId(  # type: ignore[override]
        self, credentials: IBearerToken
    ) -> Deferred[User]:
        """
        Check a bearer token.

        @return: a L{Deferred} firing with the L{User}, or failing with
            L{AuthenticationFailed}.
        """
        try:
            return succeed(self.verify(credentials.token))
        except AuthenticationFailed:
            return fail()

    def verify(self, token: object) -> User:
        """
        Check a compact JWT and read its user.

        @raise AuthenticationFailed: with one of the reasons of this module.
        @raise RuntimeError: if no clock was given.
        """
        if self._clock is None:
            raise RuntimeError("JWTChecker has no clock: pass clock= or call attach()")
        if isinstance(token, str):
            verified = self._verified.get(token)
            if verified is not None:
                user, exp, nbf, iat = verified
                try:
                    self._check_times(exp, nbf, iat, self._clock.seconds())
                except AuthenticationFailed:
                    del self._verified[token]
                    raise
                return user
        if not token:
            raise AuthenticationFailed(MISSING_CREDENTIALS)
        if not isinstance(token, str) or not looks_like_jwt(token):
            raise AuthenticationFailed(MALFORMED_TOKEN)
        try:
            if self._jwks:
                # The key depends on the header's kid: read the header first.
                header = self._header(token)
                alg = header["alg"]
                decoded = self._decode(token, self._key_for(header), [alg])
            else:
                # One reading of the token: PyJWT checks the header's alg against ours.
                decoded = self._decode(token, self._secret or self._public_key,
                                       self._algorithm_list)
        except jwt.InvalidAlgorithmError as e:
            # As when the header is read first: an alg that is not a string is malformed.
            self._header(token)
            raise AuthenticationFailed(UNSUPPORTED_ALGORITHM) from e
        except jwt.InvalidSignatureError as e:
            raise AuthenticationFailed(BAD_SIGNATURE) from e
        except jwt.InvalidKeyError as e:
            raise AuthenticationFailed(BAD_SIGNATURE) from e
        except AuthenticationFailed:
            raise
        except jwt.PyJWTError as e:
            raise AuthenticationFailed(MALFORMED_TOKEN) from e
        except Exception as e:
            # Whatever else a crafted token provokes inside a crypto library, it is the
            # token's fault, not a server error.
            _log.failure("unexpected error verifying a JWT")
            raise AuthenticationFailed(MALFORMED_TOKEN) from e
        payload = decoded
        user = self._user_from_claims(payload, self._clock.seconds())
        if len(self._verified) >= VERIFIED_TOKENS:
            # Dicts keep insertion order: forget the token verified longest ago.
            del self._verified[next(iter(self._verified))]
        self._verified[token] = (
            user,
            _time_claim(payload, "exp"),
            _time_claim(payload, "nbf"),
            _time_claim(payload, "iat"),
        )
        return user

    def _header(self, token: str) -> Mapping[str, Any]:
        """
        The token's header, with an C{alg} that is one of ours.

        @raise AuthenticationFailed: for a malformed header or another C{alg}.
        """
        try:
            header = self._jws.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise AuthenticationFailed(MALFORMED_TOKEN) from e
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise AuthenticationFailed(MALFORMED_TOKEN)
        if alg not in self._algorithms:
            raise AuthenticationFailed(UNSUPPORTED_ALGORITHM)
        return header

    def _decode(self, token: str, key: Any, algorithms: list[str]) -> dict[str, Any]:
        """Verify the token's signature and read its claims (nothing else is checked)."""
        decoded = self._jws.decode_complete(
            token, key, algorithms=algorithms, options={"verify_signature": True}
        )
        return _decode_payload(decoded["payload"])

    def _key_for(self, header: Mapping[str, Any]) -> bytes | PublicKey | jwt.PyJWK:
        if self._secret is not None:
            return self._secret
        if self._public_key is not None:
            return self._public_key
        kid = header.get("kid")
        if kid is None:
            if len(self._jwks) == 1:
                return self._jwks[0]
            raise AuthenticationFailed(BAD_SIGNATURE)
        if not isinstance(kid, str):
            raise AuthenticationFailed(MALFORMED_TOKEN)
        for key in self._jwks:
            if key.key_id == kid:
                return key
        raise AuthenticationFailed(BAD_SIGNATURE)

    def _check_times(self, exp: float | None, nbf: float | None, iat: float | None,
                     now: float) -> None:
        if exp is not None and exp <= now - self._leeway:
            raise AuthenticationFailed(CREDENTIAL_EXPIRED)
        if nbf is not None and nbf > now + self._leeway:
            raise AuthenticationFailed(NOT_YET_VALID)
        if iat is not None and iat > now + self._leeway:
            raise AuthenticationFailed(NOT_YET_VALID)

    def _user_from_claims(self, payload: Mapping[str, Any], now: float) -> User:
        exp = _time_claim(payload, "exp")
        nbf = _time_claim(payload, "nbf")
        iat = _time_claim(payload, "iat")
        self._check_times(exp, nbf, iat, now)

        if self._issuer is not None and payload.get("iss") != self._issuer:
            raise AuthenticationFailed(WRONG_ISSUER)
        if not self._audience_matches(payload.get("aud")):
            raise AuthenticationFailed(WRONG_AUDIENCE)

        sub = payload.get("sub")
        if (not isinstance(sub, str) or not sub or len(sub) > _MAX_ID_LENGTH
                or not _plain_text(sub)):
            raise AuthenticationFailed(INVALID_CLAIMS)
        name = payload.get("name")
        if name is None or (isinstance(name, str) and is_blank(name)):
            name = sub
        if not isinstance(name, str) or len(name) > _MAX_ID_LENGTH or not is_display_name(name):
            raise AuthenticationFailed(INVALID_CLAIMS)
        role = payload.get("role", "customer")
        if role not in ROLES:
            raise AuthenticationFailed(INVALID_CLAIMS)
        return User(
            user_id=sub,
            user_name=name,
            user_role=role,
            expires_at=micros(exp) if exp is not None else None,
        )

    def _audience_matches(self, aud: object) -> bool:
        if self._audience is None:
            return aud is None or aud == [] or aud == ""
        if isinstance(aud, str):
            return aud == self._audience
        if isinstance(aud, list):
            return self._audience in aud and all(isinstance(a, str) for a in aud)
        return False


# --------------------------------------------------------------------------------------
# Employee session cookies

_SLIDE_STEP = 60
"""Seconds the expiry must move before a session is extended: no write per request."""

_MAX_COOKIE_LENGTH = 512


@implementer(ICredentialsChecker, IStoreBound)
class SessionCookieChecker:
    """
    Checks employee session cookies against the store's login sessions.

    Sessions slide: each use moves the expiry to C{ttl} seconds from now, written at most
    once a minute per session.  The session's employee must still exist and be enabled.

    @ivar credentialInterfaces: L{ISessionCookie}.
    """

    credentialInterfaces = (ISessionCookie,)

    def __init__(
        self,
        ttl: int = DEFAULT_SESSION_TTL,
        *,
        store: IStore | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param ttl: seconds a session lives without use; should equal the C{session_ttl}
            of the L{medichat.domain.accounts.Accounts} that makes the sessions.
        @param store: the store; if not given here, L{attach} must give it.
        @param clock: the clock; if not given here, L{attach} must give it.
        """
        if ttl <= 0:
            raise ValueError("the session ttl must be a positive number of seconds")
        self.ttl = ttl
        self._store = store
        self._clock = clock

    def attach(self, store: IStore, clock: IReactorTime) -> None:
        """
        Give the checker its store and clock.
        """
        self._store = store
        self._clock = clock

    # medichat's avatar ids are Users, not the bytes that twisted.cred's stubs expect.
    def requestAvatarId(  # type: ignore[override]
        self, credentials: ISessionCookie
    ) -> Deferred[User]:
        """
        Check a session cookie.

        @return: a L{Deferred} firing with the employee's L{User} (its C{session_id} set),
            or failing with L{AuthenticationFailed}.
        """
        return Deferred.fromCoroutine(self._check(credentials.token))

    async def _check(self, token: object) -> User:
        if self._store is None or self._clock is None:
            raise RuntimeError("SessionCookieChecker is not attached to a store and clock")
        if not token:
            raise AuthenticationFailed(MISSING_CREDENTIALS)
        if not isinstance(token, str) or len(token) > _MAX_COOKIE_LENGTH:
            raise AuthenticationFailed(INVALID_SESSION)
        session = await self._store.find_login_session(hash_session_token(token))
        if session is None:
            raise AuthenticationFailed(INVALID_SESSION)
        if session.revoked:
            raise AuthenticationFailed(SESSION_REVOKED)
        now = micros(self._clock.seconds())
        if session.expires_at <= now:
            raise AuthenticationFailed(SESSION_EXPIRED)
        employee = await self._store.get_employee(session.employee_id)
        if employee is None:
            raise AuthenticationFailed(INVALID_SESSION)
        if employee.disabled:
            raise AuthenticationFailed(ACCOUNT_DISABLED)
        expires_at = session.expires_at
        slid = now + self.ttl * 1_000_000
        if slid - expires_at >= _SLIDE_STEP * 1_000_000:
            await self._store.extend_login_session(session.id, slid)
            expires_at = slid
        return User(
            user_id=employee.id,
            user_name=employee.name,
            user_role="employee",
            expires_at=expires_at,
            session_id=session.id,
        )
