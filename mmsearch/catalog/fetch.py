"""Fetching a feed and its images by URL, safely: a feed is input from outside.

Only http and https. Every host is resolved first and refused when any of its addresses is
loopback, private, link-local, a cloud metadata address or otherwise not public, unless its
`host:port` is in the allow-list (`MM_FETCH_ALLOW_HOSTS`); the connection then goes to the
address that was checked (so a second DNS answer cannot swap it), and every redirect is checked
again. Bodies are streamed and cut at a byte limit; 5xx answers and timeouts are retried a few
times with backoff, nothing else. A cache under MM_HOME keeps each URL's last body with its
ETag / Last-Modified, so fetching an unchanged URL again sends a conditional request and
downloads nothing.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
from PIL import Image

from mmsearch.catalog.images import ImageLimits, ImageRejected, decode_image

ALLOW_HOSTS_ENV = "MM_FETCH_ALLOW_HOSTS"
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_FEED_BYTES = 512 * 1024 * 1024
SCHEMES = ("http", "https")
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
# Cloud instance metadata services (AWS, GCP, Azure, OpenStack; AWS's IPv6 one; Alibaba).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

# host -> the addresses it resolves to; injectable so tests check addresses without DNS.
Resolver = Callable[[str, int], list[str]]


class FetchRefused(Exception):
    """A URL that was not fetched: a reason code, the URL and a readable cause."""

    def __init__(self, code: str, url: str, message: str):
        super().__init__(f"{url}: {message}")
        self.code = code
        self.url = url
        self.message = message


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses the system resolver gives for `host`."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise LookupError(f"cannot resolve {host!r} ({error})") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def parse_allow_hosts(text: str | None) -> frozenset[str]:
    """`host:port` entries of a comma-separated list (`127.0.0.1:8080,[::1]:9000`), lowercased."""
    return frozenset(part.strip().lower() for part in (text or "").split(",") if part.strip())


def non_public_reason(address: str) -> str | None:
    """Why an IP address must not be fetched from (loopback, private, ...), or None if public."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6:
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return non_public_reason(str(embedded))
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    for test, name in (
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_private, "a private address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_reserved, "a reserved address"),
    ):
        if test:
            return name
    return None if ip.is_global else "not a public address"


@dataclass(frozen=True)
class Target:
    """A URL that passed the policy, and how to connect to it."""

    url: str
    host: str
    request_url: str  # the URL with the checked address in place of the name
    headers: dict = field(default_factory=dict)
    extensions: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AddressPolicy:
    """Which URLs may be fetched: http(s) to public addresses, or an allow-listed host:port."""

    allow_hosts: frozenset[str] = frozenset()
    resolver: Resolver = system_resolver

    @classmethod
    def from_environment(cls) -> AddressPolicy:
        return cls(parse_allow_hosts(os.environ.get(ALLOW_HOSTS_ENV)))

    def check(self, url: str) -> Target:
        """The target to connect to for `url`, or FetchRefused (code `url_refused`)."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as error:
            raise FetchRefused("url_refused", url, f"not a valid URL ({error})") from None
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            raise FetchRefused(
                "url_refused", url, f"scheme {scheme or 'none'!r} refused; only http and https"
            )
        host = (parts.hostname or "").lower()
        if not host:
            raise FetchRefused("url_refused", url, "the URL names no host")
        port = port or (443 if scheme == "https" else 80)
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if shown in self.allow_hosts:
            return Target(url, host, url)
        try:
            addresses = [host] if _is_address(host) else self.resolver(host, port)
        except LookupError as error:
            raise FetchRefused("fetch_failed", url, str(error)) from None
        if not addresses:
            raise FetchRefused("fetch_failed", url, f"{host!r} resolves to no address")
        for address in addresses:
            reason = non_public_reason(address)
            if reason:
                named = host if host == address else f"{host} ({address})"
                raise FetchRefused(
                    "url_refused",
                    url,
                    f"{named} is {reason}; add {shown} to {ALLOW_HOSTS_ENV} to allow it",
                )
        # Connect to the address just checked; the name still goes in Host and TLS SNI.
        pinned = httpx.URL(url).copy_with(host=addresses[0])
        extensions = {"sni_hostname": host} if scheme == "https" else {}
        return Target(url, host, str(pinned), {"Host": parts.netloc.rsplit("@", 1)[-1]}, extensions)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Fetched:
    """A body fetched from `url` (after redirects, `final_url`); `downloaded` is False when the
    server said it was unchanged (304) and the body came from the cache."""

    url: str
    final_url: str
    data: bytes
    sha256: str
    downloaded: bool
    etag: str | None = None
    last_modified: str | None = None


class FetchCache:
    """The last body of each URL with its ETag / Last-Modified, under one folder (MM_HOME's
    `cache/fetch`). Bodies are stored once by their sha256; entries and bodies are written
    whole by write-then-rename, so concurrent fetches never see half a file."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _entry_path(self, url: str) -> Path:
        return self.root / "urls" / f"{hashlib.sha256(url.encode()).hexdigest()}.json"

    def _blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256[:2] / sha256

    def lookup(self, url: str) -> tuple[dict, bytes] | None:
        """The cached entry and body of `url`, or None."""
        try:
            entry = json.loads(self._entry_path(url).read_text(encoding="utf-8"))
            data = self._blob_path(entry["sha256"]).read_bytes()
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if entry.get("url") != url or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            return None
        return entry, data

    def store(self, fetched: Fetched) -> None:
        if not (fetched.etag or fetched.last_modified):
            return  # nothing to revalidate with: the next fetch downloads anyway
        entry = {
            "url": fetched.url,
            "sha256": fetched.sha256,
            "etag": fetched.etag,
            "last_modified": fetched.last_modified,
        }
        blob = self._blob_path(fetched.sha256)
        if not blob.exists():
            _write_whole(blob, fetched.data)
        _write_whole(self._entry_path(fetched.url), json.dumps(entry).encode())


