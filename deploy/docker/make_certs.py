"""Throw-away TLS credentials for Compose: one self-signed certificate (its own CA) and its key.

The ``certs`` service of ``compose.yaml`` runs this once into the ``tls`` volume; the scheduler,
the workers and the driver then read ``ca.pem``, ``cert.pem`` and ``key.pem`` from it (Dask's
``DASK_DISTRIBUTED__COMM__TLS__*`` settings). Existing files are kept, so restarting the project
keeps its certificates; delete the volume (``docker compose down -v``) for new ones.

Usage: ``python make_certs.py DIR`` (needs ``distributed`` and ``cryptography``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: The files written, and which part of the credentials each holds.
FILES = {"ca.pem": "tls_ca_file", "cert.pem": "tls_scheduler_cert", "key.pem": "tls_scheduler_key"}


def make_certs(folder: str | Path) -> list[Path]:
    """Write ``ca.pem``, ``cert.pem`` and ``key.pem`` into ``folder`` unless all three exist.

    They are ``distributed``'s ``Security.temporary()``: one self-signed certificate, which is
    also the CA (so ``ca.pem`` and ``cert.pem`` hold the same text), serves the scheduler, the
    workers and the client; Dask checks that each side holds a certificate the CA signed, not host
    names. The key is readable by its owner only.

    Returns
    -------
    list of Path
        The three files.
    """
    from distributed.security import Security

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in FILES]
    if all(path.exists() for path in paths):
        return paths
    security = Security.temporary()  # the CA and one certificate/key pair, as PEM text
    for path, attribute in zip(paths, FILES.values(), strict=True):
        temporary = path.with_name(f".{path.name}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(getattr(security, attribute))
        if path.name != "key.pem":
            temporary.chmod(0o644)
        temporary.replace(path)
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python make_certs.py DIR")
    for written in make_certs(sys.argv[1]):
        print(written)
