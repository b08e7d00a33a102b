"""update_engine_verdict against the outcomes update_engine's own unit tests expect."""

from __future__ import annotations

import pytest

from omaha_proxy import parse_response, update_engine_verdict
from tests.conftest import sample

# Expected client outcomes, from omaha-samples/README.md (update_engine unit tests).
UNIT_TESTS = [
    ("flatcar-update_engine__unittest_GetNoUpdateResponse.DERIVED.xml", "noupdate", None),
    ("flatcar-update_engine__unittest_ValidUpdateTest_response.DERIVED.xml", "update", None),
    ("flatcar-update_engine__unittest_MissingStatusTest_response.DERIVED.xml", "error", 34),
    ("flatcar-update_engine__unittest_InvalidStatusTest_response.DERIVED.xml", "error", 34),
    ("flatcar-update_engine__unittest_MissingNodesetTest_response.DERIVED.xml", "error", 34),
    ("flatcar-update_engine__unittest_MissingFieldTest_response.DERIVED.xml", "update", None),
    ("flatcar-update_engine__unittest_ConcatUrlSlashTest_response.DERIVED.xml", "update", None),
    ("flatcar-update_engine__unittest_NoElapsedSecondsTest_response.DERIVED.xml", "noupdate", None),
    ("flatcar-update_engine__unittest_BadElapsedSecondsTest_response.DERIVED.xml", "noupdate", None),
    ("nebraska-shape__updatecheck_noupdate.GENERATED.xml", "noupdate", None),
    ("nebraska-shape__updatecheck_update_ok.GENERATED.xml", "update", None),
    ("nebraska-shape__updatecheck_error_updatesDisabled.GENERATED.xml", "error", 34),
    ("nebraska-shape__unknown_app.GENERATED.xml", "error", 34),
    ("ue-rs__omaha-response-example.xml", "update", None),
    ("go-omaha__fixtures_update-engine_no-update_response.MALFORMED.xml", "error", 31),
]


@pytest.mark.parametrize(("name", "kind", "code"), UNIT_TESTS)
def test_verdict_matches_update_engine_unit_tests(name: str, kind: str, code: int | None) -> None:
    verdict = update_engine_verdict(sample(name))
    assert (verdict.kind, verdict.error_code) == (kind, code)


def test_valid_update_gives_url_size_and_hash() -> None:
    verdict = update_engine_verdict(
        sample("flatcar-update_engine__unittest_ValidUpdateTest_response.DERIVED.xml")
    )
    assert verdict.urls == ("http://code/base/file.signed",)
    assert (verdict.size, verdict.sha256_b64, verdict.version) == (123, "HASH1234=", "1.2.3.4")


def test_codebase_without_slash_gets_one_like_update_engine() -> None:
    verdict = update_engine_verdict(
        sample("flatcar-update_engine__unittest_ConcatUrlSlashTest_response.DERIVED.xml")
    )
    assert verdict.urls == ("http://concat/url/slash/test/f",)


def test_public_server_offer_keeps_backoff_disabled() -> None:
    verdict = update_engine_verdict(sample("ue-rs__omaha-response-example.xml"))
    assert verdict.disable_payload_backoff is True
    assert verdict.urls[0].endswith("/3732.0.0/flatcar_production_update.gz")


@pytest.mark.parametrize(("status", "code"), [(500, 2500), (503, 2503), (404, 2404)])
def test_http_errors_become_2000_plus_status(status: int, code: int) -> None:
    verdict = update_engine_verdict(
        sample("nebraska-shape__updatecheck_noupdate.GENERATED.xml"), http_status=status
    )
    assert (verdict.kind, verdict.error_code) == ("error", code)


def test_empty_body_is_error_30_and_garbage_31() -> None:
    assert update_engine_verdict(b"").error_code == 30
    assert update_engine_verdict(b"<resp").error_code == 31


def test_well_formed_but_wrong_root_is_34() -> None:
    assert update_engine_verdict(b"<request></request>").error_code == 34
    assert (
        update_engine_verdict(
            b'<response xmlns="urn:x"><app><updatecheck status="noupdate"/></app></response>'
        ).error_code
        == 34
    )


def test_bad_size_is_34_not_an_exception() -> None:
    data = sample("nebraska-shape__updatecheck_update_ok.GENERATED.xml").replace(
        b'size="486539264"', b'size="big"'
    )
    assert update_engine_verdict(data).error_code == 34


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        (b' sha256="3q2+7w3q2+7w3q2+7w3q2+7w3q2+7w3q2+7w3q2+4="', b"", "no sha256"),
        (b'event="postinstall"', b'event="install"', "no postinstall"),
        (b'size="486539264"', b'size="0"', "not > 0"),
        (
            b'codebase="https://update.release.flatcar-linux.net/amd64-usr/4081.2.0/"',
            b'codebase=""',
            "empty codebase",
        ),
    ],
)
def test_each_required_field_missing_is_34(old: bytes, new: bytes, reason: str) -> None:
    data = sample("nebraska-shape__updatecheck_update_ok.GENERATED.xml").replace(old, new, 1)
    verdict = update_engine_verdict(data)
    assert verdict.error_code == 34
    assert reason in verdict.reason


def test_decoded_response_is_judged_too() -> None:
    resp = parse_response(sample("nebraska-shape__updatecheck_update_ok.GENERATED.xml"))
    assert update_engine_verdict(resp).version == "4081.2.0"
