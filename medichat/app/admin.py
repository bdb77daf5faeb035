"""
C{medichat-admin}: the operator's command line.

    medichat-admin [--database postgresql://...] [--data-dir DIR] COMMAND ...

Commands: C{migrate}, C{add-employee}, C{set-password}, C{disable}, C{enable},
C{list-employees}, C{token}, and for the privacy officer C{audit} (the access log),
C{export-customer} and C{erase-customer}.  It opens the same store as C{twistd medichat}
given the same C{--database} and C{--data-dir}; only C{migrate}, or any command given
C{--create}, makes a database where there is none.  Exit status: 0 done, 1 the command
failed (a taken email, an unknown account or customer, an unreachable database), 2 a usage
error.
"""

from __future__ import annotations

import csv
import getopt
import getpass
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import IO, Any

import jwt
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import react
from twisted.python import usage

from medichat.app._about import version_text
from medichat.auth.devsecret import SecretFileError, dev_secret_path, load_dev_secret, read_secret
from medichat.domain.access import erase_customer, operator_entry
from medichat.domain.accounts import Accounts, normalise_email
from medichat.domain.conversations import export_customer
from medichat.errors import DomainError, DuplicateError, MissingDatabase, StoreError
from medichat.http.shapes import conversation_json
from medichat.interfaces import IStore
from medichat.model import (
    DISPLAY_NAME_RULE,
    ROLES,
    AccessEntry,
    format_time,
    is_display_name,
    micros,
    parse_time,
)
from medichat.store import open_store

DEFAULT_DATA_DIR = "./medichat-data"
DEFAULT_TOKEN_TTL = 3600


class _Usage(Exception):
    """A usage error found after option parsing: exit status 2."""


class _Failed(Exception):
    """The command could not be done: exit status 1."""


class _ShowVersion(Exception):
    """C{--version} was given: print the version, exit status 0."""


class _InterspersedOptions(usage.Options):
    """
    Options that may follow the positional arguments (C{add-employee EMAIL --name NAME}),
    which L{usage.Options}, built on C{getopt.getopt}, does not allow by itself.
    """

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """Move the positional arguments after the options, then parse as usual."""
        if options is None:
            options = sys.argv[1:]
        try:
            found, positional = getopt.gnu_getopt(list(options), self.shortOpt, self.longOpt)
        except getopt.GetoptError as e:
            raise usage.UsageError(str(e)) from e
        reordered: list[str] = []
        for flag, value in found:
            reordered.append(flag)
            takes_value = (
                flag[2:] + "=" in self.longOpt
                if flag.startswith("--")
                else flag[1:] + ":" in self.shortOpt
            )
            if takes_value:
                reordered.append(value)
        super().parseOptions(reordered + ["--"] + positional)


class _EmailOptions(_InterspersedOptions):
    """Options of a command about one employee, named by email."""

    longdesc = "EMAIL names the employee (in any case)."

    def parseArgs(self, email: str) -> None:  # type: ignore[override]
        """Take the employee's email."""
        self["email"] = email


class _PasswordOptions(_EmailOptions):
    optParameters = [
        [
            "password-file",
            None,
            None,
            "Read the password from the first line of this file "
            "(default: one line of standard input, or a prompt on a terminal).",
        ],
    ]


class AddEmployeeOptions(_PasswordOptions):
    """C{add-employee EMAIL --name NAME [--password-file FILE]}."""

    synopsis = "EMAIL --name NAME [--password-file FILE]"
    optParameters = _PasswordOptions.optParameters + [
        ["name", None, None, "The employee's display name (required)."],
    ]

    def postOptions(self) -> None:
        """Require C{--name}."""
        if not self["name"]:
            raise usage.UsageError("--name is required")


class SetPasswordOptions(_PasswordOptions):
    """C{set-password EMAIL [--password-file FILE]}."""

    synopsis = "EMAIL [--password-file FILE]"


class DisableOptions(_EmailOptions):
    """C{disable EMAIL}."""

    synopsis = "EMAIL"


class EnableOptions(_EmailOptions):
    """C{enable EMAIL}."""

    synopsis = "EMAIL"


