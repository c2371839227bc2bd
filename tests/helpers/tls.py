"""TLS credentials for test clients, as a user gives them to Dask."""

from __future__ import annotations

from pathlib import Path

from distributed.security import Security


def client_tls_settings(security: Security, folder: Path) -> dict[str, str]:
    """Dask configuration naming a client's certificate files (CA, certificate, key), written
    into ``folder``, as a user sets it (YAML or ``DASK_*`` environment variables)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"ca-file": security.tls_ca_file, "client.cert": security.tls_client_cert,
             "client.key": security.tls_client_key}
    settings = {}
    for key, pem in files.items():
        path = folder / key.replace(".", "-")
        path.write_text(pem)
        settings[f"distributed.comm.tls.{key}"] = str(path)
    return settings
