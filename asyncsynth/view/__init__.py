"""``asyncsynth view``: a local, read-only web page over a run (GRA, S3 or ``run``).

    from asyncsynth.view import ViewServer

    with ViewServer("runs/gra", port=0) as server:   # a background thread
        print(server.url)

Served by the standard library on loopback (another ``host`` only when asked), from
files that ship in the package: no CDN, no build step, nothing to install. Large files
are paged by byte offset through an index kept in ``RUN_DIR/.asyncsynth-view/``.
"""

from .api import RowFilter, Viewer
from .server import DEFAULT_PORT, ViewServer

__all__ = ["DEFAULT_PORT", "RowFilter", "ViewServer", "Viewer"]