class NoArgsOptions(usage.Options):
    """A command without options (C{migrate}, C{list-employees})."""

    longdesc = ""


class TokenOptions(_InterspersedOptions):
    """C{token --user-id ID --name NAME [--role ROLE] [--ttl SECONDS] [--secret-file F]}."""

    synopsis = "--user-id ID --name NAME [--role customer|employee] [--ttl SECONDS]"
    longdesc = (
        "Print an HS256 JWT for the given user, signed with the development secret of "
        "--data-dir (or --secret-file), for trying the server out. Never creates a secret."
    )
    optParameters = [
        ["user-id", None, None, "The sub claim: the user's id (required)."],
        ["name", None, None, "The name claim: the user's display name (required)."],
        ["role", None, "customer", "The role claim: customer or employee."],
        ["ttl", None, DEFAULT_TOKEN_TTL, "Seconds until the token expires.", int],
        [
            "secret-file",
            None,
            None,
            "Sign with the HMAC secret in this file (default: the development secret "
            "in --data-dir, which the server made when started without --auth).",
        ],
        ["issuer", None, None, "An iss claim, for a server started with issuer=."],
        ["audience", None, None, "An aud claim, for a server started with audience=."],
    ]

    def postOptions(self) -> None:
        """Check the claims' values."""
        for name in ("user-id", "name"):
            if not self[name]:
                raise usage.UsageError(f"--{name} is required")
        if not is_display_name(self["name"]):
            raise usage.UsageError(f"--name {DISPLAY_NAME_RULE}")
        if self["role"] not in ROLES:
            raise usage.UsageError(f"--role must be one of {', '.join(ROLES)}")
        if self["ttl"] <= 0:
            raise usage.UsageError("--ttl must be a positive number of seconds")


class AuditOptions(_InterspersedOptions):
    """
    C{audit [--customer ID] [--employee ID] [--conversation ID] [--since T] [--until T]
    [--format json|csv]}.
    """

    synopsis = (
        "[--customer ID] [--employee ID] [--conversation ID] [--since T] [--until T] "
        "[--format json|csv]"
    )
    longdesc = (
        "Print the access log (NEN 7513), oldest first: every access by an employee to "
        "conversation data, and every export or erasure. Filters combine (and); times are "
        "RFC 3339 (2026-01-31T00:00:00Z), --since inclusive, --until exclusive. json: one "
        "array of objects; csv: a header line, then one line per access."
    )
    optParameters = [
        ["customer", None, None, "Only accesses to this customer's data."],
        ["employee", None, None, "Only accesses by this employee id."],
        ["conversation", None, None, "Only accesses to this conversation."],
        ["since", None, None, "Only accesses at or after this time."],
        ["until", None, None, "Only accesses before this time."],
        ["format", None, "json", "json or csv."],
    ]

    def postOptions(self) -> None:
        """Read the times; check the format."""
        for name in ("since", "until"):
            if self[name] is not None:
                try:
                    self[name] = parse_time(self[name])
                except ValueError:
                    raise usage.UsageError(
                        f"--{name} needs an RFC 3339 time such as 2026-01-31T00:00:00Z, "
                        f"not {self[name]!r}"
                    ) from None
        if self["format"] not in ("json", "csv"):
            raise usage.UsageError("--format must be json or csv")


class _CustomerOptions(_InterspersedOptions):
    """Options of a command about one customer, named by id."""

    def parseArgs(self, customer_id: str) -> None:  # type: ignore[override]
        """Take the customer's id (the C{sub} of their tokens)."""
        self["customer"] = customer_id


class ExportCustomerOptions(_CustomerOptions):
    """C{export-customer ID}."""

    synopsis = "ID"
    longdesc = (
        "Print every conversation of the customer ID (the sub of their tokens), with its "
        "messages and receipts, as one JSON object: what a subject access request under the "
        "AVG/GDPR asks for. Recorded in the access log (action export)."
    )


