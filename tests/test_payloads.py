"""Payload verification: every check the offer makes, named when it fails, in one pass."""

from __future__ import annotations

import base64
import dataclasses
import io

import pytest

from omaha_proxy.payloads.verify import (
    Expected,
    PayloadMismatch,
    Verifier,
    copy_verified,
    expected_packages,
    verify_file,
)
from omaha_proxy.protocol.errors import PayloadError
from omaha_proxy.protocol.model import Action, Manifest, Package
from tests.support.payload_files import expected_for

DATA = b"CrAU" + bytes(range(256)) * 40
MAIN = "flatcar_production_update.gz"


def test_a_matching_payload_verifies_and_returns_every_hash_form():
    exp = expected_for(DATA, MAIN)
    digest = copy_verified(io.BytesIO(DATA), exp, chunk_size=100)
    assert digest.size == len(DATA)
    assert digest.sha256_b64 == exp.sha256_b64
    assert digest.sha256_hex == exp.sha256_hex
    assert digest.sha1_b64 == exp.sha1_b64


def test_copy_verified_writes_every_byte_to_the_sink():
    sink = io.BytesIO()
    copy_verified(io.BytesIO(DATA), expected_for(DATA, MAIN), sink, chunk_size=7)
    assert sink.getvalue() == DATA


@pytest.mark.parametrize(
    ("field", "value", "failed"),
    [
        ("size", len(DATA) + 1, "size"),
        ("sha256_b64", base64.b64encode(b"\0" * 32).decode(), "sha256"),
        ("sha256_hex", "00" * 32, "hash_sha256"),
        ("sha1_b64", base64.b64encode(b"\0" * 20).decode(), "hash"),
    ],
)
def test_each_wrong_offer_value_fails_naming_that_check(field, value, failed):
    exp = dataclasses.replace(expected_for(DATA, MAIN), **{field: value})
    with pytest.raises(PayloadMismatch) as info:
        copy_verified(io.BytesIO(DATA), exp)
    assert info.value.failed == (failed,)
    assert exp.name in str(info.value)


def test_a_truncated_payload_fails_size_and_every_hash():
    with pytest.raises(PayloadMismatch) as info:
        copy_verified(io.BytesIO(DATA[:-10]), expected_for(DATA, MAIN))
    assert info.value.failed == ("size", "sha256", "hash_sha256", "hash")
    assert f"got {len(DATA) - 10} bytes, offer {len(DATA)}" in str(info.value)


def test_a_stream_longer_than_the_offer_stops_at_once():
    class Endless(io.RawIOBase):
        reads = 0

        def readinto(self, b):  # type: ignore[override]
            Endless.reads += 1
            b[:] = b"x" * len(b)
            return len(b)

    with pytest.raises(PayloadMismatch) as info:
        copy_verified(Endless(), Expected("p", size=1000), chunk_size=600)
    assert info.value.failed == ("size",)
    assert Endless.reads == 2


def test_hex_sha256_is_compared_case_insensitively_like_ue_rs():
    exp = expected_for(DATA, MAIN)
    upper = Expected(exp.name, exp.size, None, exp.sha256_hex.upper(), None)
    assert copy_verified(io.BytesIO(DATA), upper).size == len(DATA)


def test_postinstall_sha256_is_compared_as_a_string_like_update_engine():
    # Same bytes, different base64 spelling (no padding): update_engine would reject it.
    exp = expected_for(DATA, MAIN)
    unpadded = Expected(exp.name, exp.size, exp.sha256_b64.rstrip("="), None, None)
    with pytest.raises(PayloadMismatch) as info:
        copy_verified(io.BytesIO(DATA), unpadded)
    assert info.value.failed == ("sha256",)


def test_an_offer_without_values_checks_nothing():
    assert Verifier(Expected("x")).finish().size == 0


def test_expected_packages_gives_the_postinstall_hash_to_the_first_package_only():
    manifest = Manifest(
        version="4152.2.0",
        packages=(
            Package(name="flatcar_production_update.gz", hash="c2hhMQ==", size=10, required="true"),
            Package(name=None, size=3),
            Package(name="oem-qemu.gz", hash="c2hhMg==", hash_sha256="ab" * 32, size=5, required="false"),
        ),
        actions=(Action(event="preinstall", sha256="bad"), Action(event="postinstall", sha256="b64sha")),
    )
    main, oem = expected_packages(manifest)
    assert main == Expected("flatcar_production_update.gz", 10, "b64sha", None, "c2hhMQ==")
    assert oem == Expected("oem-qemu.gz", 5, None, "ab" * 32, "c2hhMg==")


def test_content_sha256_comes_from_either_hash_form():
    exp = expected_for(DATA, MAIN)
    assert Expected("a", sha256_b64=exp.sha256_b64).content_sha256() == exp.sha256_hex
    assert Expected("a", sha256_hex=exp.sha256_hex.upper()).content_sha256() == exp.sha256_hex
    assert Expected("a", sha256_b64="not base64!").content_sha256() is None
    # Offer values end up in file names: anything but a real SHA-256 is not used.
    assert Expected("a", sha256_hex="../../etc/passwd").content_sha256() is None
    assert Expected("a", sha256_b64=base64.b64encode(b"short").decode()).content_sha256() is None
    assert not Expected("a", size=3).has_hash


def test_verify_file_reads_a_file_and_reports_a_missing_one(tmp_path):
    path = tmp_path / "payload"
    path.write_bytes(DATA)
    assert verify_file(path, expected_for(DATA, MAIN)).size == len(DATA)
    with pytest.raises(PayloadError, match="cannot read"):
        verify_file(tmp_path / "missing", expected_for(DATA, MAIN))
