"""omaha-proxy's mitmproxy entry script: every addon, in chain order.

    mitmdump -s addons/omaha.py --mode reverse:https://public.update.flatcar-linux.net
    mitmweb  -s "$(omaha-proxy addon-path)"          # from an installed package

``addons/omaha.py`` in the source tree is a symlink to this file.
"""

from omaha_proxy.mitm import contentview  # noqa: F401  (importing registers the Omaha view)
from omaha_proxy.mitm.cache import OmahaCache
from omaha_proxy.mitm.control import OmahaControl
from omaha_proxy.mitm.guard import OmahaGuard
from omaha_proxy.mitm.observe import OmahaObserve
from omaha_proxy.mitm.replay import OmahaReplay

# Addons that answer before the upstream come first; the guard (huge bodies, upstream
# fallback) only acts on what is really forwarded; the logger comes last so that it sees the
# final response.
addons = [OmahaReplay(), OmahaControl(), OmahaCache(), OmahaGuard(), OmahaObserve()]