class EraseCustomerOptions(_CustomerOptions):
    """C{erase-customer ID --confirm}."""

    synopsis = "ID --confirm"
    longdesc = (
        "Delete every conversation of the customer ID with its messages, receipts, events "
        "and idempotency keys, for good. The access log keeps its rows about them, as the "
        "law requires, and records the erasure (action erase)."
    )
    optFlags = [["confirm", None, "Really erase (required)."]]

    def postOptions(self) -> None:
        """Require C{--confirm}."""
        if not self["confirm"]:
            raise usage.UsageError(
                "erase-customer deletes the customer's conversations for good; add --confirm"
            )


class Options(usage.Options):
    """
    The command line of C{medichat-admin}.
    """

    synopsis = "Usage: medichat-admin [--database URL] [--data-dir DIR]"
    longdesc = (
        "Manage the employee accounts of a medichat server, migrate its database, and "
        "mint development tokens. 'medichat-admin COMMAND --help' shows a command's "
        "options. Exit status: 0 done, 1 the command failed, 2 a usage error."
    )
    optParameters = [
        [
            "database",
            None,
            None,
            "postgresql://user@host:port/db (default: the embedded SQLite store in --data-dir).",
        ],
        ["data-dir", None, DEFAULT_DATA_DIR, "The server's data directory."],
    ]
    optFlags = [
        [
            "create",
            None,
            "Make the database if there is none (migrate always may); without it, a "
            "--data-dir or --database that holds no medichat database is an error.",
        ],
    ]
    subCommands = [
        ["migrate", None, NoArgsOptions, "Apply pending schema migrations."],
        ["add-employee", None, AddEmployeeOptions, "Add an employee account."],
        ["set-password", None, SetPasswordOptions, "Set a password; ends the sessions."],
        ["disable", None, DisableOptions, "Disable an account; ends its sessions."],
        ["enable", None, EnableOptions, "Enable a disabled account again."],
        ["list-employees", None, NoArgsOptions, "List the employee accounts."],
        ["token", None, TokenOptions, "Mint a JWT signed with the development secret."],
        ["audit", None, AuditOptions, "Print the access log (NEN 7513)."],
        ["export-customer", None, ExportCustomerOptions,
         "Print a customer's conversations as JSON."],
        ["erase-customer", None, EraseCustomerOptions, "Erase a customer's conversations."],
    ]

    def opt_version(self) -> None:
        """
        Print medichat's version (and Twisted's and Python's) and exit.
        """
        raise _ShowVersion()

    def postOptions(self) -> None:
        """Require a command."""
        if self.subCommand is None:
            raise usage.UsageError("a command is required")


# --------------------------------------------------------------------------------------


def _read_new_password(options: usage.Options, stdin: IO[str]) -> str:
    path = options["password-file"]
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                line = f.readline()
        except (OSError, UnicodeDecodeError) as e:
            raise _Failed(f"cannot read password file {path}: {e}") from e
        password = line.rstrip("\r\n")
        if not password:
            raise _Failed(f"password file {path} holds no password on its first line")
        return password
    if stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            raise _Failed("the passwords differ")
        return password
    password = stdin.readline().rstrip("\r\n")
    if not password:
        raise _Failed("no password on standard input")
    return password


async def _migrate(store: IStore, accounts: Accounts, options: Any, io: _IO) -> None:
    version = await store.schema_version()
    io.out(f"database schema at version {version}")


async def _add_employee(store: IStore, accounts: Accounts, options: Any, io: _IO) -> None:
    password = _read_new_password(options, io.stdin)
    try:
        employee = await accounts.add_employee(options["email"], options["name"], password)
    except DuplicateError as e:
        raise _Failed(f"an employee with email {normalise_email(options['email'])} exists") from e
    io.out(f"added employee {employee.email} ({employee.id})")


async def _set_password(store: IStore, accounts: Accounts, options: Any, io: _IO) -> None:
    password = _read_new_password(options, io.stdin)
    await accounts.set_password(options["email"], password)
    io.out(f"password set for {normalise_email(options['email'])}; their sessions are ended")


async def _disable(store: IStore, accounts: Accounts, options: Any, io: _IO) -> None:
    await accounts.set_disabled(options["email"], True)
    io.out(f"disabled {normalise_email(options['email'])}; their sessions are ended")


async def _enable(store: IStore, accounts: Accounts, options: Any, io: _IO) -> None:
    await accounts.set_disabled(options["email"], False)
    io.out(f"enabled {normalise_email(options['email'])}")


