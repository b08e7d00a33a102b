"""The OmahaCache addon: offers rewritten to the cache's file server, everything else kept."""

from __future__ import annotations

import base64
import hashlib
import urllib.request

import pytest
from mitmproxy import exceptions, http
from mitmproxy.test import taddons, tflow, tutils

from omaha_proxy.client.verdict import update_engine_verdict
from omaha_proxy.mitm.cache import OmahaCache, parse_cache_options
from omaha_proxy.mitm.common import META_UPSTREAM, action, set_action
from omaha_proxy.protocol.build import noupdate_response, offer_response, package_info_from_file
from omaha_proxy.protocol.decode import encode, parse_request, parse_response
from tests.conftest import sample
from tests.support.counting_upstream import CountingUpstream
from tests.support.mitm_logging import no_stale_mitmproxy_handlers  # noqa: F401
from tests.support.payload_files import write_payload

CHECK = sample("flatcar-update_engine-0.4.10__request_01_updatecheck_steady_state.RECONSTRUCTED.xml")
MAIN = "flatcar_production_update.gz"
OEM = "oem-qemu.gz"


@pytest.fixture
def upstream(tmp_path):
    src = tmp_path / "up"
    src.mkdir()
    write_payload(src / MAIN, 200_000, seed=1)
    write_payload(src / OEM, 20_000, seed=2)
    with CountingUpstream({MAIN: src / MAIN, OEM: src / OEM}) as up:
        yield up


def offer_body(up: CountingUpstream) -> bytes:
    infos = [package_info_from_file(up.files[MAIN], MAIN), package_info_from_file(up.files[OEM], OEM)]
    return encode(
        offer_response(parse_request(CHECK), version="4152.2.0", codebase=up.codebase, packages=infos)
    )


def omaha_flow(body: bytes) -> http.HTTPFlow:
    req = tutils.treq(method=b"POST", path=b"/v1/update/", content=CHECK)
    return tflow.tflow(req=req, resp=tutils.tresp(content=body))


@pytest.mark.parametrize(
    ("size", "listen", "url", "message"),
    [
        ("lots", "", "", "omaha_cache_size"),
        ("20G", "host:port", "", "omaha_cache_listen"),
        ("20G", "", "ftp://x/", "omaha_cache_url"),
    ],
)
def test_bad_cache_options_are_refused_naming_the_option(tmp_path, size, listen, url, message):
    with pytest.raises(ValueError, match=message):
        parse_cache_options(str(tmp_path), size, listen, url)
    addon = OmahaCache()
    with taddons.context(addon) as tctx, pytest.raises(exceptions.OptionsError, match=message):
        tctx.configure(addon, omaha_cache=str(tmp_path / "c"), omaha_cache_size=size,
                       omaha_cache_listen=listen, omaha_cache_url=url)  # fmt: skip


def test_an_offer_is_rewritten_to_the_cache_and_every_package_downloads_verified(tmp_path, upstream):
    addon = OmahaCache()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, omaha_cache=str(tmp_path / "c"), omaha_cache_listen="127.0.0.1:0")
        original = offer_body(upstream)
        flow = omaha_flow(original)
        addon.response(flow)
        assert action(flow) == "cached"
        assert flow.metadata[META_UPSTREAM] == original
        before, after = parse_response(original), parse_response(flow.response.content)
        uc_before, uc_after = before.apps[0].updatecheck, after.apps[0].updatecheck
        assert uc_after.manifests == uc_before.manifests  # hashes, sizes, extension packages, actions
        (url,) = uc_after.urls
        assert url.codebase.startswith(addon.server.url + "/omaha-proxy/cache/") and url.codebase.endswith(
            "/"
        )
        verdict = update_engine_verdict(flow.response.content)
        assert verdict.kind == "update" and verdict.disable_payload_backoff
        with urllib.request.urlopen(verdict.urls[0], timeout=10) as r:
            payload = r.read()
        assert len(payload) == verdict.size
        assert base64.b64encode(hashlib.sha256(payload).digest()).decode() == verdict.sha256_b64
        with urllib.request.urlopen(url.codebase + OEM, timeout=10) as r:
            assert r.read() == upstream.files[OEM].read_bytes()
        assert upstream.gets == {MAIN: 1, OEM: 1}


