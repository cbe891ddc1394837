"""A TLS scheduler refuses clients from ITS side: a client that trusts the cluster's CA (so it
accepts the scheduler) but presents no certificate, or a certificate from a foreign CA.

tests/test_cluster.py shows the stranger's side (a client that does not trust the scheduler gives
up by itself); here the client is satisfied with the scheduler, and the TLS alert that ends the
connection comes from the scheduler.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
from distributed import Client
from distributed.security import Security
from test_cluster import RealCluster, _make_certificates

pytestmark = pytest.mark.slow


def _attempt(address: str, ca: Path, cert: Path | None = None, key: Path | None = None) -> str:
    """Connect to the scheduler with a client that trusts `ca`; return how the connection ended:
    'accepted' (nothing came back in 2 s: the scheduler waits for the Dask handshake) or the
    scheduler's TLS alert. Fails the test if the client itself refused the scheduler."""
    host, port = address.removeprefix("tls://").rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca))
    if cert:
        context.load_cert_chain(str(cert), str(key))
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        try:
            conn = context.wrap_socket(raw, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:  # the client's own check: not what we test
            pytest.fail(f"the client did not trust the scheduler: {exc}")
        except ssl.SSLError as exc:  # TLS 1.2: the scheduler's alert ends the handshake
            return exc.reason or str(exc)
        with conn:
            assert conn.getpeercert()["subject"] == ((("commonName", "127.0.0.1"),),)
            conn.settimeout(2)
            try:  # TLS 1.3: the handshake ends on the client first; the scheduler's verdict follows
                return "closed" if conn.recv(1) == b"" else "accepted"
            except TimeoutError:
                return "accepted"
            except ssl.SSLError as exc:
                return exc.reason or str(exc)


def test_tls_scheduler_refuses_clients_without_or_with_a_foreign_certificate(tmp_path: Path):
    ca, cert, key = _make_certificates(tmp_path)
    flags = ["--tls-ca-file", str(ca), "--tls-cert", str(cert), "--tls-key", str(key)]
    security = Security(tls_ca_file=str(ca), tls_client_cert=str(cert), tls_client_key=str(key),
                        require_encryption=True)
    scheduler = RealCluster(workers=1, tls=flags, security=security)  # the worker: trusted
    try:
        foreign = tmp_path / "foreign"
        foreign.mkdir()
        # signed by another CA key (one that even bears the cluster CA's name, as a forger's would)
        _, f_cert, f_key = _make_certificates(foreign)

        assert _attempt(scheduler.address, ca, cert, key) == "accepted"  # the control
        assert _attempt(scheduler.address, ca) in ("TLSV13_ALERT_CERTIFICATE_REQUIRED",
                                                   "SSLV3_ALERT_HANDSHAKE_FAILURE")
        assert _attempt(scheduler.address, ca, f_cert, f_key) in ("TLSV1_ALERT_DECRYPT_ERROR",
                                                                  "TLSV1_ALERT_UNKNOWN_CA")

        # a Dask client with the foreign certificate: it accepts the scheduler, is refused
        foreign_client = Security(tls_ca_file=str(ca), tls_client_cert=str(f_cert),
                                  tls_client_key=str(f_key), require_encryption=True)
        with pytest.raises((OSError, TimeoutError)):
            Client(scheduler.address, security=foreign_client, timeout="5s")
        with Client(scheduler.address, security=security, timeout="30s") as client:
            assert client.scheduler_info()["address"] == scheduler.address
    finally:
        scheduler.close()
