"""
The deployment files under C{contrib/} parse, with the tools that will read them, and say
what docs/deploy.md says they say:

  - the systemd unit: C{systemd-analyze verify} (not a word of complaint), C{twistd -n},
    C{--pidfile=}, a dedicated user, C{Restart=on-failure}, C{LimitNOFILE};
  - the nginx site: C{nginx -t} inside a minimal C{nginx.conf}, with a throw-away TLS
    certificate in place of the real one;
  - the Containerfile: known instructions only, a non-root user, C{EXPOSE}, a
    C{HEALTHCHECK} on C{/livez}, C{twistd -n}.

Each one's medichat options are parsed by medichat's own L{Options}.  docs/deploy.md shows
each file whole, and must show it as it is.

A missing tool skips its test with the reason, except under C{CI=true}, where it fails:
C{.ci/run} installs them.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

from twisted.trial.unittest import SkipTest, SynchronousTestCase

import medichat
from medichat.app.tap import Options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(medichat.__file__)))
CONTRIB = os.path.join(ROOT, "contrib")
UNIT = os.path.join(CONTRIB, "medichat.service")
NGINX = os.path.join(CONTRIB, "nginx-medichat.conf")
CONTAINERFILE = os.path.join(CONTRIB, "Containerfile")
DEPLOY_DOC = os.path.join(ROOT, "docs", "deploy.md")

INSTALLED_BIN = "/opt/medichat/venv/bin/"
"""Where the unit expects medichat's virtual environment."""

CERTIFICATE = "/etc/ssl/certs/chat.example.org.pem"
PRIVATE_KEY = "/etc/ssl/private/chat.example.org.key"

DOCKERFILE_INSTRUCTIONS = frozenset({
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
})


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _tool(name: str) -> str:
    """
    The path of C{name}; skip the test without it, or fail under C{CI=true}.
    """
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        reason = f"{name} is not installed (.ci/run installs it; Debian: apt-get install)"
        if os.environ.get("CI") == "true":
            raise AssertionError(f"CI=true and {reason}")
        raise SkipTest(reason)
    return found


def _logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined and comments left out."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    return lines


def _medichat_args(words: list[str]) -> list[str]:
    """The words after C{medichat} in a command line."""
    return words[words.index("medichat") + 1:]


class SystemdUnitTests(SynchronousTestCase):
    """
    contrib/medichat.service.
    """

    def verify(self, text: str) -> tuple[int, str]:
        analyze = _tool("systemd-analyze")
        path = os.path.join(os.path.abspath(self.mktemp()), "medichat.service")
        os.makedirs(os.path.dirname(path))
        with open(path, "w") as f:
            f.write(text)
        result = subprocess.run([analyze, "verify", "--man=no", path], capture_output=True,
                                text=True, timeout=60)
        return result.returncode, result.stdout + result.stderr

    def installed_unit(self) -> str:
        """The unit, with this virtual environment where the installed one would be."""
        here = os.path.dirname(sys.executable)
        if not os.path.exists(os.path.join(here, "twistd")):
            raise SkipTest(f"no twistd beside {sys.executable}")
        return _read(UNIT).replace(INSTALLED_BIN, here + "/")

    def test_verifies(self) -> None:
        """systemd-analyze verify accepts it without a warning."""
        status, output = self.verify(self.installed_unit())
        self.assertEqual((status, output), (0, ""))

    def test_checker_complains(self) -> None:
        """The check is real: a unit with a bad value is not accepted silently."""
        status, output = self.verify(
            self.installed_unit().replace("Restart=on-failure", "Restart=sometimes")
        )
        self.assertIn("sometimes", output)

    def test_contents(self) -> None:
        """twistd -n with --pidfile=, a dedicated user, restarts, a file limit; options parse."""
        lines = _logical_lines(_read(UNIT))
        (exec_start,) = [line for line in lines if line.startswith("ExecStart=")]
        words = shlex.split(exec_start.partition("=")[2])
        self.assertEqual(words[:3], [INSTALLED_BIN + "twistd", "-n", "--pidfile="])
        for setting in ("User=medichat", "Restart=on-failure"):
            self.assertIn(setting, lines)
        self.assertTrue(any(line.startswith("LimitNOFILE=") for line in lines))
        Options().parseOptions(_medichat_args(words))


