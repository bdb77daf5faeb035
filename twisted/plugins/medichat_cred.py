"""
Credential checker plugins for C{--auth}, in the L{twisted.cred.strcred} style:

  - C{--auth jwt:secret-file=PATH[:issuer=ISS][:audience=AUD][:leeway=S][:algorithms=A,B]}
    (or C{public-key-file=PATH} or C{jwks-file=PATH} instead of C{secret-file});
  - C{--auth session[:ttl=SECONDS]}.

Options are C{name=value} pairs separated by colons.  A colon inside a value (an issuer
URL) may be written C{\\:}; a piece that does not start with C{name=} is taken as the rest
of the previous value, so C{issuer=https://idp.example/} works as written.
"""

from __future__ import annotations

import re

from twisted.cred.strcred import ICheckerFactory, InvalidAuthArgumentString
from twisted.plugin import IPlugin
from zope.interface import implementer

from medichat.auth.checkers import DEFAULT_SESSION_TTL, JWTChecker, SessionCookieChecker
from medichat.auth.devsecret import SecretFileError, read_secret
from medichat.interfaces import IBearerToken, ISessionCookie

_OPTION = re.compile(r"([a-z][a-z-]*)=(.*)", re.DOTALL)


def _split_colons(argstring: str) -> list[str]:
    pieces = [""]
    escaped = False
    for char in argstring:
        if escaped:
            pieces[-1] += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            pieces.append("")
        else:
            pieces[-1] += char
    if escaped:
        pieces[-1] += "\\"
    return pieces


def parse_options(argstring: str, known: frozenset[str]) -> dict[str, str]:
    """
    Read C{name=value} pairs separated by colons.

    @raise InvalidAuthArgumentString: for an unknown or repeated name, or a first piece
        that is no C{name=value}.
    """
    options: dict[str, str] = {}
    last: str | None = None
    if not argstring:
        return options
    for piece in _split_colons(argstring):
        match = _OPTION.fullmatch(piece)
        if match is None:
            if last is None:
                raise InvalidAuthArgumentString(f"expected name=value, got {piece!r}")
            options[last] += ":" + piece
            continue
        name, value = match.groups()
        if name not in known:
            raise InvalidAuthArgumentString(
                f"unknown option {name!r} (known: {', '.join(sorted(known))})"
            )
        if name in options:
            raise InvalidAuthArgumentString(f"option {name!r} given twice")
        options[name] = value
        last = name
    return options


def _read(path: str) -> bytes:
    try:
        return read_secret(path)
    except SecretFileError as e:
        raise InvalidAuthArgumentString(str(e)) from e


_JWT_OPTIONS = frozenset(
    {"secret-file", "public-key-file", "jwks-file", "issuer", "audience", "leeway", "algorithms"}
)
_KEY_SOURCES = ("secret-file", "public-key-file", "jwks-file")

_jwtHelp = """
Checks bearer JWTs (Authorization: Bearer, or a STOMP CONNECT's
Authorization or passcode header) issued by an identity provider.

Give exactly one key source: secret-file (HMAC; HS256 unless
algorithms says otherwise), public-key-file (PEM public key or
certificate; RS256, ES256 or EdDSA) or jwks-file (keys chosen by the
token's kid).  Optional: issuer, audience, leeway (seconds of clock
skew), algorithms (comma-separated).  Claims: sub -> user id, name ->
user name, role -> customer (default) or employee.
"""


@implementer(ICheckerFactory, IPlugin)
class JWTCheckerFactory:
    """
    Makes a L{JWTChecker} from C{--auth jwt:...}.
    """

    authType = "jwt"
    authHelp = _jwtHelp
    argStringFormat = (
        "secret-file=PATH | public-key-file=PATH | jwks-file=PATH, then optionally "
        ":issuer=ISS:audience=AUD:leeway=SECONDS:algorithms=ALG,ALG"
    )
    credentialInterfaces = (IBearerToken,)

    def generateChecker(self, argstring: str = "") -> JWTChecker:
        """
        Read the key file named in C{argstring} and make the checker; the server gives it
        its clock through L{medichat.interfaces.IStoreBound.attach}.

        @raise InvalidAuthArgumentString: for a bad option or an unusable key file.
        """
        options = parse_options(argstring, _JWT_OPTIONS)
        sources = [name for name in _KEY_SOURCES if name in options]
        if len(sources) != 1:
            raise InvalidAuthArgumentString(
                "jwt needs exactly one of secret-file=, public-key-file=, jwks-file="
            )
        leeway = 0.0
        if "leeway" in options:
            try:
                leeway = float(options["leeway"])
            except ValueError:
                raise InvalidAuthArgumentString(
                    f"leeway must be a number of seconds, not {options['leeway']!r}"
                ) from None
        algorithms = None
        if "algorithms" in options:
            algorithms = [a.strip() for a in options["algorithms"].split(",") if a.strip()]
        source = sources[0]
        path = options[source]
        key = _read(path)
        try:
            return JWTChecker(
                secret=key if source == "secret-file" else None,
                public_key=key if source == "public-key-file" else None,
                jwks=key if source == "jwks-file" else None,
                issuer=options.get("issuer"),
                audience=options.get("audience"),
                leeway=leeway,
                algorithms=algorithms,
            )
        except ValueError as e:
            raise InvalidAuthArgumentString(f"{source} {path}: {e}") from e


_sessionHelp = """
Checks employee session cookies (set by POST /v1/auth/login) against
the login sessions in the store.  Sessions slide: each use extends
them to ttl seconds (default 43200, 12 hours) from then.
"""


@implementer(ICheckerFactory, IPlugin)
class SessionCheckerFactory:
    """
    Makes a L{SessionCookieChecker} from C{--auth session[:ttl=SECONDS]}.
    """

    authType = "session"
    authHelp = _sessionHelp
    argStringFormat = "optionally ttl=SECONDS (default 43200)"
    credentialInterfaces = (ISessionCookie,)

    def generateChecker(self, argstring: str = "") -> SessionCookieChecker:
        """
        Make the checker; the server gives it its store and clock through
        L{medichat.interfaces.IStoreBound.attach}.

        @raise InvalidAuthArgumentString: for a bad option.
        """
        options = parse_options(argstring, frozenset({"ttl"}))
        ttl = DEFAULT_SESSION_TTL
        if "ttl" in options:
            try:
                ttl = int(options["ttl"])
            except ValueError:
                ttl = 0
            if ttl <= 0:
                raise InvalidAuthArgumentString(
                    f"ttl must be a positive whole number of seconds, not {options['ttl']!r}"
                )
        return SessionCookieChecker(ttl)


jwt = JWTCheckerFactory()
session = SessionCheckerFactory()