def _write_whole(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    partial.write_bytes(data)
    partial.replace(path)


def fetch_cache_dir(mm_home: Path) -> Path:
    """Where a home keeps fetched feeds and images."""
    return Path(mm_home) / "cache" / "fetch"


class Fetcher:
    """One kept HTTP client that fetches URLs under an AddressPolicy, with limits and retries.

    Thread-safe: images are fetched concurrently through one Fetcher. Use as a context manager
    or call `close()`.
    """

    def __init__(
        self,
        policy: AddressPolicy | None = None,
        cache: FetchCache | None = None,
        timeout_s: float = 10.0,
        retries: int = 2,
        backoff_s: float = 0.25,
        max_redirects: int = 5,
    ):
        self.policy = policy or AddressPolicy.from_environment()
        self.cache = cache
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_redirects = max_redirects
        # trust_env=False: a proxy from the environment would connect on our behalf, past the
        # address policy.
        self.client = httpx.Client(
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
            headers={"User-Agent": "mmsearch-feed-fetcher"},
        )

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def get(self, url: str, max_bytes: int) -> Fetched:
        """The body of `url` (at most `max_bytes`), or FetchRefused with a code:
        `url_refused` (scheme or address), `too_large`, `fetch_failed` (HTTP error, timeout,
        too many redirects)."""
        cached = self.cache.lookup(url) if self.cache else None
        conditional = {}
        if cached:
            if cached[0].get("etag"):
                conditional["If-None-Match"] = cached[0]["etag"]
            if cached[0].get("last_modified"):
                conditional["If-Modified-Since"] = cached[0]["last_modified"]
        current = url
        for _hop in range(self.max_redirects + 1):
            target = self.policy.check(current)
            status, headers, body = self._get_with_retries(target, conditional, max_bytes)
            if status in REDIRECT_STATUSES:
                location = headers.get("location")
                if not location:
                    raise FetchRefused("fetch_failed", url, f"HTTP {status} without a Location")
                current = urljoin(current, location)
                continue
            if status == 304 and cached:
                entry, data = cached
                return Fetched(
                    url,
                    current,
                    data,
                    entry["sha256"],
                    False,
                    entry["etag"],
                    entry["last_modified"],
                )
            if not 200 <= status < 300 or body is None:
                where = "" if current == url else f" (redirected to {current})"
                raise FetchRefused("fetch_failed", url, f"HTTP {status}{where}")
            fetched = Fetched(
                url,
                current,
                body,
                hashlib.sha256(body).hexdigest(),
                True,
                headers.get("etag"),
                headers.get("last-modified"),
            )
            if self.cache:
                self.cache.store(fetched)
            return fetched
        raise FetchRefused("fetch_failed", url, f"more than {self.max_redirects} redirects")

    def _get_with_retries(
        self, target: Target, conditional: dict, max_bytes: int
    ) -> tuple[int, httpx.Headers, bytes | None]:
        """One hop: retried on 5xx and timeouts only, with exponential backoff."""
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                status, headers, body = self._get_once(target, conditional, max_bytes)
            except httpx.TimeoutException:
                if last:
                    raise FetchRefused(
                        "fetch_failed",
                        target.url,
                        f"timed out ({self.timeout_s:g} s) {self.retries + 1} times",
                    ) from None
            except httpx.HTTPError as error:
                raise FetchRefused(
                    "fetch_failed", target.url, f"{type(error).__name__}: {error}"
                ) from None
            else:
                if status < 500 or last:
                    return status, headers, body
            time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def _get_once(
        self, target: Target, conditional: dict, max_bytes: int
    ) -> tuple[int, httpx.Headers, bytes | None]:
        deadline = time.monotonic() + 3 * self.timeout_s
        with self.client.stream(
            "GET",
            target.request_url,
            headers={**target.headers, **conditional},
            extensions=target.extensions,
        ) as response:
            status = response.status_code
            if not 200 <= status < 300:
                return status, response.headers, None
            announced = response.headers.get("content-length", "")
            if announced.isdigit() and int(announced) > max_bytes:
                raise FetchRefused(
                    "too_large",
                    target.url,
                    f"{int(announced):,} bytes announced; the limit is {max_bytes:,}",
                )
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise FetchRefused(
                        "too_large",
                        target.url,
                        f"more than {max_bytes:,} bytes; stopped while downloading",
                    )
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout("the body took too long to arrive")
                chunks.append(chunk)
            return status, response.headers, b"".join(chunks)


@dataclass(frozen=True)
class FetchedImage:
    """An image that was fetched and decodes: its bytes, their sha256 and the image format."""

    url: str
    data: bytes
    sha256: str
    format: str
    downloaded: bool


# A fetch refusal as an image reason code (the cleaning stage's vocabulary).
IMAGE_CODES = {
    "url_refused": "image_url_refused",
    "fetch_failed": "image_fetch_failed",
    "too_large": "image_too_large",
}


def fetch_image(
    fetcher: Fetcher, url: str, limits: ImageLimits, max_bytes: int = MAX_IMAGE_BYTES
) -> FetchedImage:
    """Fetch one image and check it by decoding it (never by its Content-Type), or
    FetchRefused with an image reason code (`image_url_refused`, `image_fetch_failed`,
    `image_too_large`, or the decoder's: `image_unsupported_type`, `image_unreadable`, ...)."""
    try:
        fetched = fetcher.get(url, max_bytes)
    except FetchRefused as refused:
        raise FetchRefused(IMAGE_CODES[refused.code], url, refused.message) from None
    try:
        decode_image(fetched.data, limits)
        image_format = _format_of(fetched.data)
    except ImageRejected as rejected:
        raise FetchRefused(rejected.code, url, rejected.message) from None
    return FetchedImage(url, fetched.data, fetched.sha256, image_format, fetched.downloaded)


def _format_of(data: bytes) -> str:
    """The file extension for image bytes that decoded (read from the header only)."""
    with Image.open(io.BytesIO(data)) as picture:
        return (picture.format or "img").lower()


def fetch_images(
    fetcher: Fetcher,
    urls: Iterable[str],
    limits: ImageLimits = ImageLimits(),
    max_bytes: int = MAX_IMAGE_BYTES,
    workers: int = 8,
) -> dict[str, FetchedImage | FetchRefused]:
    """Each distinct URL -> its FetchedImage or the FetchRefused saying why not, fetched
    concurrently through the one client."""
    distinct = list(dict.fromkeys(u for u in urls if u))

    def one(url: str) -> FetchedImage | FetchRefused:
        try:
            return fetch_image(fetcher, url, limits, max_bytes)
        except FetchRefused as refused:
            return refused

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return dict(zip(distinct, pool.map(one, distinct), strict=True))
