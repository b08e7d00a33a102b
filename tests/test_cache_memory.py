"""Memory stays flat: ten machines download a large sparse payload through the cache at once."""

from __future__ import annotations

import pytest

from benchmarks.bench_cache_memory import TARGET_MB, run

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("regular", [False, True], ids=["reverse", "regular-proxy"])
def test_proxy_peak_rss_stays_under_300_mb_while_ten_machines_download_150_mb(regular):
    # In regular mode the payload GETs pass through mitmdump itself (streamed, not buffered:
    # buffered, this run peaks at about 3 GB).
    result = run(size_mb=150, machines=10, timeout=120, regular=regular)
    assert result["downloads_ok"] == 10 and result["updated"] == 10, result
    assert result["fetched_mb"] == 150 and result["served_mb"] == 1500, result
    assert result["peak_rss_mb"] < TARGET_MB, result
