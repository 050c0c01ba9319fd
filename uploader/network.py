"""How this process reaches the network: which proxy a URL goes through, which CAs are trusted.

Company networks put a forward proxy between the PC and the internet, often one that inspects
TLS and re-signs it with the company's own CA. `uploader` then behaves as curl, pip and the
AWS CLI do: `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` (lowercase too; on Windows and macOS the
system's proxy settings when no variable is set) and `NO_PROXY` choose the proxy per URL, for
the API and the S3 upload alike; `--proxy URL` replaces the variables' proxy (NO_PROXY still
applies). `--ca-bundle FILE` adds a CA to the ones the system trusts (OpenSSL's
`SSL_CERT_FILE` works as it does for every OpenSSL program).

The choice is made once per command (`use`, from the CLI's options) and read by every session
the command opens (`current`): one process, one way out, as with the environment variables.
"""

from __future__ import annotations

import base64
import contextvars
import dataclasses
import os
import socket
import ssl
import urllib.request
from typing import NamedTuple
from urllib.parse import unquote, urlsplit, urlunsplit

from .i18n import _

_SCHEMES = ("http", "https")


class NetworkError(ValueError):
    """A --proxy or --ca-bundle (or their variables) that cannot be used: one line."""


@dataclasses.dataclass(frozen=True)
class Proxy:
    """A proxy URL split into what aiohttp is given: the URL without its credentials (so no
    error or log line can carry them) and the header that sends them."""

    url: str
    headers: dict[str, str] | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""


@dataclasses.dataclass(frozen=True)
class Network:
    """What a command was told: `proxy` (--proxy) overrides the environment's; `ca_bundle`
    (--ca-bundle) is trusted beside the system's CAs."""

    proxy: Proxy | None = None
    ca_bundle: str | None = None


_DEFAULT = Network()
_CURRENT: contextvars.ContextVar[Network | None] = contextvars.ContextVar("network", default=None)


def use(network: Network) -> None:
    """This command's choice, for every session it opens from now on."""
    _CURRENT.set(network)


def current() -> Network:
    return _CURRENT.get() or _DEFAULT


def parse_proxy(value: str, source: str) -> Proxy:
    """`value` as a proxy, as curl reads it: no scheme means http://; user:password@ in it
    is sent as Proxy-Authorization and kept out of the URL. Only http and https proxies."""
    text = value.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise NetworkError(
            _("{source}: {value!r} is not a proxy URL").format(source=source, value=redact(value))
        ) from None
    if parts.scheme.lower() not in _SCHEMES or not parts.hostname:
        raise NetworkError(
            _(
                "{source}: {value!r} is not an http:// or https:// proxy (SOCKS proxies are not "
                "supported)"
            ).format(source=source, value=redact(value))
        )
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if port is not None:
        netloc += f":{port}"
    url = urlunsplit((parts.scheme.lower(), netloc, "", "", ""))
    if parts.username is None:
        return Proxy(url)
    pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
    return Proxy(url, {"Proxy-Authorization": "Basic " + base64.b64encode(pair).decode()})


def redact(url: str) -> str:
    """A proxy URL as it may be shown: its password (and user) replaced by ***."""
    head, sep, rest = url.partition("://")
    if not sep:
        head, rest = "", url
    userinfo, at, host = rest.rpartition("@")
    if not at or "/" in userinfo:
        return url
    return f"{head}{sep}***@{host}"


class Route(NamedTuple):
    """What one request is given: aiohttp's `proxy` and `proxy_headers` (sent with a CONNECT)
    and `headers` to add to the request itself (a plain-http request through a proxy carries
    the proxy's credentials in it, which aiohttp adds only from its deprecated `proxy_auth`)."""

    proxy: str | None
    proxy_headers: dict[str, str] | None
    headers: dict[str, str] | None


DIRECT = Route(None, None, None)


