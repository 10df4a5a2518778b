"""Extra roots the capture browser trusts for TLS: an organisation's own CA, or a TLS-inspecting proxy's.

Chromium on Linux trusts its built-in root store plus the NSS database in `$HOME/.pki/nssdb`. A capture's
browsers run with a private, empty `$HOME`, so by default they trust only the built-in roots, whatever the
machine's user has installed. `WZ_CAPTURE_CA_FILE` names the extra roots explicitly; each one is written into
that private NSS database and recorded in the provenance, so a court sees exactly what the browser trusted.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from evidence import ComponentMissing, ConfigurationError

NSSDB = Path(".pki") / "nssdb"
_NO_CERTUTIL = "certutil (Debian package libnss3-tools) is needed for WZ_CAPTURE_CA_FILE; run ./scripts/setup"


def load_extra_roots(bundle: Path, certutil: str = "certutil") -> tuple[x509.Certificate, ...]:
    """The CA certificates in a PEM bundle; a clear error if it cannot be read, holds none, or certutil (which
    installs them) is missing: all found before anything starts."""
    if shutil.which(certutil) is None:
        raise ComponentMissing(_NO_CERTUTIL)
    try:
        data = bundle.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read WZ_CAPTURE_CA_FILE {bundle}: {exc}") from exc
    try:
        roots = tuple(x509.load_pem_x509_certificates(data))
    except ValueError as exc:
        raise ConfigurationError(f"WZ_CAPTURE_CA_FILE {bundle} holds no PEM certificate ({exc})") from exc
    for root in roots:
        try:
            is_ca = root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise ConfigurationError(
                f"WZ_CAPTURE_CA_FILE {bundle}: {root.subject.rfc4514_string()} is not a CA certificate; "
                "list only the roots the capture browser should trust"
            )
    return roots


def describe(root: x509.Certificate) -> str:
    """How a root is named in the provenance: subject and SHA-256 fingerprint."""
    return f"{root.subject.rfc4514_string()} (SHA-256 {root.fingerprint(hashes.SHA256()).hex(':').upper()})"


def install_browser_roots(home: Path, roots: tuple[x509.Certificate, ...], certutil: str = "certutil") -> None:
    """Write `roots` into the NSS database Chromium reads under `home`, trusted for TLS servers only."""
    if not roots:
        return
    program = shutil.which(certutil)
    if program is None:
        raise ComponentMissing(_NO_CERTUTIL)
    database = home / NSSDB
    database.mkdir(parents=True, exist_ok=True)
    _certutil(program, "-N", "--empty-password", "-d", f"sql:{database}")
    for index, root in enumerate(roots):
        # "C,,": a CA for TLS servers; not for e-mail or code signing.
        _certutil(program, "-A", "-d", f"sql:{database}", "-n", f"wangzheng-extra-root-{index}", "-t", "C,,",
                  stdin=root.public_bytes(Encoding.DER))


def _certutil(program: str, *args: str, stdin: bytes | None = None) -> None:
    result = subprocess.run([program, *args], input=stdin, capture_output=True, timeout=30, check=False)
    if result.returncode != 0:
        said = result.stderr.decode("utf-8", "replace").strip() or result.stdout.decode("utf-8", "replace").strip()
        raise ComponentMissing(f"certutil {args[0]} failed (exit {result.returncode}): {said}")
