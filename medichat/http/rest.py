"""
The JSON REST API (SPEC section 3), as a Klein application.

Routes are relative to the resource's place in the tree (C{--base-path}, C{/api} by
default), so C{/v1/me} here answers C{GET /api/v1/me}.  Handlers only translate between
HTTP and the domain services: authentication (a bearer JWT, else the employee session
cookie) through the cred portal, request bodies and query strings in, JSON out.  Every error
becomes C{application/problem+json} through L{medichat.http.problems}, in one place
(L{RestAPI.error}).

Query strings are read from the raw request URI rather than C{request.args}: split on
C{&} only (never C{;}), percent-decoded, and with C{+} kept as a plus sign, so that the
seed's C{?query=created=le=...;created=ge=...} and a timestamp's C{+02:00} arrive intact.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from collections.abc import Coroutine, Mapping
from typing import Any, NoReturn
from urllib.parse import unquote_to_bytes

from attrs import define, field
from klein import Klein
from twisted.cred.portal import Portal
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound

from medichat._ratelimit import TokenBuckets
from medichat._readiness import Readiness
from medichat.auth.credentials import (
    SESSION_COOKIE,
    BearerToken,
    SessionCookie,
    authenticate,
    parse_bearer,
)
from medichat.domain.access import MAX_ACCESS_PAGE, AccessLog
from medichat.domain.accounts import Accounts
from medichat.domain.conversations import MAX_LIMIT, ConversationDetail, ConversationService
from medichat.errors import (
    AuthenticationFailed,
    BadRequest,
    DomainError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    UnsupportedMediaType,
)
from medichat.http.accesslog import remember_user
from medichat.http.forwarded import Network, client_address
from medichat.http.origins import OriginPolicy
from medichat.http.problems import (
    Problem,
    problem_for,
    render_failure,
    whole_body,
    write_problem,
)
from medichat.http.shapes import (
    access_page_json,
    conversation_json,
    conversation_page_json,
    conversation_summary,
)
from medichat.interfaces import IStore
from medichat.model import Status, User, compact_json, micros

__all__ = ["RestAPI"]

"""The name of the employee session cookie."""

ALLOWED_REQUEST_HEADERS = "Authorization, Content-Type, Idempotency-Key"
EXPOSED_RESPONSE_HEADERS = "Location, Retry-After, WWW-Authenticate, X-Request-Id"
PREFLIGHT_MAX_AGE = 600
HEALTH_TIMEOUT = 5.0

_JSON_TYPE = re.compile(r"^application/(?:[a-z0-9.+-]+\+)?json$")
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?$")

_log = Logger()


# ----------------------------------------------------------------------------------------
# Request helpers


def _header(request: IRequest, name: str) -> str | None:
    """
    The request's header C{name} (lower case), as text.

    @raise Forbidden: for an C{Origin} that is not UTF-8.
    @raise BadRequest: for any other header that is not UTF-8.
    """
    value = request.getHeader(name.encode("ascii"))
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        error = Forbidden if name == "origin" else BadRequest
        raise error(f"{name.title()} header: not UTF-8") from None


def _scheme(request: IRequest) -> str:
    return "https" if request.isSecure() else "http"


def query_params(request: IRequest) -> dict[str, list[str]]:
    """
    The query string's parameters, read faithfully from the raw URI.

    Pairs are split on C{&} only; names and values are percent-decoded as UTF-8; C{+}
    stays a plus sign (spaces are C{%20}).

    @raise BadRequest: if a name or value is not UTF-8 once decoded.
    """
    raw = request.uri.partition(b"?")[2].partition(b"#")[0]
    params: dict[str, list[str]] = {}
    for pair in raw.split(b"&"):
        if not pair:
            continue
        name, _, value = pair.partition(b"=")
        try:
            key = unquote_to_bytes(name).decode("utf-8")
            text = unquote_to_bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("query string: not UTF-8 once percent-decoded") from None
        params.setdefault(key, []).append(text)
    return params


def _one(params: Mapping[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    if values is None:
        return None
    if len(values) > 1:
        raise BadRequest(f"{name}: given more than once")
    return values[0]


def _limit(text: str | None, most: int = MAX_LIMIT) -> int | None:
    if text is None:
        return None
    valid = text.isascii() and text.isdigit() and len(text) <= 7
    if not valid or not 1 <= int(text) <= most:
        raise BadRequest(f"limit: must be an integer from 1 to {most}")
    return int(text)


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise BadRequest(f"body: duplicate key {key!r}")
        result[key] = value
    return result


_BODY_DECODER = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
"""What reads request bodies: made once (C{json.loads} with hooks makes one per call)."""


def _string_field(body: Mapping[str, Any], name: str) -> str:
    if name not in body:
        raise BadRequest(f"{name}: required")
    value = body[name]
    if not isinstance(value, str):
        raise BadRequest(f"{name}: must be a string")
    return value


def _is_json_type(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media, _, params = content_type.partition(";")
    if not _JSON_TYPE.match(media.strip().lower()):
        return False
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            return False
    return True


# ----------------------------------------------------------------------------------------
# The application


_REMEMBERED_BEARERS = 4096
"""Bearer tokens whose user the API remembers, for refusing a flood before routing."""


class _APIResource(Resource):
    """
    Wraps the Klein resource: headers every API response carries (C{Cache-Control},
    CORS), and a problem+json 404 for paths that are not UTF-8 (which Klein would answer
    with a bare 400).
    """

    isLeaf = True

    def __init__(self, api: RestAPI, routed: IResource) -> None:
        super().__init__()
        self._api = api
        self._routed = routed

    def render(self, request: IRequest) -> Any:  # type: ignore[override]
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Vary", b"Origin")
        try:
            origin = _header(request, "origin")
            if origin is not None and self._api.origin_allowed(request):
                request.setHeader(b"Access-Control-Allow-Origin", origin.encode("utf-8"))
                request.setHeader(b"Access-Control-Allow-Credentials", b"true")
                request.setHeader(
                    b"Access-Control-Expose-Headers", EXPOSED_RESPONSE_HEADERS.encode()
                )
        except DomainError as e:
            return write_problem(request, problem_for(e))
        try:
            b"/".join(request.prepath + request.postpath).decode("utf-8")  # type: ignore[attr-defined]
        except UnicodeDecodeError:
            return write_problem(request, Problem.of(404, "no such path"))
        refusal = self._api.refuse_early(request)
        if refusal is not None:
            return refusal
        if _is_message_post(request):
            return self._api.post_message_directly(request)
        return self._routed.render(request)


MESSAGE_ROUTE = "/v1/conversation/<conversation_id>/message"
"""The template of the route that L{RestAPI.post_message_directly} serves."""


def _is_message_post(request: IRequest) -> bool:
    """
    C{True} for C{POST /v1/conversation/{id}/message} exactly as Klein's route matches it:
    four segments, a non-empty id holding no slash (a C{%2F} decoded by twisted.web would
    make Klein see more segments), and the method in capitals.
    """
    postpath = request.postpath  # type: ignore[attr-defined]
    return (
        request.method == b"POST"
        and len(postpath) == 4
        and postpath[0] == b"v1"
        and postpath[1] == b"conversation"
        and postpath[3] == b"message"
        and postpath[2] != b""
        and 0x2F not in postpath[2]  # "/", as a number (see medichat.http._whole.CR)
    )


class _Direct:
    """
    Serves one request with a route's handler as Klein would, without Klein: the handler's
    bytes are written and the request finished; a failure goes to L{RestAPI.error}; the
    handler is cancelled if the connection goes first.

    Klein binds a werkzeug map adapter per request and keeps its state in closures that
    refer to themselves, so every request it serves is cyclic garbage for the collector
    (with the request and its headers); this keeps none, for the one route that carries
    the chat's traffic.
    """

    __slots__ = ("_api", "_request", "_finished", "_running")

    def __init__(self, api: RestAPI, request: IRequest) -> None:
        self._api = api
        self._request = request
        self._finished = False
        self._running: Deferred[bytes] | None = None

    def run(self, handler: Coroutine[Any, Any, bytes]) -> int:
        self._request.notifyFinish().addBoth(  # type: ignore[attr-defined]
            self._connection_done)
        running = self._running = Deferred.fromCoroutine(handler)
        running.addCallbacks(self._write, self._failed)
        running.addErrback(self._write_failed)
        self._running = None if running.called else running
        return NOT_DONE_YET  # type: ignore[no-any-return]

    def _connection_done(self, result: object) -> None:
        self._finished = True
        running, self._running = self._running, None
        if isinstance(result, Failure) and running is not None:
            running.cancel()

    def _write(self, body: bytes) -> None:
        self._running = None
        if not self._finished:
            self._request.write(body)
            self._request.finish()

    def _failed(self, failure: Failure) -> None:
        self._running = None
        if self._finished:
            if not failure.check(CancelledError):
                _log.failure("Unhandled Error Processing Request.", failure)
            return
        try:
            # Klein's decorator hides the method's own signature from mypy.
            body: bytes = self._api.error(  # type: ignore[misc,call-arg,assignment]
                self._request, failure)
        except Exception:
            self._request.processingFailed(Failure())  # type: ignore[attr-defined]
            return
        self._write(body)

    def _write_failed(self, failure: Failure) -> None:
        _log.failure("Unhandled Error writing response", failure)


@define
class RestAPI:
    """
    The REST API.

    @ivar conversations: the conversation service.
    @ivar portal: checks bearer tokens and session cookies.
    @ivar accounts: employee logins; L{None} disables C{/v1/auth/login}.
    @ivar origins: which origins may send cookie-authenticated state changes and read
        responses cross-origin (CORS).
    @ivar store: for the health check.
    @ivar clock: for rate limiting and timeouts.
    @ivar max_body: the largest request body accepted, in bytes.
    @ivar secure_cookies: mark the session cookie C{Secure} even over plain HTTP (behind a
        TLS-terminating proxy); it is always C{Secure} when the request came over TLS.
    @ivar cookie_path: the session cookie's C{Path}: the base path.
    @ivar message_rate: message POSTs allowed per user per C{message_window} seconds.
    @ivar conversation_rate: conversations a user may open per C{conversation_window}
        seconds (at once, or spread out).
    @ivar trusted_proxies: networks of the reverse proxies whose C{Forwarded} /
        C{X-Forwarded-For} name the client's address (for login rate limits).
    @ivar readiness: draining and the readiness checks of services, for C{/readyz};
        L{None} for none (ready while the store is).
    """

    conversations: ConversationService
    portal: Portal
    accounts: Accounts | None
    origins: OriginPolicy
    store: IStore
    clock: IReactorTime
    max_body: int = 65536
    secure_cookies: bool = False
    cookie_path: str = "/api"
    message_rate: int = 20
    message_window: float = 10.0
    conversation_rate: int = 10
    conversation_window: float = 60.0
    trusted_proxies: tuple[Network, ...] = ()
    readiness: Readiness | None = None
    _message_buckets: TokenBuckets = field(init=False)
    _conversation_buckets: TokenBuckets = field(init=False)
    _bearer_users: dict[str, User] = field(factory=dict, init=False, repr=False)
    _openapi: bytes | None = field(default=None, init=False)
    _health_failure: str | None = field(default=None, init=False)
    _access_log: AccessLog = field(init=False)

    router = Klein()
    # "/v1/conversation//message" must not be taken for "/v1/conversation/message".
    router.url_map.merge_slashes = False

    def __attrs_post_init__(self) -> None:
        self._message_buckets = TokenBuckets(self.message_rate, self.message_window)
        self._conversation_buckets = TokenBuckets(
            self.conversation_rate, self.conversation_window
        )
        self._access_log = AccessLog(self.store)

    def resource(self) -> IResource:
        """
        The resource to mount at the base path.
        """
        return _APIResource(self, self.router.resource())

    # -- policy -----------------------------------------------------------------------------

    def origin_allowed(self, request: IRequest) -> bool:
        """
        C{True} if the request's C{Origin} (if any) may use cookies to change state here.
        """
        return self.origins.is_allowed(
            _header(request, "origin"),
            scheme=_scheme(request),
            host_header=_header(request, "host"),
        )

    def _check_origin(self, request: IRequest) -> None:
        if not self.origin_allowed(request):
            origin = _header(request, "origin")
            _log.info(
                "refused {method} {path} from {client}: origin {origin} not allowed",
                method=request.method.decode("latin-1"),
                path=request.path.decode("latin-1"),  # type: ignore[attr-defined]
                client=client_address(request, self.trusted_proxies),
                origin=origin,
            )
            raise Forbidden(f"origin {origin} is not allowed")

    async def _user(self, request: IRequest, *, changes_state: bool) -> User:
        """
        Authenticate: C{Authorization: Bearer}, else the session cookie.

        @param changes_state: a cookie-authenticated request must then come from an
            allowed origin.
        """
        authorization = _header(request, "authorization")
        credentials: object
        try:
            if authorization is not None:
                credentials = parse_bearer(authorization)
            else:
                cookie = request.getCookie(SESSION_COOKIE.encode("ascii"))
                if cookie is None:
                    raise Unauthorized("missing credentials")
                if changes_state:
                    self._check_origin(request)
                credentials = SessionCookie(cookie.decode("utf-8", "replace"))
            user: User = await authenticate(self.portal, credentials)
        except AuthenticationFailed as e:
            raise Unauthorized(e.reason) from None
        if isinstance(credentials, BearerToken):
            self._remember_bearer(credentials.token, user)
        # Where this request came from, for the access log of what the user then sees.
        user = user.at(client_address(request, self.trusted_proxies))
        remember_user(request, user)
        return user

    def _remember_bearer(self, token: str, user: User) -> None:
        known = self._bearer_users
        if token in known:
            return
        if len(known) >= _REMEMBERED_BEARERS:
            # Dicts keep insertion order: forget the token seen longest ago.
            del known[next(iter(known))]
        known[token] = user

    def refuse_early(self, request: IRequest) -> bytes | None:
        """
        Answer 429 at once, before routing, to a C{POST /v1/conversation} whose bearer
        token was seen before and whose user has no conversation left in their bucket:
        the answer the route would give, at a fraction of its cost, so that one customer
        flooding it slows nobody else down.  L{None} for every other request (and for a
        token not seen, or expired: the route then authenticates it).
        """
        if request.method != b"POST" or request.postpath != [b"v1", b"conversation"]:
            return None
        authorization = request.getHeader(b"authorization")
        if authorization is None:
            return None
        scheme, _, token = authorization.partition(b" ")
        if scheme.lower() != b"bearer":
            return None
        user = self._bearer_users.get(token.strip().decode("ascii", "replace"))
        if user is None:
            return None
        now = self.clock.seconds()
        if user.expires_at is not None and user.expires_at <= micros(now):
            return None
        wait = self._conversation_buckets.wait(user.user_id, now)
        if wait is None:
            return None
        remember_user(request, user)
        return write_problem(request, problem_for(self._conversation_limit(wait)))

    def post_message_directly(self, request: IRequest) -> int:
        """
        Serve C{POST /v1/conversation/{id}/message} (see L{_is_message_post}) with
        L{post_message}, as Klein would route it: the path's segments move to C{prepath}.
        """
        postpath = request.postpath  # type: ignore[attr-defined]
        request.prepath.extend(postpath)  # type: ignore[attr-defined]
        request.postpath = []  # type: ignore[attr-defined]
        # The route's template, as Klein's map would have given it (for the metrics).
        request.route_template = MESSAGE_ROUTE  # type: ignore[attr-defined]
        return _Direct(self, request).run(self.post_message(request, postpath[2].decode("utf-8")))

    def _check_message_rate(self, user: User) -> None:
        wait = self._message_buckets.take(user.user_id, self.clock.seconds())
        if wait is not None:
            raise RateLimited(
                f"at most {self.message_rate} messages per {self.message_window:g} seconds",
                retry_after=wait,
            )

    def _check_conversation_rate(self, user: User) -> None:
        wait = self._conversation_buckets.take(user.user_id, self.clock.seconds())
        if wait is not None:
            raise self._conversation_limit(wait)

    def _conversation_limit(self, wait: float) -> RateLimited:
        return RateLimited(
            f"at most {self.conversation_rate} new conversations per "
            f"{self.conversation_window:g} seconds",
            retry_after=wait,
        )

    # -- bodies and responses ---------------------------------------------------------------

    def _json_body(self, request: IRequest, *, allow_empty: bool) -> dict[str, Any] | None:
        """
        The request body as a JSON object.

        @param allow_empty: an empty body is accepted (and returned as L{None}).
        """
        length = _header(request, "content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_body:
            raise PayloadTooLarge(f"the body may be at most {self.max_body} bytes")
        content = request.content
        if content is None:
            body = b""
        else:
            content.seek(0)
            body = content.read(self.max_body + 1)
        if len(body) > self.max_body:
            raise PayloadTooLarge(f"the body may be at most {self.max_body} bytes")
        if not body and allow_empty:
            return None
        if not _is_json_type(_header(request, "content-type")):
            raise UnsupportedMediaType("the body must be JSON (Content-Type: application/json)")
        if not body:
            raise BadRequest("body: a JSON object is required")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadRequest(f"body: not UTF-8 at byte {e.start}") from None
        try:
            if text.startswith("\ufeff"):
                # As json.loads refuses it (the decoder itself does not check).
                raise json.JSONDecodeError(
                    "Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0
                )
            value = _BODY_DECODER.decode(text)
        except json.JSONDecodeError as e:
            raise BadRequest(
                f"body: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}"
            ) from None
        except RecursionError:
            raise BadRequest("body: JSON nested too deeply") from None
        except ValueError as e:
            raise BadRequest(f"body: {e}") from None
        if not isinstance(value, dict):
            raise BadRequest("body: must be a JSON object")
        return value

    def _json(self, request: IRequest, status: int, value: object) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        return whole_body(request, compact_json(value).encode("utf-8"))

    def _no_content(self, request: IRequest) -> bytes:
        request.setResponseCode(204)
        return b""

    def _cookie(self, request: IRequest, value: str, *, clear: bool = False) -> None:
        parts = [f"{SESSION_COOKIE}={value}", f"Path={self.cookie_path or '/'}"]
        if clear:
            parts += ["Max-Age=0", "Expires=Thu, 01 Jan 1970 00:00:00 GMT"]
        parts += ["HttpOnly", "SameSite=Lax"]
        if self.secure_cookies or request.isSecure():
            parts.append("Secure")
        request.responseHeaders.addRawHeader(b"Set-Cookie", "; ".join(parts).encode("ascii"))

    # -- errors -----------------------------------------------------------------------------

    @router.handle_errors
    def error(self, request: IRequest, failure: Failure) -> bytes:  # type: ignore[misc]
        """
        Every error, as problem+json: routing misses (404, 405, and CORS preflights for
        known paths), domain errors, and unexpected failures (500, logged).
        """
        error = failure.value
        if isinstance(error, MethodNotAllowed):
            allowed = sorted(set(error.valid_methods or ()) | {"OPTIONS"})
            if request.method == b"OPTIONS":
                return self._preflight(request, allowed)
            method = request.method.decode("latin-1")
            return write_problem(
                request,
                Problem.of(
                    405,
                    f"{method} is not allowed here; allowed: {', '.join(allowed)}",
                    (("Allow", ", ".join(allowed)),),
                ),
            )
        if isinstance(error, RouteNotFound):
            return write_problem(request, Problem.of(404, "no such path"))
        if isinstance(error, HTTPException):
            status = error.code if error.code in (400, 404, 405, 413, 415) else 404
            return write_problem(request, Problem.of(status, "no such path"))
        if isinstance(error, AuthenticationFailed):
            return write_problem(request, Problem.of(401, error.reason))
        if isinstance(error, DomainError):
            return write_problem(request, problem_for(error))
        return render_failure(request, failure)

    def _preflight(self, request: IRequest, allowed: list[str]) -> bytes:
        """
        Answer C{OPTIONS} on a known path: a CORS preflight when it comes with an
        C{Origin}, else a plain list of the methods.
        """
        if _header(request, "origin") is not None and not self.origin_allowed(request):
            return write_problem(
                request, Problem.of(403, f"origin {_header(request, 'origin')} is not allowed")
            )
        methods = ", ".join(allowed).encode("ascii")
        request.setResponseCode(204)
        request.setHeader(b"Allow", methods)
        if _header(request, "origin") is not None:
            request.setHeader(b"Access-Control-Allow-Methods", methods)
            request.setHeader(b"Access-Control-Allow-Headers", ALLOWED_REQUEST_HEADERS.encode())
            request.setHeader(b"Access-Control-Max-Age", str(PREFLIGHT_MAX_AGE).encode())
        return b""

    # -- routes: accounts -------------------------------------------------------------------

    @router.route("/v1/auth/login", methods=["POST"])
    async def login(self, request: IRequest) -> bytes:
        """
        C{POST /v1/auth/login} C{{"email", "password"}}: an employee logs in; sets the
        session cookie and returns the user.
        """
        if self.accounts is None:
            raise NotFound("employee login is not enabled on this server")
        # A login from a foreign page would log the browser in as someone else.
        self._check_origin(request)
        body = self._json_body(request, allow_empty=False)
        assert body is not None
        email = _string_field(body, "email")
        password = _string_field(body, "password")
        address = client_address(request, self.trusted_proxies)
        token, user = await self.accounts.login(email, password, address)
        remember_user(request, user)
        self._cookie(request, token)
        return self._json(request, 200, user.as_json())

    @router.route("/v1/auth/logout", methods=["POST"])
    async def logout(self, request: IRequest) -> bytes:
        """
        C{POST /v1/auth/logout}: revokes the session of the cookie (if any) and clears the
        cookie.  Answers 204 whether or not there was a live session.
        """
        cookie = request.getCookie(SESSION_COOKIE.encode("ascii"))
        if cookie is not None:
            self._check_origin(request)
        self._json_body(request, allow_empty=True)
        if cookie is not None and self.accounts is not None:
            await self.accounts.logout(cookie.decode("utf-8", "replace"))
        self._cookie(request, "", clear=True)
        return self._no_content(request)

    @router.route("/v1/me", methods=["GET"])
    async def me(self, request: IRequest) -> bytes:
        """
        C{GET /v1/me}: C{{"userId", "userName", "userRole"}} of the caller.
        """
        user = await self._user(request, changes_state=False)
        return self._json(request, 200, user.as_json())

    @router.route("/v1/me/access-log", methods=["GET"])
    async def access_log(self, request: IRequest) -> bytes:
        """
        C{GET /v1/me/access-log}: for a customer, a page (C{limit}, C{cursor}) of who
        accessed their conversations, newest first; 403 for employees.
        """
        user = await self._user(request, changes_state=False)
        params = query_params(request)
        page = await self._access_log.page(
            user,
            limit=_limit(_one(params, "limit"), MAX_ACCESS_PAGE),
            cursor=_one(params, "cursor"),
        )
        return self._json(request, 200, access_page_json(page))

    # -- routes: conversations --------------------------------------------------------------

    @router.route("/v1/conversation", methods=["POST"])
    async def create_conversation(self, request: IRequest) -> bytes:
        """
        C{POST /v1/conversation} (body C{{}} or empty): a customer opens a conversation;
        201 with it.
        """
        user = await self._user(request, changes_state=True)
        self._check_conversation_rate(user)
        self._json_body(request, allow_empty=True)
        conversation = await self.conversations.create(user)
        path = request.path.decode("utf-8").rstrip("/")
        request.setHeader(b"Location", f"{path}/{conversation.id}".encode())
        # A new conversation has no messages and no receipts yet.
        detail = ConversationDetail(conversation, messages=(), read=(), received=())
        return self._json(request, 201, conversation_json(detail))

    @router.route("/v1/conversation", methods=["GET"])
    async def list_conversations(self, request: IRequest) -> bytes:
        """
        C{GET /v1/conversation}: a page of conversations (C{query}, C{order}, C{limit},
        C{cursor}).
        """
        user = await self._user(request, changes_state=False)
        params = query_params(request)
        page = await self.conversations.list_conversations(
            user,
            query=_one(params, "query"),
            order=_one(params, "order") or "created",
            limit=_limit(_one(params, "limit")),
            cursor=_one(params, "cursor"),
        )
        return self._json(request, 200, conversation_page_json(page))

    @router.route("/v1/conversation/<conversation_id>", methods=["GET"])
    @router.route(
        "/v1/conversation/<conversation_id>/", methods=["GET"], endpoint="get_conversation_slash"
    )
    async def get_conversation(self, request: IRequest, conversation_id: str) -> bytes:
        """
        C{GET /v1/conversation/{id}} (with or without a trailing slash): the conversation
        with its messages (C{query}, C{order}, C{limit}) and receipts; marks it received.
        """
        user = await self._user(request, changes_state=False)
        params = query_params(request)
        result = await self.conversations.get(
            user,
            conversation_id,
            order=_one(params, "order") or "created",
            limit=_limit(_one(params, "limit")),
            query=_one(params, "query"),
        )
        return self._json(request, 200, conversation_json(result))

    @router.route("/v1/conversation/<conversation_id>/message", methods=["POST"])
    async def post_message(self, request: IRequest, conversation_id: str) -> bytes:
        """
        C{POST /v1/conversation/{id}/message} C{{"message"}}: 201 with the message, once
        committed; honours C{Idempotency-Key}.
        """
        user = await self._user(request, changes_state=True)
        key = _idempotency_key(request)
        self._check_message_rate(user)
        body = self._json_body(request, allow_empty=False)
        assert body is not None
        if "message" not in body:
            raise BadRequest("message: required")
        message = await self.conversations.post_message(user, conversation_id, body["message"], key)
        return self._json(request, 201, message.as_json())

    @router.route("/v1/conversation/<conversation_id>/read", methods=["POST"])
    async def read(self, request: IRequest, conversation_id: str) -> bytes:
        """
        C{POST /v1/conversation/{id}/read}: marks it read now; 204.
        """
        user = await self._user(request, changes_state=True)
        self._json_body(request, allow_empty=True)
        await self.conversations.mark_read(user, conversation_id)
        return self._no_content(request)

    @router.route("/v1/conversation/<conversation_id>/received", methods=["POST"])
    async def received(self, request: IRequest, conversation_id: str) -> bytes:
        """
        C{POST /v1/conversation/{id}/received}: marks it received now; 204.
        """
        user = await self._user(request, changes_state=True)
        self._json_body(request, allow_empty=True)
        await self.conversations.mark_received(user, conversation_id)
        return self._no_content(request)

    # -- routes: triage (employees) ---------------------------------------------------------

    @router.route("/v1/conversation/<conversation_id>/resolve", methods=["POST"])
    async def resolve(self, request: IRequest, conversation_id: str) -> bytes:
        """
        C{POST /v1/conversation/{id}/resolve}: an employee marks it resolved; 200 with the
        conversation (without messages).
        """
        return await self._set_status(request, conversation_id, "resolved")

    @router.route("/v1/conversation/<conversation_id>/reopen", methods=["POST"])
    async def reopen(self, request: IRequest, conversation_id: str) -> bytes:
        """
        C{POST /v1/conversation/{id}/reopen}: an employee marks it open again; 200 with
        the conversation (without messages).
        """
        return await self._set_status(request, conversation_id, "open")

    async def _set_status(
        self, request: IRequest, conversation_id: str, status: Status
    ) -> bytes:
        """Set an employee-changed status (resolve, reopen); 200 with the conversation."""
        user = await self._user(request, changes_state=True)
        self._json_body(request, allow_empty=True)
        conversation = await self.conversations.set_status(user, conversation_id, status)
        return self._json(request, 200, conversation_summary(conversation))

    @router.route("/v1/conversation/<conversation_id>/claim", methods=["POST"])
    async def claim(self, request: IRequest, conversation_id: str) -> bytes:
        """
        C{POST /v1/conversation/{id}/claim}: assigns it to the calling employee; 200 with
        the conversation, or 409 naming the employee who has it.
        """
        user = await self._user(request, changes_state=True)
        self._json_body(request, allow_empty=True)
        conversation = await self.conversations.claim(user, conversation_id)
        return self._json(request, 200, conversation_summary(conversation))

    @router.route("/v1/conversation/<conversation_id>/release", methods=["POST"])
    async def release(self, request: IRequest, conversation_id: str) -> bytes:
        """
        C{POST /v1/conversation/{id}/release}: the assignee gives it up; 200 with the
        conversation, or 409 if the caller does not have it.
        """
        user = await self._user(request, changes_state=True)
        self._json_body(request, allow_empty=True)
        conversation = await self.conversations.release(user, conversation_id)
        return self._json(request, 200, conversation_summary(conversation))

    # -- routes: operations -----------------------------------------------------------------

    async def _store_state(self) -> str:
        """
        C{"ok"} if the store answers a ping and commits a write within a few seconds each,
        else C{"unreachable"} or C{"cannot-write"}.  A change of state is logged once.
        """
        state = "unreachable"
        try:
            for probe in (self.store.ping, self.store.check_writable):
                d = probe()
                d.addTimeout(HEALTH_TIMEOUT, self.clock)
                await d
                state = "cannot-write"
        except Exception as e:
            reason = f"{state}: {e or type(e).__name__}"
            if self._health_failure is None:
                _log.warn("health check failing: the store is {reason}", reason=reason)
            self._health_failure = reason
            return state
        if self._health_failure is not None:
            _log.info("health check passing again (was: {reason})", reason=self._health_failure)
            self._health_failure = None
        return "ok"

    @router.route("/health", methods=["GET"])
    async def health(self, request: IRequest) -> bytes:
        """
        C{GET /health}: 200 C{{"status": "ok", "store": "ok"}}, or 503 with C{"store":
        "unreachable"} when the store does not answer a ping within a few seconds, or
        C{"cannot-write"} when it answers but cannot commit a write (read-only, full).
        A change of state is logged once.
        """
        state = await self._store_state()
        if state != "ok":
            return self._json(request, 503, {"status": "unavailable", "store": state})
        return self._json(request, 200, {"status": "ok", "store": "ok"})

    @router.route("/livez", methods=["GET"])
    def livez(self, request: IRequest) -> bytes:
        """
        C{GET /livez}: 200 C{{"status": "ok"}} whenever the process answers at all (its
        reactor runs), draining or not, store or no store.
        """
        return self._json(request, 200, {"status": "ok"})

    @router.route("/readyz", methods=["GET"])
    async def readyz(self, request: IRequest) -> bytes:
        """
        C{GET /readyz}: 200 C{{"status": "ready", ...}} when this process should be sent
        traffic; 503 C{{"status": "draining"}} at once when it is stopping, and 503
        C{{"status": "unavailable", "store": ..., "checks": {...}}} while the store (as for
        C{/health}) or a check that a service registered (see L{Readiness}) fails.
        """
        readiness = self.readiness
        if readiness is not None and readiness.draining:
            return self._json(request, 503, {"status": "draining"})
        store = await self._store_state()
        checks: dict[str, str] = {}
        for name, check in readiness.checks() if readiness is not None else ():
            try:
                d = check()
                d.addTimeout(HEALTH_TIMEOUT, self.clock)
                await d
            except Exception as e:
                _log.debug("readiness check {name} failing: {e}", name=name, e=e)
                checks[name] = "failing"
            else:
                checks[name] = "ok"
        if readiness is not None and readiness.draining:
            return self._json(request, 503, {"status": "draining"})
        ready = store == "ok" and all(state == "ok" for state in checks.values())
        body = {"status": "ready" if ready else "unavailable", "store": store, "checks": checks}
        return self._json(request, 200 if ready else 503, body)

    @router.route("/v1/openapi.json", methods=["GET"])
    def openapi(self, request: IRequest) -> bytes:
        """
        C{GET /v1/openapi.json}: the OpenAPI 3 document of this API.
        """
        if self._openapi is None:
            document = importlib.resources.files("medichat.http").joinpath("openapi.json")
            self._openapi = document.read_bytes()
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"application/json")
        return self._openapi


def _idempotency_key(request: IRequest) -> str | None:
    """
    The C{Idempotency-Key} header: 1 to 255 printable ASCII characters, optionally quoted
    as a structured-field string (C{"..."}), as the IETF draft writes it.
    """
    value = _header(request, "idempotency-key")
    if value is None:
        return None
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not _IDEMPOTENCY_KEY.match(value):
        raise BadRequest("Idempotency-Key: must be 1 to 255 printable ASCII characters")
    return value