class NginxTests(SynchronousTestCase):
    """
    contrib/nginx-medichat.conf.
    """

    def check(self, text: str) -> tuple[int, str]:
        nginx = _tool("nginx")
        prefix = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(prefix, "logs"))
        certificate, key = self.throwaway_certificate(prefix)
        with open(os.path.join(prefix, "site.conf"), "w") as f:
            f.write(text.replace(CERTIFICATE, certificate).replace(PRIVATE_KEY, key))
        with open(os.path.join(prefix, "nginx.conf"), "w") as f:
            f.write(
                f"pid {prefix}/nginx.pid;\nerror_log {prefix}/logs/error.log;\nevents {{}}\n"
                f"http {{\n    access_log off;\n    include {prefix}/site.conf;\n}}\n"
            )
        result = subprocess.run(
            [nginx, "-t", "-q", "-p", prefix, "-c", os.path.join(prefix, "nginx.conf")],
            capture_output=True, text=True, timeout=60,
        )
        return result.returncode, result.stdout + result.stderr

    def throwaway_certificate(self, directory: str) -> tuple[str, str]:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chat.example.org")])
        certificate = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
            .not_valid_after(datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC))
            .sign(key, hashes.SHA256())
        )
        paths = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        with open(paths[0], "wb") as f:
            f.write(certificate.public_bytes(serialization.Encoding.PEM))
        with open(paths[1], "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        return paths

    def test_parses(self) -> None:
        """nginx -t accepts the site inside an http block."""
        status, output = self.check(_read(NGINX))
        self.assertEqual(status, 0, output)

    def test_checker_complains(self) -> None:
        """The check is real: a misspelt directive fails it."""
        status, _ = self.check(_read(NGINX).replace("proxy_pass ", "proxy_passs "))
        self.assertNotEqual(status, 0)

    def test_websocket_and_proxy(self) -> None:
        """It upgrades WebSockets, forwards the client's address, and names the options."""
        text = _read(NGINX)
        for needed in ("proxy_http_version 1.1;", "proxy_set_header Upgrade $http_upgrade;",
                       "X-Forwarded-For $proxy_add_x_forwarded_for", "listen 443 ssl;"):
            self.assertIn(needed, text)
        (command,) = [line for line in _logical_lines(
            "\n".join(line.lstrip("# ") for line in text.splitlines())
        ) if line.startswith("twistd -n medichat")]
        args = _medichat_args(shlex.split(command))
        self.assertIn("--trusted-proxy", args)
        self.assertIn("--allowed-origin", args)
        Options().parseOptions(args)


class ContainerfileTests(SynchronousTestCase):
    """
    contrib/Containerfile.
    """

    def instructions(self) -> list[tuple[str, str]]:
        found = []
        for line in _logical_lines(_read(CONTAINERFILE)):
            keyword, _, rest = line.partition(" ")
            found.append((keyword, rest.strip()))
        return found

    def test_known_instructions(self) -> None:
        """Every instruction is one that Containerfiles have, starting with FROM."""
        instructions = self.instructions()
        self.assertEqual(instructions[0][0], "FROM")
        for keyword, _ in instructions:
            self.assertIn(keyword, DOCKERFILE_INSTRUCTIONS)

    def test_contents(self) -> None:
        """A non-root user, EXPOSE, a HEALTHCHECK on /livez, twistd -n; CMD's options parse."""
        instructions = dict(self.instructions())
        self.assertNotIn(instructions["USER"], ("root", "0"))
        self.assertEqual(instructions["EXPOSE"], "8080")
        self.assertIn("/api/livez", instructions["HEALTHCHECK"])
        self.assertIn("CMD", instructions["HEALTHCHECK"])
        entrypoint = json.loads(instructions["ENTRYPOINT"])
        self.assertEqual(entrypoint, ["twistd", "-n", "--pidfile=", "medichat"])
        options = Options()
        options.parseOptions(json.loads(instructions["CMD"]))
        self.assertEqual(options["listen"], ["tcp:8080"])


class DeployDocTests(SynchronousTestCase):
    """
    docs/deploy.md shows each contrib file as it is.
    """

    def test_files_shown_whole(self) -> None:
        """Each fenced block named after a contrib file is that file, character for character."""
        doc = _read(DEPLOY_DOC)
        blocks = dict(re.findall(r"<!-- contrib/(\S+) -->\n```\w*\n(.*?)```", doc, re.DOTALL))
        self.assertEqual(sorted(blocks), sorted(os.listdir(CONTRIB)))
        for name, shown in blocks.items():
            self.assertEqual(shown, _read(os.path.join(CONTRIB, name)), name)
