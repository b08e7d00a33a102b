"""The simulated machine sends update_engine 0.4.10's bytes exactly (the RECONSTRUCTED samples)."""

from __future__ import annotations

import random

import pytest

from omaha_proxy.client.machine import (
    FLATCAR_APPID,
    Machine,
    event_request,
    ping_request,
    update_check_request,
    xml_encode,
)
from omaha_proxy.protocol.decode import parse_request
from tests.conftest import sample

# The values used in tests/data/flatcar-update_engine-0.4.10__request_*.RECONSTRUCTED.xml.
SAMPLE_MACHINE = Machine(
    machine_id="5d2b0c9e8f7a4b1c9e3d6f8a0b2c4d6e",
    boot_id="{3f1c5a4e-9b0d-4a7e-8c2f-1d6e0b9a7c55}",
    version="4081.2.0",
    aleph="3760.2.0",
)

FLAVOURS = {
    "01_updatecheck_steady_state": lambda m: update_check_request(m),
    "02_updatecheck_interactive": lambda m: update_check_request(m, interactive=True),
    "03_updatecheck_first_boot_no_prefs": lambda m: update_check_request(m, previous_version="0.0.0.0"),
    "04_updatecheck_after_reboot_into_new_version": lambda m: update_check_request(
        m, previous_version="3975.2.1"
    ),
    "05_updatecheck_rollback_detected": lambda m: update_check_request(m, rollback=True),
    "06_event_download_started": lambda m: event_request(m, 13, 1),
    "07_event_download_finished": lambda m: event_request(m, 14, 1),
    "08_event_update_installed": lambda m: event_request(m, 3, 1),
    "09_event_error_hash_mismatch_nonprod_server": lambda m: event_request(m, 3, 0, 268435466),
    "10_event_error_http_503_nonprod_server": lambda m: event_request(m, 3, 0, 268437959),
    "11_ping_only_waiting_for_reboot": lambda m: ping_request(m),
}


def reconstructed(name: str) -> bytes:
    return sample(f"flatcar-update_engine-0.4.10__request_{name}.RECONSTRUCTED.xml")


@pytest.mark.parametrize("name", sorted(FLAVOURS))
def test_request_bytes_equal_update_engine_0_4_10(name) -> None:
    assert FLAVOURS[name](SAMPLE_MACHINE) == reconstructed(name)


def test_requests_parse_back_to_the_machine_values() -> None:
    app = parse_request(update_check_request(SAMPLE_MACHINE)).apps[0]
    assert (app.appid, app.machineid, app.bootid, app.version) == (
        FLATCAR_APPID, SAMPLE_MACHINE.machine_id, SAMPLE_MACHINE.boot_id, "4081.2.0",
    )  # fmt: skip


def test_escaping_is_libxml2s_without_quotes() -> None:
    assert xml_encode("a&b<c>d") == "a&amp;b&lt;c&gt;d"
    assert xml_encode("café €") == "caf&#xE9; &#x20AC;"
    assert xml_encode('say "hi"') == 'say "hi"'
    assert xml_encode("cr\rlf\ntab\tbell\x07") == "cr&#13;lf\ntab\tbell"


def test_a_quote_in_the_alias_makes_malformed_xml_like_the_real_client() -> None:
    body = update_check_request(Machine.random(alias='rack "A"'))
    assert b'machinealias="rack "A""' in body
    with pytest.raises(ValueError):
        parse_request(body)


def test_errorcode_with_bit_31_is_printed_signed() -> None:
    assert b'errorcode="-2147483638"' in event_request(SAMPLE_MACHINE, 3, 0, (1 << 31) | 10)


def test_deferred_event_carries_its_code() -> None:
    assert b'<event eventtype="3" eventresult="9" errorcode="40"></event>' in event_request(
        SAMPLE_MACHINE, 3, 9, 40
    )


def test_arm64_board_reports_aarch64_in_sp() -> None:
    assert Machine.random(board="arm64-usr", version="4081.2.0").sp == "4081.2.0_aarch64"


def test_random_machines_are_reproducible_and_reboots_keep_the_machine_id() -> None:
    a, b = Machine.random(random.Random(7)), Machine.random(random.Random(7))
    assert a == b and len(a.machine_id) == 32 and a.boot_id.startswith("{")
    after = a.rebooted("4152.2.0", random.Random(8))
    assert (after.machine_id, after.version, after.aleph) == (a.machine_id, "4152.2.0", a.aleph)
    assert after.boot_id != a.boot_id
