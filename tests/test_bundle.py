"""Offline bundles: exported from a log or a recording, served with the upstream gone."""

from __future__ import annotations

import json
import shutil
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest

from omaha_proxy.client.simulator import simulate
from omaha_proxy.client.verdict import update_engine_verdict
from omaha_proxy.payloads.bundle import (
    MANIFEST,
    export_bundle,
    load_bundle,
    offer_from_log,
)
from omaha_proxy.protocol.build import noupdate_response
from omaha_proxy.protocol.decode import encode, parse_request, parse_response
from omaha_proxy.protocol.errors import BundleError
from omaha_proxy.replay import recording
from omaha_proxy.replay.offers import offer_from_recording
from omaha_proxy.servers.bundle import BundleServer, bundle_answer
from omaha_proxy.store.store import Store
from tests.conftest import sample
from tests.support.mitm_logging import no_stale_mitmproxy_handlers  # noqa: F401
from tests.support.serving import SERVED_VERSION, package_server

CHECK = sample("flatcar-update_engine-0.4.10__request_01_updatecheck_steady_state.RECONSTRUCTED.xml")
MAIN = "flatcar_production_update.gz"


def post(url: str, body: bytes) -> bytes:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "text/xml"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A bundle exported from a recording of a real local upstream, which is then stopped."""
    tmp = tmp_path_factory.mktemp("bundle")
    with package_server(tmp) as upstream:
        offer_xml = post(upstream.omaha_url, CHECK)
        builder = recording.RecordingBuilder(source="test")
        builder.add(CHECK, offer_xml)
        recording.dump(builder.recording(), tmp / "rec.json")
        found = offer_from_recording(tmp / "rec.json", SERVED_VERSION)
        export_bundle(found, tmp / "out", source="recording rec.json")
    return load_bundle(tmp / "out"), offer_xml, tmp


def copy_bundle(bundle, tmp_path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(bundle.root, target)
    return target


def test_export_keeps_the_upstream_offer_byte_exact_and_every_package_verified(exported):
    bundle, offer_xml, _ = exported
    assert (bundle.root / "offer.xml").read_bytes() == offer_xml
    manifest = json.loads((bundle.root / MANIFEST).read_text())
    assert (manifest["format"], manifest["version"]) == ("omaha-proxy-bundle", 1)
    assert manifest["release"]["version"] == SERVED_VERSION
    assert manifest["release"]["board"] == "amd64-usr"
    assert [f["name"] for f in manifest["files"]] == [MAIN, "oem-qemu.gz"]
    assert bundle.version == SERVED_VERSION and len(bundle.files) == 2


def test_a_machine_completes_its_update_from_the_bundle_with_the_upstream_stopped(exported, tmp_path):
    bundle, _, _ = exported
    db = tmp_path / "log.db"
    with BundleServer(load_bundle(bundle.root), db=str(db)) as server:
        report = simulate(server.omaha_url, 2, cycles=3, timeout=30)
    assert report.summary() == {"updated": 2}, report.to_dict()
    assert {m.version for m in report.machines} == {SERVED_VERSION}
    with Store(db) as store:
        rows = store.recent(limit=100)
        assert rows and {r["action"] for r in rows} == {"served"}
        assert any("offer 4152.2.0" in (r["reason"] or "") for r in rows)
        assert {(m["version"], m["state_label"]) for m in store.fleet()} == {(SERVED_VERSION, "Complete")}


def test_the_bundle_answers_like_the_upstream_with_codebase_rewritten(exported):
    bundle, offer_xml, _ = exported
    response, reasons = bundle_answer(bundle, parse_request(CHECK), "10.0.0.5:8000")
    original = parse_response(offer_xml).apps[0].updatecheck
    served = response.apps[0].updatecheck
    assert served.manifests == original.manifests
    assert [u.codebase for u in served.urls] == ["http://10.0.0.5:8000/packages/"]
    assert update_engine_verdict(response).kind == "update"
    assert reasons == ["offer 4152.2.0 to 4081.2.0"]


@pytest.mark.parametrize(
    ("replacements", "why"),
    [
        ({'version="4081.2.0"': f'version="{SERVED_VERSION}"'}, "not older"),
        ({'version="4081.2.0"': 'version="5000.0.0"'}, "not older"),
        ({'board="amd64-usr"': 'board="arm64-usr"'}, "board arm64-usr"),
        (
            {"e96281a6-d1af-4bde-9a0a-97b76e56dc57": "11111111-2222-3333-4444-555555555555"},
            "is not the bundle",
        ),
        ({'version="4081.2.0"': 'version="next"'}, "not comparable"),
    ],
)
def test_other_machines_get_noupdate(exported, replacements, why):
    bundle, _, _ = exported
    body = CHECK.decode()
    for old, new in replacements.items():
        assert old in body
        body = body.replace(old, new, 1)
    request = parse_request(body.encode())
    response, reasons = bundle_answer(bundle, request, "h:1")
    assert encode(response) == encode(noupdate_response(request, server=bundle.offer.server))
    assert why in reasons[0]


def test_a_bundle_exported_from_the_log_matches_the_recorded_one(tmp_path):
    with package_server(tmp_path) as upstream:
        offer_xml = post(upstream.omaha_url, CHECK)
        with Store(tmp_path / "omaha.db") as store:
            store.record_exchange(flow_id="f1", ts=time.time(), request_xml=CHECK, response_xml=offer_xml,
                                  http_status=200)  # fmt: skip
        found = offer_from_log(tmp_path / "omaha.db", SERVED_VERSION)
        assert (found.board, found.track) == ("amd64-usr", "stable")  # the asking machine's
        manifest = export_bundle(found, tmp_path / "b.tar", source="log")
    assert found.xml == offer_xml
    assert tarfile.is_tarfile(tmp_path / "b.tar")
    bundle = load_bundle(tmp_path / "b.tar", extract_to=tmp_path / "x")
    assert bundle.root == tmp_path / "x" and bundle.source == "log"
    assert [(f.name, f.size, f.sha256) for f in bundle.files] == [
        (f["name"], f["size"], f["sha256"]) for f in manifest["files"]
    ]
    with pytest.raises(BundleError, match=r"no upstream offer of 9999\.0\.0"):
        offer_from_log(tmp_path / "omaha.db", "9999.0.0")
    with pytest.raises(BundleError, match="board arm64-usr"):
        offer_from_log(tmp_path / "omaha.db", SERVED_VERSION, board="arm64-usr")


def test_export_fails_clearly_when_a_package_cannot_be_fetched(exported, tmp_path):
    _, _, tmp = exported  # the upstream of that recording is stopped now
    found = offer_from_recording(tmp / "rec.json", SERVED_VERSION)
    with pytest.raises(BundleError, match=f"cannot fetch a verified {MAIN}"):
        export_bundle(found, tmp_path / "out")
    with pytest.raises(BundleError, match=r"holds no offer of 1\.2\.3"):
        offer_from_recording(tmp / "rec.json", "1.2.3")


def test_a_tampered_package_is_refused_at_load(exported, tmp_path):
    root = copy_bundle(exported[0], tmp_path)
    path = root / "packages" / MAIN
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"tampered bundle: flatcar_production_update\.gz: sha256"):
        load_bundle(root)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda root: (root / "packages" / "oem-qemu.gz").unlink(),
            "incomplete bundle: packages/oem-qemu.gz",
        ),
        (lambda root: (root / MANIFEST).unlink(), "incomplete bundle: .*manifest.json is missing"),
        (lambda root: (root / "offer.xml").write_bytes(b"<response/>"), "tampered bundle: offer.xml"),
        (lambda root: _edit_manifest(root, version=99), "format version 99 is not supported"),
        (lambda root: _edit_manifest(root, format="zip"), "not an omaha-proxy bundle manifest"),
        (lambda root: _edit_manifest(root, files=[]), "incomplete bundle: .* not in the manifest"),
        (lambda root: _truncate(root / "packages" / MAIN), "has 10 bytes, manifest says"),
    ],
)
def test_an_incomplete_or_altered_bundle_is_refused_at_load(exported, tmp_path, damage, message):
    root = copy_bundle(exported[0], tmp_path)
    damage(root)
    with pytest.raises(BundleError, match=message):
        load_bundle(root)


def _edit_manifest(root: Path, **changes: object) -> None:
    document = json.loads((root / MANIFEST).read_text())
    document.update(changes)
    (root / MANIFEST).write_text(json.dumps(document))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:10])


def test_a_manifest_path_leaving_the_bundle_is_refused(exported, tmp_path):
    root = copy_bundle(exported[0], tmp_path)
    document = json.loads((root / MANIFEST).read_text())
    document["files"][0]["path"] = "../../etc/passwd"
    (root / MANIFEST).write_text(json.dumps(document))
    with pytest.raises(BundleError, match="leaves the bundle"):
        load_bundle(root)


def test_the_cli_exports_and_verifies_a_bundle(tmp_path, capsys):
    from omaha_proxy.cli import main

    with package_server(tmp_path) as upstream:
        builder = recording.RecordingBuilder(source="test")
        builder.add(CHECK, post(upstream.omaha_url, CHECK))
        recording.dump(builder.recording(), tmp_path / "rec.json")
        argv = ["bundle", "export", "--recording", str(tmp_path / "rec.json"), "--version", SERVED_VERSION]
        assert main([*argv, "--board", "amd64-usr", "-o", str(tmp_path / "b.tar")]) == 0
    assert "2 packages" in capsys.readouterr().out
    assert main(["bundle", "verify", str(tmp_path / "b.tar")]) == 0
    assert "bundle OK" in capsys.readouterr().out
    assert load_bundle(tmp_path / "b.tar", extract_to=tmp_path / "x").version == SERVED_VERSION
    (tmp_path / "x" / "packages" / MAIN).write_bytes(b"evil")
    assert main(["bundle", "verify", str(tmp_path / "x")]) == 1
    assert "tampered or incomplete bundle" in capsys.readouterr().err
    assert main(["bundle", "serve", str(tmp_path / "x"), "--listen", "127.0.0.1:0"]) == 1


def test_bundle_serve_runs_as_a_command_until_interrupted(exported, tmp_path):
    import re
    import signal
    import subprocess
    import sys

    bundle, _, _ = exported
    cmd = [str(Path(sys.executable).parent / "omaha-proxy"), "bundle", "serve", str(bundle.root),
           "--listen", "127.0.0.1:0", "--db", str(tmp_path / "site.db")]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        url = None
        deadline = time.monotonic() + 20
        while url is None and time.monotonic() < deadline:
            match = re.search(r"SERVER=(http://\S+)", proc.stderr.readline())
            url = match.group(1) if match else None
        assert url is not None, "bundle serve did not start"
        assert simulate(url, 1, cycles=3, timeout=30).summary() == {"updated": 1}
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    with Store(tmp_path / "site.db") as store:
        assert store.count() > 0
