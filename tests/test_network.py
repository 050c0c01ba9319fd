"""Behind a company's network: a forward proxy (HTTPS_PROXY/HTTP_PROXY/NO_PROXY, --proxy, its
user and password), a CA of the company's (--ca-bundle, SSL_CERT_FILE), a name that does not
resolve. The proxy is a real one started by the test (`tests/forward_proxy.py`); the HTTPS
server's certificate comes from a CA the test makes (trustme)."""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.forward_proxy import ForwardProxy
from tests.helpers import (
    API_KEY,
    FAST,
    KB,
    TIMEOUT,
    child_env,
    command,
    enqueue,
    invoke,
    make_flat_files,
    one_line_error,
    rows,
    service,
)
from uploader.exitcodes import ExitCode
from uploader.localserver import MaiAgentServer

FILES = 20
PROXY_VARIABLES = (
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
)
NO_PROXIES: dict[str, str | None] = dict.fromkeys(PROXY_VARIABLES)


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy().run_in_thread() as started:
        yield started


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA(organization_name="Example Corp TLS inspection")


@pytest.fixture
def tls_server(ca: trustme.CA) -> Iterator[MaiAgentServer]:
    """The local server over https, with a certificate for 127.0.0.1 from the test's CA."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    with MaiAgentServer(ssl_context=server_context).run_in_thread() as server:
        yield server


@pytest.fixture
def ca_file(tmp_path: Path, ca: trustme.CA) -> Path:
    path = tmp_path / "corp-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def _run(db: Path, server: MaiAgentServer, *extra: str, env: dict[str, Any]) -> Any:
    return invoke(db, "run", *service(server), *FAST, *TIMEOUT, "--workers", "4", *extra, env=env)


def _queued(tmp_path: Path) -> Path:
    make_flat_files(tmp_path / "data", FILES)
    db = tmp_path / "q.db"
    enqueue(db, tmp_path / "data")
    return db


def _relayed(proxy: ForwardProxy, path_part: str) -> int:
    return sum(1 for _method, target in proxy.requests() if path_part in target)


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
def test_every_request_of_a_run_goes_through_the_proxy_the_environment_names(
    tmp_path: Path, maiagent: MaiAgentServer, proxy: ForwardProxy, variable: str
) -> None:
    db = _queued(tmp_path)

    ran = _run(db, maiagent, env={**NO_PROXIES, variable: proxy.url})

    assert ran.exit_code == 0, ran.output
    assert {r["state"] for r in rows(db)} == {"done"}
    total = maiagent.stats()["total"]
    assert len(proxy.requests()) == total > 2 * FILES  # presign, S3 and register at least
    assert _relayed(proxy, "/s3/") == FILES  # the S3 upload too, not only the API
    assert _relayed(proxy, "/upload-presigned-url/") == FILES


def test_proxy_option_sends_every_request_through_it(
    tmp_path: Path, maiagent: MaiAgentServer, proxy: ForwardProxy
) -> None:
    db = _queued(tmp_path)

    ran = _run(db, maiagent, "--proxy", f"127.0.0.1:{proxy.port}", env=NO_PROXIES)

    assert ran.exit_code == 0, ran.output
    assert len(proxy.requests()) == maiagent.stats()["total"]
    assert _relayed(proxy, "/s3/") == FILES


def test_no_proxy_leaves_the_hosts_it_names_direct(
    tmp_path: Path, maiagent: MaiAgentServer, proxy: ForwardProxy
) -> None:
    """The S3 endpoint on another host name ("localhost"), which NO_PROXY lists: the uploads
    go direct, the API calls through the proxy."""
    maiagent.s3_origin = f"http://localhost:{maiagent.base_url.split(':')[2].split('/')[0]}"
    db = _queued(tmp_path)

    ran = _run(db, maiagent, env={**NO_PROXIES, "HTTP_PROXY": proxy.url, "NO_PROXY": "localhost"})

    assert ran.exit_code == 0, ran.output
    assert maiagent.stats()["s3"] == FILES
    assert _relayed(proxy, "/s3/") == 0
    assert _relayed(proxy, "/upload-presigned-url/") == FILES


def test_proxy_credentials_are_sent_and_never_shown(
    tmp_path: Path, maiagent: MaiAgentServer
) -> None:
    password = "s3cr3t p@ss"
    with ForwardProxy("corp", password).run_in_thread() as proxy:
        db = _queued(tmp_path)
        without = invoke(db, "kbs", *service(maiagent), env={**NO_PROXIES, "HTTP_PROXY": proxy.url})
        url = f"http://corp:s3cr3t%20p%40ss@127.0.0.1:{proxy.port}"
        ran = invoke(db, "-v", "run", *service(maiagent), *FAST, "--proxy", url, env=NO_PROXIES)

    assert without.exit_code == ExitCode.REFUSED, without.output
    (line,) = without.stderr.strip().splitlines()
    assert "proxy" in line and "407" in line and "USER:PASSWORD" in line
    assert ran.exit_code == 0, ran.output
    assert len(proxy.requests()) == maiagent.stats()["total"] > 0
    shown = [ran.output, *(p.read_bytes().decode() for p in (tmp_path / "logs").iterdir())]
    assert not any("s3cr3t" in text or "p%40ss" in text for text in shown)
    assert b"s3cr3t" not in db.read_bytes()


def test_a_bad_proxy_is_one_line(tmp_path: Path) -> None:
    error = one_line_error(invoke(tmp_path / "q.db", "kbs", "--proxy", "socks5://u:pw@h:1080"))
    assert "SOCKS" in error and "pw" not in error
    bad_env = invoke(tmp_path / "q.db", "kbs", env={**NO_PROXIES, "HTTPS_PROXY": "ftp://h:21"})
    assert "HTTPS_PROXY" in one_line_error(bad_env)


def test_a_server_signed_by_an_unknown_ca_is_refused_in_one_line_naming_the_ca_option(
    tmp_path: Path, tls_server: MaiAgentServer
) -> None:
    result = invoke(tmp_path / "q.db", "kbs", *service(tls_server), env=NO_PROXIES)

    assert result.exit_code != 0
    (line,) = result.stderr.strip().splitlines()
    assert "Traceback" not in result.output
    assert "not trusted" in line and "--ca-bundle" in line


def test_ca_bundle_trusts_the_company_ca(
    tmp_path: Path, tls_server: MaiAgentServer, ca_file: Path
) -> None:
    result = invoke(
        tmp_path / "q.db", "kbs", *service(tls_server), "--ca-bundle", str(ca_file), env=NO_PROXIES
    )
    assert result.exit_code == 0, result.output
    assert KB in result.stdout


def test_a_run_through_a_connect_proxy_with_the_company_ca(
    tmp_path: Path, tls_server: MaiAgentServer, proxy: ForwardProxy, ca_file: Path
) -> None:
    db = _queued(tmp_path)

    ran = _run(
        db, tls_server, "--ca-bundle", str(ca_file), env={**NO_PROXIES, "HTTPS_PROXY": proxy.url}
    )

    assert ran.exit_code == 0, ran.output
    assert {r["state"] for r in rows(db)} == {"done"}
    tunnels = proxy.requests("CONNECT")
    assert tunnels and {target for _m, target in tunnels} == {tls_server.base_url.split("/")[2]}
    assert len(proxy.requests()) == len(tunnels)  # nothing went around the proxy in clear


def test_ssl_cert_file_trusts_the_company_ca(
    tmp_path: Path, tls_server: MaiAgentServer, ca_file: Path
) -> None:
    """OpenSSL's own variable (a child process: the default context is made at start)."""
    env = child_env({**NO_PROXIES, "SSL_CERT_FILE": str(ca_file)})
    done = subprocess.run(
        command(tmp_path / "q.db", "kbs", *service(tls_server)),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert KB in done.stdout


def test_a_bad_ca_bundle_is_one_line(tmp_path: Path) -> None:
    not_a_cert = tmp_path / "ca.pem"
    not_a_cert.write_text("hello\n")
    error = one_line_error(invoke(tmp_path / "q.db", "kbs", "--ca-bundle", str(not_a_cert)))
    assert "--ca-bundle" in error and "no CA certificate" in error
    missing = invoke(tmp_path / "q.db", "kbs", "--ca-bundle", str(tmp_path / "none.pem"))
    assert "cannot be read" in one_line_error(missing)
    gone = invoke(tmp_path / "q.db", "kbs", env={"SSL_CERT_FILE": str(tmp_path / "none.pem")})
    assert "SSL_CERT_FILE" in one_line_error(gone)


def test_a_der_ca_bundle_as_windows_exports_it_is_read(
    tmp_path: Path, tls_server: MaiAgentServer, ca: trustme.CA
) -> None:
    der = tmp_path / "corp-ca.cer"
    der.write_bytes(ssl.PEM_cert_to_DER_cert(ca.cert_pem.bytes().decode()))
    result = invoke(
        tmp_path / "q.db", "kbs", *service(tls_server), "--ca-bundle", str(der), env=NO_PROXIES
    )
    assert result.exit_code == 0, result.output


def test_a_name_that_does_not_resolve_says_so_and_asks_about_a_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The machine's resolver is replaced by one that knows no name (no query leaves it)."""

    def no_such_name(host: Any, *_args: Any, **_kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)

    result = invoke(
        tmp_path / "q.db",
        "kbs",
        "--base-url",
        "https://api.example.invalid/api/v1/",
        env=NO_PROXIES,
    )

    assert result.exit_code == ExitCode.UNREACHABLE, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: cannot resolve api.example.invalid (name or service not known)")
    assert "proxy" in line and "unknown error" not in line


def test_a_proxy_name_that_does_not_resolve_is_named_as_the_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_such_name(host: Any, *_args: Any, **_kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)

    result = invoke(
        tmp_path / "q.db",
        "kbs",
        "--base-url",
        "https://api.example.invalid/api/v1/",
        "--proxy",
        "http://u:pw@proxy.corp.invalid:3128",
        env=NO_PROXIES,
    )

    assert result.exit_code == ExitCode.UNREACHABLE, result.output
    (line,) = result.stderr.strip().splitlines()
    assert "cannot resolve the proxy's name proxy.corp.invalid" in line
    assert "pw" not in line.replace("pwd", "")


def test_api_key_is_not_sent_to_the_proxy_in_clear_over_https(
    tmp_path: Path, tls_server: MaiAgentServer, proxy: ForwardProxy, ca_file: Path
) -> None:
    """Through a CONNECT tunnel the proxy sees host and port only."""
    result = invoke(
        tmp_path / "q.db",
        "kbs",
        *service(tls_server),
        "--ca-bundle",
        str(ca_file),
        "--proxy",
        proxy.url,
        env=NO_PROXIES,
    )
    assert result.exit_code == 0, result.output
    assert all(API_KEY not in target for _m, target in proxy.requests())
    assert proxy.requests("CONNECT")
