"""Hostile request bodies for the hardening tests, each with what the codec must say about it.

Each case is a body and the start of the :class:`~omaha_proxy.protocol.errors.CodecError` message the
codec raises for it (None: it parses). Bodies that reach out (external entities, external
DTDs) point at ``127.0.0.1:<port>`` so a test can listen there and prove nothing connects.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from hypothesis import strategies as st

from tests.conftest import DATA, sample

REQUEST = sample("flatcar-update_engine-0.4.10__request_01_updatecheck_steady_state.RECONSTRUCTED.xml")
RESPONSE = sample("nebraska-shape__updatecheck_noupdate.GENERATED.xml")
DOCTYPE = "document has a DOCTYPE"
SAMPLES = [p.read_bytes() for p in sorted(DATA.glob("*.xml"))]


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    error: str | None  # start of the codec's error message, None when the body parses
    omaha: bool = True  # whether the proxy treats the POST as Omaha (logs it)


def billion_laughs() -> bytes:
    """The classic: ten levels of ten references, 10**9 "lol"s if expanded (short entity
    names so that ``<request`` still falls in the first 512 bytes, where the proxy looks)."""
    names = "abcdefghij"
    entities = '<!ENTITY a "lol">' + "".join(
        f'<!ENTITY {n} "{f"&{p};" * 10}">' for p, n in itertools.pairwise(names)
    )
    return (
        f'<?xml version="1.0"?><!DOCTYPE request [{entities}]><request protocol="3.0">&j;</request>'.encode()
    )


def cases(port: int) -> list[Case]:
    """Every hostile body; ``port`` is where network entities point (nothing may connect)."""
    return [
        Case("billion-laughs", billion_laughs(), DOCTYPE),
        Case(
            "external-entity-file",
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b'<request protocol="3.0"><app appid="&x;"></app></request>',
            DOCTYPE,
        ),
        Case(
            "external-entity-network",
            f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "http://127.0.0.1:{port}/x">]>'
            f'<request protocol="3.0"><app appid="&x;"></app></request>'.encode(),
            DOCTYPE,
        ),
        Case(
            "external-dtd",
            f'<?xml version="1.0"?><!DOCTYPE request SYSTEM "http://127.0.0.1:{port}/omaha.dtd">'.encode()
            + REQUEST.split(b"?>", 1)[1],
            DOCTYPE,
        ),
        Case(
            "parameter-entity",
            f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY % p SYSTEM "http://127.0.0.1:{port}/p">%p;]>'
            f'<request protocol="3.0"></request>'.encode(),
            DOCTYPE,
        ),
        Case(
            "utf16-doctype",
            '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE r [<!ENTITY x "y">]><request protocol="3.0">&x;</request>'.encode(
                "utf-16"
            ),
            DOCTYPE,
            omaha=False,  # UTF-16 is not sniffed as Omaha (update_engine and Nebraska speak UTF-8)
        ),
        Case(
            "deep-nesting-10000",
            b"<request>" + b"<a>" * 10_000 + b"</a>" * 10_000 + b"</request>",
            "not well-formed",
        ),
        Case(
            "invalid-utf8", REQUEST.replace(b'track="stable"', b'track="st\xff\xfeable"'), "not well-formed"
        ),
        Case(
            "utf16",
            REQUEST.decode().replace('encoding="UTF-8"', 'encoding="UTF-16"').encode("utf-16"),
            None,
            omaha=False,
        ),
        Case(
            "iso-8859-1",
            REQUEST.replace(b'encoding="UTF-8"', b'encoding="ISO-8859-1"').replace(
                b'machinealias=""', b'machinealias="caf\xe9"'
            ),
            None,
        ),
        Case("utf8-bom", b"\xef\xbb\xbf" + REQUEST, None),
        Case("trailing-junk", REQUEST + b"\x00junk<x>", "not well-formed"),
        Case(
            "duplicate-attribute",
            REQUEST.replace(b"<request ", b'<request protocol="2.0" ', 1),
            "not well-formed",
        ),
        # update_engine writes MACHINE_ALIAS unescaped (reference §1.3): real, broken XML.
        Case(
            "unescaped-quote-in-alias",
            REQUEST.replace(b'machinealias=""', b'machinealias="rack "7""'),
            "not well-formed",
        ),
        Case("truncated", REQUEST[: len(REQUEST) * 2 // 3], "not well-formed"),
        Case("only-declaration", b'<?xml version="1.0" encoding="UTF-8"?>\n', "not well-formed", omaha=False),
        Case("response-posted-as-request", RESPONSE, "expected an Omaha <request>", omaha=False),
        Case("not-xml", b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "not well-formed", omaha=False),
    ]


# ----------------------------------------------------------------------------- fuzzing


@st.composite
def mutated_sample(draw: st.DrawFn) -> bytes:
    """A sample document with 1-6 byte-level edits (flips, cuts, XML-ish inserts, duplicated
    slices, truncation): reaches much deeper into the codec than random bytes."""
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "cut", "insert", "dup", "truncate"]))
        if op == "flip":
            data[at] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[at : at + draw(st.integers(1, 16))]
        elif op == "insert":
            data[at:at] = draw(st.sampled_from([b"<", b">", b'"', b"&", b"&amp;", b"<!DOCTYPE x>", b"\x00", b"\xff",
                                                b"<app>", b"</app>", b' a="1"', b"<![CDATA[x]]>", b"<?pi x?>"]))  # fmt: skip
        elif op == "dup":
            end = min(len(data), at + draw(st.integers(1, 64)))
            data[at:at] = data[at:end]
        else:
            del data[at:]
    return bytes(data)


hostile_bytes = st.binary(max_size=2048) | mutated_sample()
"""Arbitrary bytes or a mutated sample."""
