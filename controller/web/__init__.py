"""The read-only web dashboard of `vmbackup serve --http HOST:PORT` (server-rendered HTML, inline SVG charts).

Usage::

    from controller.web.server import start
    srv = start(settings, "127.0.0.1:8470")     # token in $VMBACKUP_HOME/web-token (token.py); srv.close()

server.py: HTTP, token check, routes; pages.py: HTML; charts.py: SVG; token.py: the token file. The data is
controller.dashboard's (the same facts as `vmbackup dashboard`), read per request.
"""