def test_noupdate_answers_and_synthetic_answers_are_left_alone(tmp_path, upstream):
    addon = OmahaCache()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, omaha_cache=str(tmp_path / "c"), omaha_cache_listen="127.0.0.1:0")
        noupdate = encode(noupdate_response(parse_request(CHECK)))
        flow = omaha_flow(noupdate)
        addon.response(flow)
        assert action(flow) == "forwarded" and flow.response.content == noupdate
        replayed = omaha_flow(offer_body(upstream))
        set_action(replayed, "replayed", "from a recording")
        addon.response(replayed)
        assert action(replayed) == "replayed" and replayed.response.content == offer_body(upstream)
    assert upstream.gets == {}


def test_without_a_cache_directory_offers_pass_untouched(upstream):
    addon = OmahaCache()
    with taddons.context(addon):
        flow = omaha_flow(offer_body(upstream))
        addon.response(flow)
        assert action(flow) == "forwarded" and flow.response.content == offer_body(upstream)


def test_a_wildcard_listen_points_machines_at_the_address_they_reached_the_proxy_at(tmp_path, upstream):
    addon = OmahaCache()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, omaha_cache=str(tmp_path / "c"), omaha_cache_listen="0.0.0.0:0")
        flow = omaha_flow(offer_body(upstream))
        flow.client_conn.sockname = ("10.1.2.3", 8080)
        addon.response(flow)
        codebase = parse_response(flow.response.content).apps[0].updatecheck.urls[0].codebase
        assert codebase.startswith(f"http://10.1.2.3:{addon.server.port}/omaha-proxy/cache/")
        tctx.configure(addon, omaha_cache_url="https://cache.example.net/base/")
        flow = omaha_flow(offer_body(upstream))
        addon.response(flow)
        codebase = parse_response(flow.response.content).apps[0].updatecheck.urls[0].codebase
        assert codebase.startswith("https://cache.example.net/base/omaha-proxy/cache/")


def test_changing_the_size_limit_keeps_the_file_server(tmp_path):
    addon = OmahaCache()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, omaha_cache=str(tmp_path / "c"), omaha_cache_listen="127.0.0.1:0")
        port = addon.server.port
        tctx.configure(addon, omaha_cache_size="1G")
        assert addon.server.port == port and addon.cache.max_bytes == 1 << 30
        tctx.configure(addon, omaha_cache="")
        assert addon.server is None and addon.cache is None


def test_payload_downloads_through_the_proxy_are_streamed_not_buffered():
    addon = OmahaCache()
    get = tflow.tflow(
        req=tutils.treq(method=b"GET", path=b"/omaha-proxy/cache/abc/flatcar_production_update.gz")
    )
    get.response = tutils.tresp()
    addon.responseheaders(get)
    assert get.response.stream is True
    other = tflow.tflow(req=tutils.treq(method=b"GET", path=b"/elsewhere"), resp=True)
    addon.responseheaders(other)
    assert not other.response.stream


def test_an_offer_a_pin_rewrote_is_cached_and_both_reasons_are_kept(tmp_path, upstream):
    addon = OmahaCache()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, omaha_cache=str(tmp_path / "c"), omaha_cache_listen="127.0.0.1:0")
        flow = omaha_flow(offer_body(upstream))
        set_action(flow, "rewritten", "pinned stable=4152.2.0")
        flow.comment = "omaha rewritten: pinned stable=4152.2.0"
        addon.response(flow)
        assert action(flow) == "cached"
        assert flow.metadata["omaha_reason"].startswith(
            "pinned stable=4152.2.0; payloads via cache: 4152.2.0 ("
        )
        assert flow.comment.startswith("omaha rewritten: pinned stable=4152.2.0; payloads via cache")
        assert flow.marked == ":package:"
