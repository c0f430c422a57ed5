"""``zoo serve``: a local web page over one or more output folders of ``zoo run`` (the study live, the
leaderboards with budgets, comparisons, each run's page, and "try it" on your own images). Installed with
``pip install -e '.[serve]'``; see zoo.serve.app for the application and zoo.serve.study for what it reads."""
from __future__ import annotations

import ipaddress
import os
import sys

LOOPBACK_NAMES = {"localhost"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def missing_packages() -> list[str]:
    """The serve extra's packages this environment lacks."""
    import importlib.util

    wanted = {"starlette": "starlette", "uvicorn": "uvicorn", "multipart": "python-multipart", "PIL": "pillow"}
    return [package for module, package in wanted.items() if importlib.util.find_spec(module) is None]


def serve(folders, host: str = "127.0.0.1", port: int = 8000, token: str | None = None, models: int = 2,
          log=print) -> int:
    """Serve ``folders`` until interrupted. A host other than a loopback address needs a token."""
    from pathlib import Path

    from zoo.errors import ConfigError

    missing = missing_packages()
    if missing:
        raise ConfigError(f"zoo serve needs {', '.join(missing)}: pip install -e '.[serve]'")
    for folder in folders:
        if not Path(folder).is_dir():
            raise ConfigError(f"{folder} is not a folder: give the output folder of `zoo run` (runs/<suite>)")
    token = token or os.environ.get("ZOO_SERVE_TOKEN") or None
    if not is_loopback(host):
        print(f"zoo serve: warning: serving on {host} exposes these results (and a model to anyone who can reach "
              f"this port); every request must carry the token", file=sys.stderr, flush=True)
        if not token:
            raise ConfigError(f"--host {host} is not this machine alone: give --token SECRET (or ZOO_SERVE_TOKEN) "
                              f"so that only those who have it can read the study")
    import uvicorn

    from zoo.serve.app import make_app

    app = make_app(folders, token=token, models=models)
    for study in app.state.studies:
        study.warm()
    shown_host = f"[{host}]" if ":" in host else host
    address = f"http://{shown_host}:{port}/" + (f"?token={token}" if token else "")
    log(f"zoo serve: {', '.join(str(f) for f in folders)} at {address}  (Ctrl+C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0
