"""Offline update bundles: one release, exported on a connected machine, served air-gapped.

A bundle is a directory (or an uncompressed tar archive of one)::

    manifest.json               format, version, release, and each file's size + sha256
    offer.xml                   the upstream's response with the offer, byte-exact
    packages/<name>             every package the offer lists, verified at export

``manifest.json``::

    {"format": "omaha-proxy-bundle", "version": 1, "created": "2026-11-27T17:00:00Z",
     "source": "log omaha.db", "release": {"appid": "{e96281a6-...}", "version": "4152.2.0",
     "board": "amd64-usr", "track": "stable"},
     "offer": {"path": "offer.xml", "size": 1234, "sha256": "<hex>"},
     "files": [{"name": "flatcar_production_update.gz", "path": "packages/flatcar_production_update.gz",
                "size": 478150656, "sha256": "<hex>"}, ...]}

:func:`export_bundle` takes the offer from the SQLite log (the rule of
:meth:`Store.latest_offer`, with the asking machine's board) or a recording, downloads
every package from the offer's own URLs and verifies it against the offer (size,
postinstall sha256, ``hash_sha256``, ``hash``). :func:`load_bundle` refuses a bundle whose
manifest, offer or files do not check out (:class:`BundleError`), reading every file once. Serving is in :mod:`omaha_proxy.servers.bundle`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from omaha_proxy.payloads.fetch import download_verified, join_url
from omaha_proxy.payloads.verify import CHUNK_SIZE, Expected, PayloadMismatch, Verifier, expected_packages
from omaha_proxy.protocol.decode import parse_request, parse_response
from omaha_proxy.protocol.errors import BundleError, CodecError, PayloadError, StoreError
from omaha_proxy.protocol.model import Response, UpdateCheckResponse

log = logging.getLogger(__name__)

FORMAT = "omaha-proxy-bundle"
VERSION = 1
SUPPORTED_VERSIONS = (1,)
MANIFEST = "manifest.json"
OFFER = "offer.xml"
PACKAGES = "packages"


@dataclass(frozen=True, slots=True)
class BundleFile:
    """One package of a bundle: where it is and what it verified as."""

    name: str
    path: Path
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Bundle:
    """A loaded, verified bundle. ``offer`` is the upstream response; ``updatecheck`` its offer."""

    root: Path
    appid: str | None
    version: str
    board: str | None
    track: str | None
    offer_xml: bytes
    offer: Response
    updatecheck: UpdateCheckResponse
    files: tuple[BundleFile, ...]
    created: str | None = None
    source: str | None = None

    def file(self, name: str) -> Path | None:
        """The path of the package called ``name``, or None."""
        return next((f.path for f in self.files if f.name == name), None)


@dataclass(frozen=True, slots=True)
class FoundOffer:
    """An offer found in a log or recording, with what the asking machine said about itself."""

    xml: bytes
    appid: str | None
    version: str
    board: str | None
    track: str | None


# ------------------------------------------------------------------------- finding offers


def _offer_of(
    response: Response, version: str, appid: str | None
) -> tuple[str | None, UpdateCheckResponse] | None:
    """The first ``ok`` offer of ``version`` in ``response`` (for ``appid`` when given)."""
    for app in response.apps:
        uc = app.updatecheck
        if uc is None or uc.status != "ok" or not uc.urls or uc.manifest is None:
            continue
        if uc.manifest.version == version and (appid is None or same_appid(app.appid, appid)):
            return app.appid, uc
    return None


def same_appid(a: str | None, b: str | None) -> bool:
    # Nebraska accepts app ids with or without braces, in any case.
    return (a or "").strip("{}").lower() == (b or "").strip("{}").lower()


def offer_from_log(
    db: str | os.PathLike[str], version: str, *, appid: str | None = None, board: str | None = None,
    track: str | None = None,
) -> FoundOffer:  # fmt: skip
    """The newest offer of ``version`` the upstream sent, from the proxy's SQLite log.

    The same rule as :meth:`Store.latest_offer` (the upstream's own body, also when the proxy
    rewrote what it delivered), plus the board and track of the machine it was made to, so
    the bundle is only served to machines of that board. ``appid``/``board``/``track``
    narrow the search. Raises BundleError when the log has no such offer or cannot be read.
    """
    from omaha_proxy.store.store import Store  # the log is optional for everything else here

    if not Path(db).is_file():
        raise BundleError(f"no such log: {db}")
    try:
        with Store(Path(db)) as store:
            row = _latest_offer(store.db.conn, version, appid, board, track)
    except (StoreError, sqlite3.Error) as e:
        raise BundleError(f"cannot read offers from {db}: {e}") from e
    if row is None:
        wanted = ", ".join(f"{k} {v}" for k, v in (("appid", appid), ("board", board), ("track", track)) if v)
        raise BundleError(
            f"the log {db} holds no upstream offer of {version}" + (f" ({wanted})" if wanted else "")
        )
    raw, asked_board, asked_track = row
    return _found(raw, version, appid, board or asked_board, track or asked_track, origin=str(db))


def _latest_offer(
    conn: sqlite3.Connection, version: str, appid: str | None, board: str | None, track: str | None
) -> tuple[bytes, str | None, str | None] | None:
    """``(upstream body, board, track)`` of the newest upstream offer of ``version``."""
    sql = (
        "SELECT o.delivered, e.response_xml, e.upstream_response_xml, a.board, o.track FROM offers o"
        " JOIN exchanges e ON e.id = o.exchange_id"
        " LEFT JOIN apps a ON a.exchange_id = o.exchange_id AND a.appid IS o.appid"
        " WHERE o.status = 'ok' AND o.source = 'upstream' AND o.version = ?"
    )
    params: list[Any] = [version]
    for column, value in (("o.appid", appid), ("a.board", board), ("o.track", track)):
        if value is not None:
            sql += f" AND {column} = ?"
            params.append(value)
    row = conn.execute(sql + " ORDER BY o.id DESC LIMIT 1", params).fetchone()
    if row is None:
        return None
    body = row[1] if row[0] else row[2]
    return (body.encode() if isinstance(body, str) else body), row[3] or None, row[4] or None


def offer_from_exchanges(
    exchanges: Iterable[tuple[bytes, bytes, int]], version: str, *, origin: str, appid: str | None = None,
    board: str | None = None, track: str | None = None,
) -> FoundOffer:  # fmt: skip
    """The last offer of ``version`` among ``(request body, response body, HTTP status)``
    triples, oldest first (for that appid/board/track when given).

    Raises BundleError when none of them holds such an offer.
    """
    for request_body, response_body, status in reversed(list(exchanges)):
        if status != 200:
            continue
        try:
            response = parse_response(response_body)
            request = parse_request(request_body)
        except CodecError:
            continue
        found = _offer_of(response, version, appid)
        if found is None:
            continue
        asked = next((a for a in request.apps if same_appid(a.appid, found[0])), None)
        if board is not None and (asked is None or asked.board != board):
            continue
        if track is not None and (asked is None or asked.track != track):
            continue
        return _found(response_body, version, appid, board or (asked.board if asked else None),
                      track or (asked.track if asked else None), origin=origin)  # fmt: skip
    raise BundleError(f"the {origin} holds no offer of {version}")


def _found(
    raw: bytes, version: str, appid: str | None, board: str | None, track: str | None, origin: str
) -> FoundOffer:
    try:
        found = _offer_of(parse_response(raw), version, appid)
    except CodecError as e:
        raise BundleError(f"the offer of {version} in {origin} does not parse: {e}") from e
    if found is None:
        raise BundleError(f"the response found in {origin} offers no {version}")
    return FoundOffer(raw, found[0], version, board, track)


# ------------------------------------------------------------------------------- export


def export_bundle(
    offer: FoundOffer, output: str | os.PathLike[str], *, source: str | None = None, timeout: float = 60.0
) -> dict[str, Any]:
    """Write a bundle of ``offer`` to ``output``: a directory, or a tar archive when the name
    ends in ``.tar``. Every package is downloaded from the offer's URLs (in order) and
    verified, then the whole bundle is loaded back as :func:`load_bundle` would.

    Returns the manifest written. Raises BundleError when a package cannot be fetched and
    verified, or when ``output`` exists (a directory must be empty).
    """
    out = Path(output)
    if out.suffix == ".tar":
        if out.exists():
            raise BundleError(f"{out} already exists")
        with tempfile.TemporaryDirectory(prefix=".bundle-", dir=out.parent) as tmp:
            root = Path(tmp) / "bundle"
            manifest = _write_bundle(offer, root, source, timeout)
            load_bundle(root)
            partial = out.with_name(out.name + ".partial")
            with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
                for entry in sorted(root.rglob("*")):
                    tar.add(entry, arcname=entry.relative_to(root).as_posix(), recursive=False)
            os.replace(partial, out)
        return manifest
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out} exists and is not an empty directory")
    manifest = _write_bundle(offer, out, source, timeout)
    load_bundle(out)
    return manifest


def _write_bundle(offer: FoundOffer, root: Path, source: str | None, timeout: float) -> dict[str, Any]:
    uc = _offer_of(parse_response(offer.xml), offer.version, offer.appid)
    assert uc is not None  # FoundOffer guarantees it
    updatecheck = uc[1]
    manifest = updatecheck.manifest
    assert manifest is not None
    expected = expected_packages(manifest)
    if not expected:
        raise BundleError(f"the offer of {offer.version} lists no package")
    (root / PACKAGES).mkdir(parents=True, exist_ok=True)
    codebases = [u.codebase for u in updatecheck.urls or () if u.codebase]
    files = []
    for exp in expected:
        _check_name(exp.name)
        target = root / PACKAGES / exp.name
        errors = []
        for codebase in codebases:
            url = join_url(codebase, exp.name)
            try:
                digest = download_verified(
                    url, exp, target.with_name(exp.name + ".partial"), target, timeout=timeout
                )
                break
            except PayloadError as e:
                errors.append(f"{url}: {e}")
        else:
            raise BundleError(f"cannot fetch a verified {exp.name}: " + "; ".join(errors))
        log.info("bundle: %s verified (%d bytes, sha256 %s)", exp.name, digest.size, digest.sha256_hex)
        files.append({"name": exp.name, "path": f"{PACKAGES}/{exp.name}", "size": digest.size,
                      "sha256": digest.sha256_hex})  # fmt: skip
    (root / OFFER).write_bytes(offer.xml)
    document = {
        "format": FORMAT,
        "version": VERSION,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": source,
        "release": {
            "appid": offer.appid,
            "version": offer.version,
            "board": offer.board,
            "track": offer.track,
        },
        "offer": {"path": OFFER, "size": len(offer.xml), "sha256": hashlib.sha256(offer.xml).hexdigest()},
        "files": files,
    }
    (root / MANIFEST).write_text(json.dumps(document, indent=2) + "\n")
    return document


def _check_name(name: str) -> None:
    if not name or "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
        raise BundleError(f"refusing package name {name!r}: not a plain file name")


# --------------------------------------------------------------------------------- load


def load_bundle(path: str | os.PathLike[str], *, extract_to: str | os.PathLike[str] | None = None) -> Bundle:
    """Load and verify the bundle at ``path`` (a directory or a ``.tar`` archive).

    An archive is extracted to ``extract_to`` (default: a new temporary directory, which the
    caller may remove after use). Every file is read once and checked against the manifest,
    and every package against the offer. Raises BundleError saying what is wrong.
    """
    root = Path(path)
    if root.is_file() and tarfile.is_tarfile(root):
        target = Path(extract_to) if extract_to else Path(tempfile.mkdtemp(prefix="omaha-bundle-"))
        try:
            with tarfile.open(root) as tar:
                tar.extractall(target, filter="data")
        except (tarfile.TarError, OSError) as e:
            raise BundleError(f"cannot extract {root}: {e}") from e
        root = target
    if not root.is_dir():
        raise BundleError(f"{path} is not a bundle (neither a directory nor a tar archive)")
    manifest = _read_manifest(root)
    offer_entry = manifest.get("offer") or {}
    offer_path = _inside(root, offer_entry.get("path"), "offer")
    offer_xml = _checked_bytes(offer_path, offer_entry)
    release = manifest.get("release") or {}
    version = release.get("version")
    if not isinstance(version, str) or not version:
        raise BundleError(f"{root / MANIFEST}: release.version is missing")
    try:
        offer = parse_response(offer_xml)
        found = _offer_of(offer, version, release.get("appid"))
    except CodecError as e:
        raise BundleError(f"{offer_path}: not an Omaha response: {e}") from e
    if found is None:
        raise BundleError(f"{offer_path}: offers no {version}")
    updatecheck = found[1]
    assert updatecheck.manifest is not None
    listed = {f.get("name"): f for f in manifest.get("files") or [] if isinstance(f, dict)}
    files = []
    for exp in expected_packages(updatecheck.manifest):
        entry = listed.get(exp.name)
        if entry is None:
            raise BundleError(f"incomplete bundle: {exp.name} (listed in the offer) is not in the manifest")
        files.append(_checked_package(_inside(root, entry.get("path"), exp.name), entry, exp))
    return Bundle(
        root=root, appid=found[0], version=version, board=release.get("board"), track=release.get("track"),
        offer_xml=offer_xml, offer=offer, updatecheck=updatecheck, files=tuple(files),
        created=manifest.get("created"), source=manifest.get("source"),
    )  # fmt: skip


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise BundleError(f"incomplete bundle: {path} is missing") from e
    except (OSError, ValueError) as e:
        raise BundleError(f"{path} is not readable JSON: {e}") from e
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise BundleError(f"{path} is not an omaha-proxy bundle manifest (format must be {FORMAT!r})")
    if document.get("version") not in SUPPORTED_VERSIONS:
        raise BundleError(
            f"{path}: bundle format version {document.get('version')!r} is not supported "
            f"(supported: {', '.join(map(str, SUPPORTED_VERSIONS))})"
        )
    return document


def _inside(root: Path, relative: object, what: str) -> Path:
    if not isinstance(relative, str) or not relative:
        raise BundleError(f"{root / MANIFEST}: no path for {what}")
    rel = PurePosixPath(relative)
    if rel.is_absolute() or ".." in rel.parts:
        raise BundleError(f"{root / MANIFEST}: path {relative!r} of {what} leaves the bundle")
    path = root.joinpath(*rel.parts)
    if not path.is_file():
        raise BundleError(f"incomplete bundle: {relative} is missing")
    return path


def _checked_bytes(path: Path, entry: dict[str, Any]) -> bytes:
    data = path.read_bytes()
    if len(data) != entry.get("size") or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise BundleError(f"tampered bundle: {path.name} does not match the manifest's size and sha256")
    return data


def _checked_package(path: Path, entry: dict[str, Any], expected: Expected) -> BundleFile:
    size = path.stat().st_size
    if size != entry.get("size"):
        raise BundleError(
            f"tampered or incomplete bundle: {path.name} has {size} bytes, manifest says {entry.get('size')}"
        )
    verifier = Verifier(expected)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK_SIZE):
                verifier.update(chunk)
        digest = verifier.finish()
    except PayloadMismatch as e:
        raise BundleError(f"tampered bundle: {e}") from e
    except OSError as e:
        raise BundleError(f"cannot read {path}: {e}") from e
    if digest.sha256_hex != entry.get("sha256"):
        raise BundleError(f"tampered bundle: {path.name}'s sha256 {digest.sha256_hex} is not the manifest's")
    return BundleFile(expected.name, path, size, digest.sha256_hex)


def remove_extracted(bundle: Bundle, source: str | os.PathLike[str]) -> None:
    """Delete the temporary directory a tar ``source`` was extracted to (no-op for a directory)."""
    if Path(source).is_file() and bundle.root != Path(source):
        shutil.rmtree(bundle.root, ignore_errors=True)
