"""The builders make responses update_engine accepts as meant, in Nebraska's shape."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from omaha_proxy import (
    encode,
    noupdate_response,
    offer_response,
    package_info_from_bytes,
    package_info_from_file,
    parse_request,
    parse_response,
    update_engine_verdict,
    with_codebase,
    with_noupdate,
)
from omaha_proxy.protocol.build import retarget_offer
from tests.conftest import sample

CHECK = "flatcar-update_engine-0.4.10__request_01_updatecheck_steady_state.RECONSTRUCTED.xml"


def test_package_info_matches_go_omaha_test_vectors(tmp_path: Path) -> None:
    empty = package_info_from_bytes(b"", "e")
    assert (empty.sha1_b64, empty.sha256_b64) == (
        "2jmj7l5rSw0yVb/vlWAYkK/YBwk=",
        "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
    )
    path = tmp_path / "testing.gz"
    path.write_bytes(b"testing\n")
    info = package_info_from_file(path)
    assert (info.name, info.size) == ("testing.gz", 8)
    assert (info.sha1_b64, info.sha256_b64) == (
        "mAFznarkTsUpPU4fU9P00tQm2Rw=",
        "EqYfThc/s6EcBdZHH3Ryj3YjG0pfzZZnzvOvh6OuTcI=",
    )
    assert info.sha256_hex == hashlib.sha256(b"testing\n").hexdigest()
    assert base64.b64decode(info.sha256_b64).hex() == info.sha256_hex


def test_noupdate_echoes_appid_and_acks_like_nebraska() -> None:
    req = parse_request(sample(CHECK))
    data = encode(noupdate_response(req, server="nebraska"))
    expected = sample("nebraska-shape__updatecheck_noupdate.GENERATED.xml")
    assert parse_response(data) == parse_response(expected)
    assert update_engine_verdict(data).kind == "noupdate"


@pytest.mark.parametrize(
    ("request_name", "ack_sample"),
    [
        (
            "flatcar-update_engine-0.4.10__request_06_event_download_started.RECONSTRUCTED.xml",
            "nebraska-shape__event_ack.GENERATED.xml",
        ),
        (
            "flatcar-update_engine-0.4.10__request_11_ping_only_waiting_for_reboot.RECONSTRUCTED.xml",
            "nebraska-shape__ping_ack.GENERATED.xml",
        ),
    ],
)
def test_acks_have_nebraskas_shape(request_name: str, ack_sample: str) -> None:
    req = parse_request(sample(request_name))
    assert parse_response(encode(noupdate_response(req, server="nebraska"))) == parse_response(
        sample(ack_sample)
    )


def test_offer_carries_everything_update_engine_and_ue_rs_read() -> None:
    req = parse_request(sample(CHECK))
    main = package_info_from_bytes(b"payload" * 100, "flatcar_production_update.gz")
    oem = package_info_from_bytes(b"oem", "oem-qemu.gz")
    resp = offer_response(
        req, version="4152.2.0", codebase="http://127.0.0.1:8000/packages", packages=[main, oem]
    )
    data = encode(resp)
    verdict = update_engine_verdict(data)
    assert verdict.kind == "update"
    assert verdict.urls == ("http://127.0.0.1:8000/packages/flatcar_production_update.gz",)
    assert (verdict.size, verdict.sha256_b64, verdict.disable_payload_backoff) == (700, main.sha256_b64, True)
    manifest = parse_response(data).apps[0].updatecheck.manifest  # type: ignore[union-attr]
    assert manifest is not None and manifest.packages is not None
    assert manifest.packages[1].hash_sha256 == oem.sha256_hex
    assert manifest.packages[1].required == "false"
    assert resp.apps[0].ping is not None and len(resp.apps[0].events) == 1


def test_offer_without_packages_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one package"):
        offer_response(parse_request(sample(CHECK)), version="1", codebase="http://x/", packages=[])


def test_with_noupdate_keeps_everything_but_the_offer() -> None:
    resp = parse_response(sample("ue-rs__omaha-response-example.xml"))
    blocked = with_noupdate(resp)
    assert update_engine_verdict(blocked).kind == "noupdate"
    assert blocked.apps[0].ping == resp.apps[0].ping
    assert blocked.apps[0].events == resp.apps[0].events
    assert blocked.server == "nebraska"


def test_with_codebase_changes_only_urls() -> None:
    resp = parse_response(sample("ue-rs__omaha-response-example.xml"))
    moved = with_codebase(resp, lambda c: "http://proxy:8080/cache/")
    verdict = update_engine_verdict(moved)
    assert verdict.urls == ("http://proxy:8080/cache/flatcar_production_update.gz",)
    assert moved.apps[0].updatecheck.manifests == resp.apps[0].updatecheck.manifests  # type: ignore[union-attr]


def test_retarget_replays_a_seen_offer_for_another_request() -> None:
    offer = parse_response(sample("ue-rs__omaha-response-example.xml"))
    req = parse_request(sample(CHECK))
    again = retarget_offer(offer, req)
    assert again.apps[0].appid == req.apps[0].appid
    assert again.apps[0].updatecheck == offer.apps[0].updatecheck
    assert update_engine_verdict(again).version == "3732.0.0"
