"""Nebraska's instance state machine (reference §2.5), driven by the real request samples."""

from __future__ import annotations

import pytest

from omaha_proxy.protocol.codes import InstanceState
from omaha_proxy.protocol.decode import parse_request, parse_response
from omaha_proxy.protocol.model import AppRequest, AppResponse, Event, UpdateCheckResponse
from omaha_proxy.store.states import InstanceStatus, advance, apply_event, apply_updatecheck, is_flatcar
from tests.conftest import sample

S = InstanceState
FLATCAR = "{e96281a6-d1af-4bde-9a0a-97b76e56dc57}"
IN_PROGRESS = InstanceStatus(S.UPDATE_GRANTED, True, "4152.2.0")


def request_app(flavour: str) -> AppRequest:
    name = next(n for n in _REQUESTS if flavour in n)
    return parse_request(sample(name)).apps[0]


_REQUESTS = [
    "flatcar-update_engine-0.4.10__request_01_updatecheck_steady_state.RECONSTRUCTED.xml",
    "flatcar-update_engine-0.4.10__request_04_updatecheck_after_reboot_into_new_version.RECONSTRUCTED.xml",
    "flatcar-update_engine-0.4.10__request_06_event_download_started.RECONSTRUCTED.xml",
    "flatcar-update_engine-0.4.10__request_07_event_download_finished.RECONSTRUCTED.xml",
    "flatcar-update_engine-0.4.10__request_08_event_update_installed.RECONSTRUCTED.xml",
    "flatcar-update_engine-0.4.10__request_09_event_error_hash_mismatch_nonprod_server.RECONSTRUCTED.xml",
    "flatcar-update_engine-0.4.10__request_11_ping_only_waiting_for_reboot.RECONSTRUCTED.xml",
]


def answer(name: str) -> AppResponse:
    return parse_response(sample(name)).apps[0]


OFFER = "nebraska-shape__updatecheck_update_ok.GENERATED.xml"
NOUPDATE = "nebraska-shape__updatecheck_noupdate.GENERATED.xml"
ACK = "nebraska-shape__event_ack.GENERATED.xml"


def test_a_full_flatcar_update_walks_granted_downloading_downloaded_complete() -> None:
    status = advance(InstanceStatus(), request_app("01_updatecheck"), answer(OFFER))
    assert (status.state, status.update_in_progress, status.granted_version) == (
        S.UPDATE_GRANTED,
        True,
        "4081.2.0",
    )
    seen = []
    for flavour in ("06_event", "07_event", "08_event", "11_ping", "04_updatecheck"):
        status = advance(status, request_app(flavour), answer(ACK if "event" in flavour else NOUPDATE))
        seen.append(status.state)
    assert seen == [S.DOWNLOADING, S.DOWNLOADED, S.DOWNLOADED, S.DOWNLOADED, S.COMPLETE]
    assert not status.update_in_progress


def test_events_without_an_update_in_progress_are_dropped() -> None:
    idle = InstanceStatus()
    for flavour in ("06_event", "07_event", "09_event"):
        assert advance(idle, request_app(flavour), answer(ACK)) == idle


def test_error_event_during_an_update_is_error_and_ends_it() -> None:
    status = advance(IN_PROGRESS, request_app("09_event"), answer(ACK))
    assert (status.state, status.update_in_progress) == (S.ERROR, False)


def test_routine_check_event_unsticks_an_update_in_progress_to_undefined() -> None:
    status = apply_event(IN_PROGRESS, Event(eventtype=3, eventresult=2, previousversion=""), appid=FLATCAR)
    assert (status.state, status.update_in_progress) == (S.UNDEFINED, False)


def test_applied_event_completes_other_apps_but_not_flatcar() -> None:
    downloaded = InstanceStatus(S.DOWNLOADED, True, "1.2.0")
    applied = Event(eventtype=3, eventresult=1)
    assert apply_event(downloaded, applied, appid=FLATCAR).state is S.DOWNLOADED
    assert apply_event(downloaded, applied, appid="{other}").state is S.COMPLETE


@pytest.mark.parametrize(("etype", "result"), [(3, 9), (13, 0), (14, 0), (50, 1)])
def test_event_pairs_outside_nebraskas_table_change_nothing(etype: int, result: int) -> None:
    assert apply_event(IN_PROGRESS, Event(eventtype=etype, eventresult=result)) == IN_PROGRESS


def test_rate_limit_refusal_puts_the_instance_on_hold() -> None:
    status = apply_updatecheck(
        InstanceStatus(), update_status="error-internal", app_status="error-maxUpdatesPerPeriodLimitReached"
    )
    assert status.state is S.ON_HOLD


def test_proxy_hold_puts_the_instance_on_hold_but_a_block_changes_nothing() -> None:
    assert apply_updatecheck(InstanceStatus(), update_status="noupdate", held=True).state is S.ON_HOLD
    assert apply_updatecheck(InstanceStatus(), update_status="noupdate") == InstanceStatus()


def test_granted_instance_reporting_the_granted_version_is_complete() -> None:
    status = apply_updatecheck(IN_PROGRESS, update_status="noupdate", instance_version="4152.2.0")
    assert (status.state, status.update_in_progress) == (S.COMPLETE, False)
    still = apply_updatecheck(
        IN_PROGRESS, update_status="ok", offered_version="4152.2.0", instance_version="4081.2.0"
    )
    assert still.state is S.UPDATE_GRANTED


def test_events_count_even_without_a_response() -> None:
    status = advance(IN_PROGRESS, request_app("06_event"), None)
    assert status.state is S.DOWNLOADING


def test_update_check_without_response_changes_only_through_its_events() -> None:
    app = AppRequest(appid=FLATCAR, version="1.0.0", updatecheck=None)
    assert advance(IN_PROGRESS, app, AppResponse(updatecheck=UpdateCheckResponse(status="ok"))) == IN_PROGRESS


@pytest.mark.parametrize("appid", [FLATCAR, FLATCAR.strip("{}"), FLATCAR.upper()])
def test_flatcar_appid_is_recognised_with_or_without_braces(appid: str) -> None:
    assert is_flatcar(appid)
    assert not is_flatcar("{00000000-0000-0000-0000-000000000000}")
    assert not is_flatcar(None)
