"""The codec over every sample document, in both directions, plus its hardening."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
from lxml import etree

from omaha_proxy import CodecError, encode, parse, parse_request, parse_response, sniff
from omaha_proxy.protocol.model import Action, AppRequest, Event, Request, Response, XmlElement
from tests.conftest import DATA, sample

DOCUMENTS = sorted(p.name for p in DATA.glob("*.xml") if ".MALFORMED" not in p.name)
WELL_FORMED = [n for n in DOCUMENTS if n != "go-omaha__test__package_test.go__xmlPkg.xml"]
MALFORMED = sorted(p.name for p in DATA.glob("*.MALFORMED.xml"))


def _canonical(el: etree._Element) -> tuple:
    """Elements, attributes and non-blank text, recursively.

    Attribute order and the order of differently-named siblings may change (known children
    are written in the model's order); everything else must be equal.
    """
    text = (el.text or "").strip()
    children = sorted((_canonical(c) for c in el if isinstance(c.tag, str)), key=repr)
    return (el.tag, tuple(sorted(el.attrib.items())), text, tuple(children))


@pytest.mark.parametrize("name", WELL_FORMED)
def test_every_sample_round_trips_losslessly(name: str) -> None:
    data = sample(name)
    doc = parse(data)
    encoded = encode(doc)
    assert parse(encoded) == doc
    # Nothing lost: every element, attribute and value of the input is in the output.
    original = etree.fromstring(data, etree.XMLParser(remove_blank_text=True, remove_comments=True))
    again = etree.fromstring(encoded, etree.XMLParser(remove_blank_text=True))
    assert _canonical(again) == _canonical(original)


@pytest.mark.parametrize("name", WELL_FORMED)
def test_encoding_has_declaration_and_never_self_closes(name: str) -> None:
    encoded = encode(parse(sample(name)))
    assert encoded.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n')
    assert b"/>" not in encoded
    assert b"xmlns" not in encoded


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_samples_raise_a_codec_error_with_position(name: str) -> None:
    with pytest.raises(CodecError) as info:
        parse(sample(name))
    assert info.value.line is not None


def test_update_engine_request_decodes_every_attribute() -> None:
    req = parse_request(
        sample("flatcar-update_engine-0.4.10__request_01_updatecheck_steady_state.RECONSTRUCTED.xml")
    )
    assert (req.protocol, req.version, req.installsource, req.ismachine) == (
        "3.0",
        "update_engine-0.4.10",
        "scheduler",
        "1",
    )
    assert req.os is not None and (req.os.version, req.os.platform, req.os.sp) == (
        "Chateau",
        "CoreOS",
        "4081.2.0_x86_64",
    )
    (app,) = req.apps
    assert app.machineid == "5d2b0c9e8f7a4b1c9e3d6f8a0b2c4d6e"
    assert app.bootid == "{3f1c5a4e-9b0d-4a7e-8c2f-1d6e0b9a7c55}"
    assert (app.oem, app.oemversion, app.alephversion, app.board) == ("qemu", "", "3760.2.0", "amd64-usr")
    assert (app.hardware_class, app.delta_okay, app.lang, app.machinealias) == ("", "false", "en-US", "")
    assert app.ping is not None and app.ping.active == 1
    assert app.updatecheck is not None
    assert app.events == (Event(eventtype=3, eventresult=2, previousversion=""),)
    assert app.extra == ()


def test_error_event_names_base_code_and_flags() -> None:
    req = parse_request(
        sample(
            "flatcar-update_engine-0.4.10__request_09_event_error_hash_mismatch_nonprod_server.RECONSTRUCTED.xml"
        )
    )
    event = req.apps[0].events[0]
    assert event.error is not None
    assert (event.error.base, event.error.name, event.error.flag_names) == (
        10,
        "PayloadHashMismatch",
        ("non-production-server",),
    )


def test_nebraska_offer_keeps_extension_packages_and_action_quirks() -> None:
    resp = parse_response(sample("ue-rs__omaha-response-example.xml"))
    uc = resp.apps[0].updatecheck
    assert uc is not None and uc.urls is not None and uc.manifest is not None
    assert uc.urls[0].codebase == "https://update.release.flatcar-linux.net/amd64-usr/3732.0.0/"
    packages = uc.manifest.packages or ()
    assert [p.name for p in packages] == ["flatcar_production_update.gz", "oem-azure.gz", "oem-qemu.gz"]
    assert packages[0].size == 382137917 and packages[0].required == "true"
    assert packages[2].hash_sha256 == "8ab630ee4079ecd5f8f512c05b44fec5e4f8db844db916c67c8d54a575cfe506"
    action = uc.manifest.postinstall
    assert action is not None
    assert action.sha256 == "stLG3U/o4Ar8TMHFwT/RWB0iNkaWOO6QtLrq6+AHBbA="
    assert action.disable_payload_backoff == "true"


def test_multi_manifest_floor_versions_are_all_kept() -> None:
    resp = parse_response(sample("go-omaha__test__protocol_test.go__multiManifestXML.xml"))
    manifests = resp.apps[0].updatecheck.manifests  # type: ignore[union-attr]
    assert [(m.version, m.is_floor, m.is_target) for m in manifests] == [
        ("1.5.0", "true", None),
        ("2.0.0", "true", None),
        ("4.0.0", None, "true"),
    ]
    assert manifests[0].floor_reason == "Required for partition migration"


def test_chromeos_action_attributes_are_named_and_kept() -> None:
    resp = parse_response(sample("flatcar-update_engine__sample_omaha_v3_response.xml"))
    actions = resp.apps[0].updatecheck.manifest.actions  # type: ignore[union-attr]
    post = actions[1]
    assert (post.chromeos_version, post.is_delta, post.metadata_size, post.max_days_to_scatter) == (
        "3095.0.0",
        "true",
        "58315",
        "14",
    )


def test_unknown_attributes_and_elements_survive_in_order() -> None:
    data = (
        b'<request protocol="3.0" zeta="1" alpha="2"><app appid="x" custom="c">'
        b'<ping active="1" q="9"></ping><future a="1"><deeper>text</deeper></future></app>'
        b"<trailer></trailer></request>"
    )
    req = parse_request(data)
    assert req.extra == (("zeta", "1"), ("alpha", "2"))
    app = req.apps[0]
    assert app.extra == (("custom", "c"),)
    assert app.ping is not None and app.ping.extra == (("q", "9"),)
    assert app.unknown == (XmlElement("future", (("a", "1"),), None, (XmlElement("deeper", (), "text"),)),)
    assert req.unknown == (XmlElement("trailer"),)
    assert parse_request(encode(req)) == req


def test_unknown_status_strings_are_kept_not_refused() -> None:
    data = b'<response protocol="3.0"><app appid="a" status="error-foo"><updatecheck status="error-bar"></updatecheck></app></response>'
    resp = parse_response(data)
    assert resp.apps[0].status == "error-foo"
    assert resp.apps[0].updatecheck.status == "error-bar"  # type: ignore[union-attr]


def test_rewriting_one_attribute_forwards_all_others() -> None:
    resp = parse_response(sample("nebraska-shape__updatecheck_update_ok.GENERATED.xml"))
    app = resp.apps[0]
    uc = app.updatecheck
    assert uc is not None and uc.urls
    new = replace(
        resp, apps=(replace(app, updatecheck=replace(uc, urls=(replace(uc.urls[0], codebase="http://p/"),))),)
    )
    again = parse_response(encode(new))
    assert again.apps[0].updatecheck.urls[0].codebase == "http://p/"  # type: ignore[union-attr,index]
    assert again.apps[0].updatecheck.manifests == uc.manifests  # type: ignore[union-attr]


def test_indent_is_optional_and_reparses_equal() -> None:
    resp = parse_response(sample("nebraska-shape__updatecheck_update_ok.GENERATED.xml"))
    pretty = encode(resp, indent=True)
    assert b"\n  <daystart" in pretty
    assert parse_response(pretty) == resp


NEBRASKA_SHAPED = sorted(p.name for p in DATA.glob("nebraska-shape__*.GENERATED.xml"))


@pytest.mark.parametrize("name", NEBRASKA_SHAPED)
def test_compact_encoding_matches_nebraska_bytes(name: str) -> None:
    data = sample(name)
    assert encode(parse_response(data)) == data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty body"),
        (b"   \n", "empty body"),
        (b"<request protocol='3.0'>", "not well-formed"),
        (b'<request protocol="3.0"></request>junk', "not well-formed"),
        (b'<request a="1" a="2"></request>', "redefined"),
        (b'<response protocol="3.0"></response>', "expected an Omaha <request>"),
        (b'<request><app><event eventtype="x"></event></app></request>', "not an integer"),
        (b"<request><app><event></event></app></request>", "no eventtype"),
        (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "b">]><request>&a;</request>', "DOCTYPE"),
        (b'<request><app machinealias="a"b"></app></request>', "not well-formed"),
        (b"\xff\xfe<\x00r\x00", "not well-formed"),
    ],
)
def test_bad_input_raises_a_clear_codec_error(data: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        parse_request(data)


def test_update_engine_unescaped_quote_in_alias_fails_softly_with_position() -> None:
    good = sample("flatcar-update_engine-0.4.10__request_01_updatecheck_steady_state.RECONSTRUCTED.xml")
    bad = good.replace(b'machinealias=""', b'machinealias="rack "7""')
    with pytest.raises(CodecError) as info:
        parse_request(bad)
    assert info.value.line == 4


def test_body_size_cap_is_a_parameter() -> None:
    data = sample("flatcar-update_engine-0.4.10__request_01_updatecheck_steady_state.RECONSTRUCTED.xml")
    with pytest.raises(CodecError, match="exceeds the limit"):
        parse_request(data, max_size=100)
    assert parse_request(data, max_size=len(data)).apps


def test_billion_laughs_and_external_entities_are_refused_in_milliseconds() -> None:
    lol = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        + b"".join(
            b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
            for i in range(1, 10)
        )
        + b']><request protocol="3.0">&lol9;</request>'
    )
    xxe = b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><request>&x;</request>'
    net = b'<?xml version="1.0"?><!DOCTYPE r SYSTEM "http://127.0.0.1:9/x.dtd"><request></request>'
    for doc in (lol, xxe, net):
        start = time.perf_counter()
        with pytest.raises(CodecError, match="DOCTYPE"):
            parse_request(doc)
        assert time.perf_counter() - start < 0.05


def test_utf16_document_with_doctype_is_refused_too() -> None:
    doc = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE r><request protocol="3.0"></request>'.encode(
        "utf-16"
    )
    with pytest.raises(CodecError, match="DOCTYPE"):
        parse_request(doc)


def test_deep_nesting_is_refused_not_a_crash() -> None:
    doc = b'<request protocol="3.0">' + b"<a>" * 10000 + b"</a>" * 10000 + b"</request>"
    with pytest.raises(CodecError):
        parse_request(doc)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b'<?xml version="1.0" encoding="UTF-8"?>\n<request protocol="3.0">', "request"),
        (b"\xef\xbb\xbf<response>", "response"),
        (b"<!-- hi --><request>", "request"),
        (b'{"request": 1}', None),
        (b"<requests>", None),
        (b"", None),
    ],
)
def test_sniff_tells_omaha_documents_apart(data: bytes, kind: str | None) -> None:
    assert sniff(data) == kind


def test_encode_refuses_what_is_not_a_document() -> None:
    with pytest.raises(CodecError):
        encode(AppRequest())  # type: ignore[arg-type]


def test_attribute_values_are_escaped() -> None:
    req = Request(apps=(AppRequest(appid="a", machinealias='rack "7" & <b>\n'),))
    encoded = encode(req)
    assert b"&quot;7&quot; &amp; &lt;b&gt;&#10;" in encoded
    assert parse_request(encoded) == req


def test_models_are_frozen() -> None:
    resp = Response()
    with pytest.raises(AttributeError):
        resp.server = "x"  # type: ignore[misc]
    assert Action(event="postinstall") == Action(event="postinstall")


def test_sample_folder_is_complete() -> None:
    shared = Path(__file__).parent.parent.parent / "shared" / "omaha-samples"
    if shared.is_dir():
        for p in shared.glob("*.xml"):
            assert (DATA / p.name).read_bytes() == p.read_bytes()