async def _list_employees(store: IStore, accounts: Accounts, options: Any, io: _IO) -> None:
    io.out("email\tname\tstatus\tlast login")
    for employee in await accounts.list_employees():
        status = "disabled" if employee.disabled else "enabled"
        last = format_time(employee.last_login) if employee.last_login is not None else "never"
        io.out(f"{employee.email}\t{employee.name}\t{status}\t{last}")


_StoreCommand = Callable[[IStore, Accounts, Any, "_IO"], Awaitable[None]]

_STORE_COMMANDS: dict[str, _StoreCommand] = {
    "migrate": _migrate,
    "add-employee": _add_employee,
    "set-password": _set_password,
    "disable": _disable,
    "enable": _enable,
    "list-employees": _list_employees,
}


def _operator() -> str:
    """The system account running C{medichat-admin}, for the access log."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        # No login name and no passwd entry (a bare container).
        return "unknown"


_AUDIT_FIELDS = (
    "time",
    "employeeId",
    "employeeName",
    "role",
    "action",
    "conversationId",
    "customerId",
    "address",
)


def _audit_row(entry: AccessEntry) -> list[str | None]:
    return [
        format_time(entry.at),
        entry.employee_id,
        entry.employee_name,
        entry.role,
        entry.action,
        entry.conversation_id,
        entry.customer_id,
        entry.address,
    ]


async def _audit(store: IStore, clock: IReactorTime, options: Any, io: _IO) -> None:
    # Read a page at a time, so that years of log never sit in memory at once.
    after: tuple[int, int] | None = None
    writer = csv.writer(io.stdout, lineterminator="\n") if options["format"] == "csv" else None
    if writer is not None:
        writer.writerow(_AUDIT_FIELDS)
    else:
        io.stdout.write("[")
    first = True
    while True:
        page = await store.access_log(
            customer_id=options["customer"],
            employee_id=options["employee"],
            conversation_id=options["conversation"],
            since=options["since"],
            until=options["until"],
            descending=False,
            limit=1000,
            after=after,
        )
        for entry in page:
            row = _audit_row(entry)
            if writer is not None:
                writer.writerow(["" if value is None else value for value in row])
            else:
                text = json.dumps(dict(zip(_AUDIT_FIELDS, row, strict=True)), ensure_ascii=False)
                io.stdout.write(("\n" if first else ",\n") + text)
                first = False
        if len(page) < 1000:
            break
        after = (page[-1].at, page[-1].seq)
    if writer is None:
        io.stdout.write("]\n" if first else "\n]\n")
    io.stdout.flush()


async def _export_customer(store: IStore, clock: IReactorTime, options: Any, io: _IO) -> None:
    now = micros(clock.seconds())
    try:
        exported = await export_customer(
            store, options["customer"], operator_entry(_operator(), "export", now)
        )
    except DomainError as e:
        raise _Failed(e.detail) from e
    document = {
        "customerId": options["customer"],
        "exported": format_time(now),
        "conversations": [conversation_json(detail) for detail in exported],
    }
    io.out(json.dumps(document, ensure_ascii=False, indent=2))


async def _erase_customer(store: IStore, clock: IReactorTime, options: Any, io: _IO) -> None:
    operator = _operator()
    actor = operator_entry(operator, "erase", micros(clock.seconds()))
    try:
        erased = await erase_customer(store, options["customer"], actor)
    except DomainError as e:
        raise _Failed(e.detail) from e
    io.out(
        f"erased customer {options['customer']}: {len(erased)} conversations "
        f"({', '.join(erased)}), by {operator}; the access log keeps its rows"
    )


_CustomerCommand = Callable[[IStore, IReactorTime, Any, "_IO"], Awaitable[None]]

_PRIVACY_COMMANDS: dict[str, _CustomerCommand] = {
    "audit": _audit,
    "export-customer": _export_customer,
    "erase-customer": _erase_customer,
}


def mint_token(
    secret: bytes,
    now: float,
    user_id: str,
    name: str,
    role: str = "customer",
    ttl: int = DEFAULT_TOKEN_TTL,
    issuer: str | None = None,
    audience: str | None = None,
) -> str:
    """
    An HS256 JWT for C{user_id}, as L{medichat.auth.checkers.JWTChecker} reads it.
    """
    issued = int(now)
    claims: dict[str, Any] = {
        "sub": user_id,
        "name": name,
        "role": role,
        "iat": issued,
        "exp": issued + ttl,
    }
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")


def _token(clock: IReactorTime, options: usage.Options, io: _IO) -> None:
    command = options.subOptions
    try:
        if command["secret-file"] is not None:
            secret = read_secret(command["secret-file"])
        else:
            found = load_dev_secret(options["data-dir"])
            if found is None:
                raise _Usage(
                    f"no development secret at {dev_secret_path(options['data-dir'])}: start "
                    "the server once without --auth, or give --secret-file"
                )
            secret = found
    except SecretFileError as e:
        raise _Usage(str(e)) from e
    io.out(
        mint_token(
            secret,
            clock.seconds(),
            command["user-id"],
            command["name"],
            command["role"],
            command["ttl"],
            command["issuer"],
            command["audience"],
        )
    )


class _IO:
    """The streams a command talks through."""

    def __init__(self, stdin: IO[str], stdout: IO[str], stderr: IO[str]) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr

    def out(self, line: str) -> None:
        """Write a line of output."""
        self.stdout.write(line + "\n")
        self.stdout.flush()

    def error(self, line: str) -> None:
        """Write a one-line error message."""
        self.stderr.write(f"medichat-admin: {line}\n")
        self.stderr.flush()


async def _run(reactor: Any, options: Options, io: _IO) -> int:
    if options.subCommand == "token":
        _token(reactor, options, io)
        return 0
    # A mistyped --data-dir must not become a new, empty server that "worked".
    create = options["create"] or options.subCommand == "migrate"
    try:
        store = open_store(options["database"], options["data-dir"], reactor, create=create)
    except ValueError as e:
        raise _Usage(str(e)) from e
    try:
        await store.start()
    except MissingDatabase as e:
        raise _Failed(
            f"cannot open the database: {e}; run 'medichat-admin migrate' to make one, "
            "or give --create"
        ) from e
    except Exception as e:
        raise _Failed(f"cannot open the database: {e}") from e
    try:
        accounts = Accounts(store, reactor)
        assert options.subCommand is not None
        privacy = _PRIVACY_COMMANDS.get(options.subCommand)
        if privacy is not None:
            await privacy(store, reactor, options.subOptions, io)
        else:
            await _STORE_COMMANDS[options.subCommand](store, accounts, options.subOptions, io)
    finally:
        await store.stop()
    return 0


def run(
    reactor: Any,
    argv: Sequence[str],
    stdin: IO[str] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> Deferred[int]:
    """
    Run C{medichat-admin} with the arguments C{argv} (without the program name).

    @param reactor: the reactor, for the store and as the clock.
    @return: a L{Deferred} firing with the exit status.
    """
    io = _IO(stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr)
    options = Options()
    try:
        options.parseOptions(list(argv))
    except usage.UsageError as e:
        io.error(f"{e}")
        io.error("try: medichat-admin --help")
        return succeed(2)
    except _ShowVersion:
        io.out(version_text())
        return succeed(0)
    except SystemExit as e:
        # --help prints and exits.
        return succeed(e.code if isinstance(e.code, int) else 0)

    async def running() -> int:
        try:
            return await _run(reactor, options, io)
        except _Usage as e:
            io.error(str(e))
            return 2
        except _Failed as e:
            io.error(str(e))
            return 1
        except DomainError as e:
            io.error(e.detail)
            return 1
        except StoreError as e:
            io.error(f"database error: {e}")
            return 1

    return Deferred.fromCoroutine(running())


def main(argv: Sequence[str] | None = None) -> None:
    """
    The C{medichat-admin} console script: run a command on the real reactor and exit with
    its status.
    """
    args = sys.argv[1:] if argv is None else list(argv)

    async def react_main(reactor: Any) -> None:
        status = await run(reactor, args)
        if status:
            raise SystemExit(status)

    react(react_main)


if __name__ == "__main__":
    main()
