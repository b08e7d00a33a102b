"""Type stub of the compiled walker (``_cwalk.pyx``); codec.py binds and calls it."""

from collections.abc import Callable, Mapping
from typing import Any

from omaha_proxy.protocol.model import Request, Response

def bind(
    *,
    specs: Mapping[type, Any],
    attrs: Callable[[Any, type], dict[str, Any]],
    unknown: Callable[[Any], Any],
    children: Callable[[Any], tuple[Any, ...]],
    data: Callable[[Any], Any],
    event: Callable[[Any], Any],
    check_root: Callable[[Any, str], None],
    attr_name: Callable[[str], str],
) -> None: ...
def walk_request(root: Any) -> Request: ...
def walk_response(root: Any) -> Response: ...