class Router:
    """Which proxy each URL goes through, decided once per scheme and host (a run's URLs are
    the API's and S3's: two or three hosts)."""

    def __init__(self, network: Network) -> None:
        self._network = network
        self._chosen: dict[tuple[str, str], Route] = {}

    def route(self, url: str) -> Route:
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        if key not in self._chosen:
            proxy = self._choose(parts.scheme, parts.netloc)
            if proxy is None:
                self._chosen[key] = DIRECT
            elif parts.scheme == "https":
                self._chosen[key] = Route(proxy.url, proxy.headers, None)
            else:
                self._chosen[key] = Route(proxy.url, None, proxy.headers)
        return self._chosen[key]

    def _choose(self, scheme: str, netloc: str) -> Proxy | None:
        host = netloc.rpartition("@")[2]
        if _bypassed(host):
            return None
        if self._network.proxy is not None:
            return self._network.proxy
        found = urllib.request.getproxies()
        value = found.get(scheme) or found.get("all")
        if not value:
            return None
        return parse_proxy(
            value,
            _("the proxy for {scheme} URLs ({variable})").format(
                scheme=scheme, variable=_variable(scheme)
            ),
        )


def _bypassed(host: str) -> bool:
    """NO_PROXY (or the system's exceptions): urllib's reading, as pip's and aiohttp's."""
    try:
        return bool(urllib.request.proxy_bypass(host))
    except (OSError, ValueError):
        return False


def _variable(scheme: str) -> str:
    return "HTTPS_PROXY" if scheme == "https" else "HTTP_PROXY"


def is_proxy_host(host: str) -> bool:
    """Whether `host` is a proxy of this command's (--proxy, or the variables'): a failure
    to reach it is the proxy's, which the message says."""
    chosen = current().proxy
    if chosen is not None:
        return chosen.host == host
    for value in urllib.request.getproxies().values():
        try:
            if parse_proxy(value, "").host == host:
                return True
        except NetworkError:
            continue
    return False


def unresolved(host: str, error: socket.gaierror, proxy: bool) -> str:
    """A name the resolver does not know: on a company network that reaches the internet
    only through a proxy, what the user is missing is the proxy."""
    why = (error.strerror or _("name lookup failed")).lower()
    if proxy:
        return _(
            "cannot resolve the proxy's name {host} ({why}): check --proxy or HTTPS_PROXY"
        ).format(host=host, why=why)
    return _(
        "cannot resolve {host} ({why}): is the name right? If this network reaches the "
        "internet through a proxy, set HTTPS_PROXY or pass --proxy URL"
    ).format(host=host, why=why)


def check_environment() -> None:
    """The variables' proxies parse (a bad one is one line now, not a failure per request)."""
    router = Router(Network())
    for scheme in _SCHEMES:
        router.route(f"{scheme}://example.invalid/")


def check_ca_bundle(path: str) -> None:
    """The file holds at least one CA certificate (PEM, or DER as Windows exports it)."""
    ssl_context(path)


def ssl_context(ca_bundle: str | None) -> ssl.SSLContext | bool:
    """The TLS settings of a session: aiohttp's default (the system's CAs, which honour
    SSL_CERT_FILE) unless a CA bundle is added to them."""
    if ca_bundle is None:
        return True
    context = ssl.create_default_context()
    try:
        with open(ca_bundle, "rb") as file:
            data = file.read()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise NetworkError(
            _("--ca-bundle {path}: cannot be read ({why})").format(path=ca_bundle, why=why.lower())
        ) from None
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            context.load_verify_locations(cadata=data.decode("ascii", "replace"))
        else:
            context.load_verify_locations(cadata=data)
    except (ssl.SSLError, ValueError):
        raise NetworkError(
            _("--ca-bundle {path}: no CA certificate in it (PEM or DER expected)").format(
                path=ca_bundle
            )
        ) from None
    return context


def ssl_cert_file_problem() -> str | None:
    """SSL_CERT_FILE naming a file that is not there makes OpenSSL trust nothing, silently:
    every HTTPS request would then fail with a puzzling certificate error."""
    path = os.environ.get("SSL_CERT_FILE")
    if path and not os.path.isfile(path):
        return _("SSL_CERT_FILE names {path}, which is not a readable file").format(path=path)
    return None
