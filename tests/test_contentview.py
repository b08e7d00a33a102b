"""The Omaha contentview: wins for Omaha bodies, decodes them readably, never raises on junk."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mitmproxy import contentviews, http
from mitmproxy.contentviews import Metadata
from mitmproxy.test import taddons, tflow, tutils

from omaha_proxy.mitm.contentview import OmahaContentview
from tests.conftest import DATA, sample

VIEW = OmahaContentview()
XML = Metadata(content_type="text/xml")
# Every whole document (the MALFORMED ones are not XML, xmlPkg is a lone <Package> fragment).
OMAHA_SAMPLES = sorted(
    p.name for p in DATA.glob("*.xml") if "MALFORMED" not in p.name and "xmlPkg" not in p.name
)


@pytest.mark.parametrize("name", OMAHA_SAMPLES)
def test_every_omaha_sample_is_claimed_and_prettified(name: str) -> None:
    data = sample(name)
    assert VIEW.render_priority(data, XML) == 2
    text = VIEW.prettify(data, XML)
    assert text.startswith("Omaha ") and "<?xml" in text


@pytest.mark.parametrize(
    "data",
    [b"", b"<html><body>hi</body></html>", b'{"a": 1}', b"\x00\xff\xfe", b"<requestx/>", b"<?xml"],
)
def test_other_bodies_are_left_to_other_views(data: bytes) -> None:
    assert VIEW.render_priority(data, XML) == -1


@given(st.binary(max_size=300))
def test_render_priority_never_raises(data: bytes) -> None:
    assert VIEW.render_priority(data, Metadata()) in (2, -1)
    assert VIEW.render_priority(b"<request " + data, Metadata()) in (2, -1)


def test_request_summary_names_machine_version_track_and_error() -> None:
    text = VIEW.prettify(
        sample(
            "flatcar-update_engine-0.4.10__request_09_event_error_hash_mismatch_nonprod_server.RECONSTRUCTED.xml"
        ),
        XML,
    )
    summary = text.split("\n\n")[0]
    assert "id=5d2b0c9e8f7a4b1c9e3d6f8a0b2c4d6e" in summary and "(Flatcar)" in summary
    assert "version=4081.2.0  track=stable" in summary
    assert "asks        event" in summary
    assert "PayloadHashMismatch (10) + non-production-server" in summary


def test_response_summary_lists_offer_packages_and_the_clients_verdict() -> None:
    summary = VIEW.prettify(sample("ue-rs__omaha-response-example.xml"), XML).split("\n\n")[0]
    assert "manifest    version=3732.0.0" in summary
    assert "name=oem-azure.gz  size=40897503  required=false" in summary
    assert "DisablePayloadBackoff=true" in summary
    assert "update_engine 0.4.10 would see: update to 3732.0.0" in summary


def test_a_broken_omaha_body_shows_its_error_above_the_raw_text() -> None:
    broken = b'<request protocol="3.0"><app machinealias="a"b"></app></request>'
    text = VIEW.prettify(broken, XML)
    assert text.startswith("Omaha request that does not decode: not well-formed XML")
    assert text.endswith(broken.decode())


def test_auto_mode_picks_omaha_over_xml_for_a_real_flow() -> None:
    body = sample("flatcar-update_engine-0.4.10__request_01_updatecheck_steady_state.RECONSTRUCTED.xml")
    req = tutils.treq(method=b"POST", content=body, headers=http.Headers(content_type="text/xml"))
    flow = tflow.tflow(req=req, resp=http.Response.make(200, b"<html></html>", {"Content-Type": "text/html"}))
    with taddons.context():
        result = contentviews.prettify_message(flow.request, flow)
        assert result.view_name == "Omaha"
        assert "updatecheck" in result.text
        assert contentviews.prettify_message(flow.response, flow).view_name != "Omaha"
