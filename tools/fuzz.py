"""Long-running coverage-guided fuzzing of the codec with atheris (libFuzzer), by command.

    pip install atheris                       # optional; not a project dependency
    python tools/fuzz.py -max_total_time=600  # ten minutes; any libFuzzer flag works
    python tools/fuzz.py crash-<hash>         # re-run one input (e.g. a crash it saved)

The seed corpus is every sample in tests/data/ plus tests/fuzz_corpus/. The invariants are
those of tests/test_fuzz_codec.py (the bounded hypothesis run in CI): the parsers return a
document or raise CodecError, never anything else; ``sniff`` never raises; a parsed document
survives ``encode`` -> ``parse`` unchanged. A crash is written by libFuzzer to
``crash-<sha1>`` in the current directory: copy it into tests/fuzz_corpus/ (that makes it a
regression test) and fix the codec.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import atheris  # noqa: E402

with atheris.instrument_imports():
    from omaha_proxy.protocol import decode as codec
    from omaha_proxy.protocol.errors import CodecError


def one_input(data: bytes) -> None:
    codec.sniff(data)
    for fn in (codec.parse, codec.parse_request, codec.parse_response):
        try:
            doc = fn(data)
        except CodecError:
            continue
        again = codec.parse(codec.encode(doc))
        if again != doc:
            raise AssertionError(f"encode/parse changed the document:\n{doc!r}\n{again!r}")


def main() -> None:
    seeds = tempfile.mkdtemp(prefix="omaha-fuzz-corpus-")
    for source in (ROOT / "tests" / "data", ROOT / "tests" / "fuzz_corpus"):
        for path in sorted(source.glob("*")) if source.is_dir() else []:
            if path.is_file() and path.suffix != ".md":
                (Path(seeds) / path.name).write_bytes(path.read_bytes())
    args = sys.argv[:1] + [a for a in sys.argv[1:]]
    if not any(not a.startswith("-") for a in args[1:]):
        args.append(seeds)
    atheris.Setup(args, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
