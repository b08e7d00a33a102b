"""mitmproxy glue for the payload cache: offers point at a local file server, fetched once.

Run (reverse mode in front of the public server, 20 GB of payloads kept on disk)::

    mitmdump -s addons/omaha.py --mode reverse:https://public.update.flatcar-linux.net \\
        --set omaha_cache=/var/cache/omaha --set omaha_cache_size=20G \\
        --set omaha_cache_listen=0.0.0.0:8090

When an upstream offer passes through, its packages are registered in the
:class:`~omaha_proxy.payloads.cache.PayloadCache`, their download starts in the background, and the
offer's codebases are rewritten to the cache's file server
(:class:`~omaha_proxy.servers.cache_files.CacheServer`, started by this addon because mitmproxy
buffers the responses it relays). Everything else of the offer (hashes, sizes, extension
packages, actions) is kept; the flow's action becomes ``cached``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from mitmproxy import ctx, exceptions, http

from omaha_proxy.mitm.common import (
    FeatureAddon,
    action,
    hooks_active,
    is_answered,
    keep_upstream_response,
    omaha_request,
    reason,
    response_body,
    set_action,
)
from omaha_proxy.payloads.cache import PayloadCache, parse_size
from omaha_proxy.payloads.verify import expected_packages
from omaha_proxy.protocol.build import with_codebase
from omaha_proxy.protocol.decode import encode, parse_response
from omaha_proxy.protocol.errors import CodecError, PayloadError
from omaha_proxy.protocol.model import AppResponse, Response
from omaha_proxy.servers.cache_files import (
    CACHE_PREFIX,
    CacheServer,
    cache_codebase,
    parse_base_url,
    parse_listen,
    url_host,
)

logger = logging.getLogger(__name__)

OPTIONS = ("omaha_cache", "omaha_cache_size", "omaha_cache_listen", "omaha_cache_url")
_WILDCARDS = ("", "0.0.0.0", "::")


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """The parsed cache options; ``directory`` None means the cache is off."""

    directory: str | None
    max_bytes: int
    host: str
    port: int
    base_url: str | None


def parse_cache_options(
    directory: str, size: str, listen: str, url: str, proxy_host: str = ""
) -> CacheConfig:
    """Validate the four cache options. Raises ValueError naming the option and valid forms.

    An empty ``listen`` binds the file server where the proxy listens (``proxy_host``, all
    interfaces when empty) on a free port.
    """
    try:
        max_bytes = parse_size(size)
    except ValueError as e:
        raise ValueError(f"omaha_cache_size: {e}") from e
    try:
        host, port = parse_listen(listen, default_host=proxy_host) if listen else (proxy_host, 0)
    except ValueError as e:
        raise ValueError(f"omaha_cache_listen: {e}") from e
    try:
        base_url = parse_base_url(url) if url else None
    except ValueError as e:
        raise ValueError(f"omaha_cache_url: {e}") from e
    return CacheConfig(directory or None, max_bytes, host, port, base_url)


def _where(config: CacheConfig) -> tuple[str | None, str, int]:
    return config.directory, config.host, config.port


def _constant(value: str) -> Callable[[str], str]:
    return lambda _old: value


class OmahaCache(FeatureAddon):
    """Owns ``omaha_cache``, ``omaha_cache_size``, ``omaha_cache_listen`` and
    ``omaha_cache_url``; rewrites offers to the cache and runs its file server."""

    def __init__(self) -> None:
        self.config: CacheConfig | None = None
        self.cache: PayloadCache | None = None
        self.server: CacheServer | None = None
        self._sync_hooks()

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option(
            "omaha_cache", str, "",
            "Directory of the verified payload cache; empty turns the cache off. Offers are "
            "rewritten so machines download each package through the cache, fetched once.",
        )  # fmt: skip
        loader.add_option(
            "omaha_cache_size", str, "20G",
            "Size limit of omaha_cache (bytes, or K/M/G/T); least recently used packages go first.",
        )  # fmt: skip
        loader.add_option(
            "omaha_cache_listen", str, "",
            "HOST:PORT of the cache's file server; empty: the proxy's listen_host, a free port.",
        )  # fmt: skip
        loader.add_option(
            "omaha_cache_url", str, "",
            "Base URL machines use to reach the cache's file server, when it differs from "
            "http://<address the machine reached the proxy at>:<file server port>.",
        )  # fmt: skip

    def _sync_hooks(self) -> None:
        """No cache: mitmproxy need not call the response hook at all. (``responseheaders``
        stays: it streams any cache path passing through, whoever serves it.)"""
        hooks_active(self, self.cache is not None, "response")

    def _configure(self, updated: set[str]) -> None:
        if not updated & {*OPTIONS, "listen_host"}:
            return
        opts = ctx.options
        try:
            config = parse_cache_options(
                opts.omaha_cache, opts.omaha_cache_size, opts.omaha_cache_listen, opts.omaha_cache_url,
                getattr(opts, "listen_host", "") or "",
            )  # fmt: skip
        except ValueError as e:
            raise exceptions.OptionsError(str(e)) from e
        old = self.config
        if old is not None and _where(old) == _where(config):
            # Same directory and server: keep them (offers already sent point at this port).
            if self.cache is not None:
                self.cache.max_bytes = config.max_bytes
            self.config = config
            return
        self._stop()
        if config.directory is not None:
            try:
                self.cache = PayloadCache(config.directory, config.max_bytes)
            except (PayloadError, OSError) as e:
                raise exceptions.OptionsError(f"omaha_cache: {e}") from e
            try:
                self.server = CacheServer(self.cache, host=config.host, port=config.port).start()
            except OSError as e:
                self._stop()
                raise exceptions.OptionsError(
                    f"omaha_cache_listen: cannot listen on {config.host}:{config.port}: {e}"
                ) from e
            logger.info(
                "omaha cache: %s (limit %d bytes), file server on %s", config.directory, config.max_bytes,
                self.server.url,
            )  # fmt: skip
        self.config = config

    def _stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.cache is not None:
            stats = self.cache.stats()
            logger.info(
                "omaha cache: %d hits, %d misses, %d failed downloads; fetched %d bytes, served %d, saved %d",
                stats.hits, stats.misses, stats.failures, stats.bytes_fetched, stats.bytes_served,
                stats.bytes_saved,
            )  # fmt: skip
            self.cache.close()
        self.server, self.cache, self.config = None, None, None

    def done(self) -> None:
        self._stop()

    def base_url(self, flow: http.HTTPFlow) -> str:
        """Where the machine behind ``flow`` reaches the file server (no trailing slash)."""
        assert self.server is not None and self.config is not None
        if self.config.base_url:
            return self.config.base_url
        host = self.config.host
        if host in _WILDCARDS:
            # The address the machine connected to is one it can reach us at.
            host = (flow.client_conn.sockname or ("127.0.0.1",))[0] or "127.0.0.1"
        return f"http://{url_host(host)}:{self.server.port}"

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Stream payloads fetched from the cache *through* the proxy (regular mode, machines
        with ``ALL_PROXY``) instead of buffering them in mitmproxy's memory."""
        if flow.request.method == "GET" and flow.request.path.startswith(CACHE_PREFIX) and flow.response:
            flow.response.stream = True

    def response(self, flow: http.HTTPFlow) -> None:
        """Rewrite an upstream offer's codebases to the cache and start fetching its packages."""
        if self.cache is None or flow.response is None or not flow.live or flow.response.status_code != 200:
            return
        if is_answered(flow) or omaha_request(flow) is None:
            return
        try:
            upstream = parse_response(response_body(flow))
        except CodecError:
            return  # the logger records the parse error; the body is forwarded untouched
        apps, offers = self._rewrite_apps(upstream, self.base_url(flow))
        if not offers:
            return
        rewritten = action(flow) == "rewritten"  # e.g. a pin served a seen offer: say both
        previous = reason(flow) if rewritten else None
        keep_upstream_response(flow)
        flow.response.content = encode(replace(upstream, apps=apps))
        text = "payloads via cache: " + ", ".join(offers)
        set_action(flow, "cached", f"{previous}; {text}" if previous else text)
        flow.comment = f"{flow.comment}; {text}" if rewritten and flow.comment else f"omaha cached: {text}"
        flow.marked = flow.marked or ":package:"

    def _rewrite_apps(self, response: Response, base: str) -> tuple[tuple[AppResponse, ...], list[str]]:
        """Each app's offer registered and pointed at the cache; returns the apps and what
        was rewritten (``<version> (<offer key>)``)."""
        assert self.cache is not None
        apps, done = [], []
        for app in response.apps:
            uc = app.updatecheck
            if uc is None or uc.status != "ok" or not uc.urls or uc.manifest is None:
                apps.append(app)
                continue
            if len(uc.manifests) > 1:  # floor manifests reuse package names: not cacheable by name
                logger.info("omaha cache: leaving a %d-manifest offer untouched", len(uc.manifests))
                apps.append(app)
                continue
            expected = expected_packages(uc.manifest)
            codebases = [u.codebase for u in uc.urls if u.codebase]
            if not expected or not codebases:
                apps.append(app)
                continue
            key = self.cache.register_offer(uc.manifest.version, codebases, expected)
            self.cache.prefetch(key)
            new = cache_codebase(base, key)
            apps.append(with_codebase(replace(response, apps=(app,)), _constant(new)).apps[0])
            done.append(f"{uc.manifest.version} ({key})")
        return tuple(apps), done
