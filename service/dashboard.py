"""The browser dashboard: three HTML pages and the scripts they load, all shipped with the package.

The pages are static shells; their JavaScript (``service/static/*.js``) reads everything from the
REST API under ``/v1`` with the user's Bearer token, so the pages themselves hold no data and need no
auth.  Plotly.js is served from the installed ``plotly`` Python package, so nothing is fetched from
the network at run time.  Only the files listed in ``_ASSETS`` are served (no path is read from the
request).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, Response

router = APIRouter(include_in_schema=False)

_STATIC_DIR = Path(__file__).with_name("static")
_PLOTLY_JS = Path(str(files("plotly") / "package_data" / "plotly.min.js"))

# asset name -> (file, media type)
_ASSETS: dict[str, tuple[Path, str]] = {
    "plotly.min.js": (_PLOTLY_JS, "text/javascript"),
    "common.js": (_STATIC_DIR / "common.js", "text/javascript"),
    "jobs.js": (_STATIC_DIR / "jobs.js", "text/javascript"),
    "job.js": (_STATIC_DIR / "job.js", "text/javascript"),
    "compare.js": (_STATIC_DIR / "compare.js", "text/javascript"),
    "dashboard.css": (_STATIC_DIR / "dashboard.css", "text/css"),
}


def _page(name: str) -> FileResponse:
    # no-cache: a page is tiny and must pick up a new release's script names at once
    return FileResponse(_STATIC_DIR / name, media_type="text/html", headers={"Cache-Control": "no-cache"})


@router.get("/")
def jobs_page() -> FileResponse:
    """Jobs list and the submit form."""
    return _page("jobs.html")


@router.get("/jobs/{job_id}")
def job_page(job_id: str) -> FileResponse:
    """One job: live progress, Pareto scatter, per-layer heat map, trials, downloads."""
    return _page("job.html")


@router.get("/jobs/{job_id}/compare")
def compare_page(job_id: str) -> FileResponse:
    """Two front points side by side (``?a=<trial number>&b=<trial number>``)."""
    return _page("compare.html")


@router.get("/static/{name}")
def static_asset(name: str, request: Request) -> Response:
    """A listed asset, revalidated on every use (ETag, 304) so a new release is picked up at once
    while Plotly's 4.8 MB are not sent again."""
    asset = _ASSETS.get(name)
    if asset is None:
        raise HTTPException(status_code=404, detail=f"no static asset {name!r}")
    path, media_type = asset
    stat = path.stat()
    headers = {"Cache-Control": "no-cache", "ETag": f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'}
    if request.headers.get("if-none-match") == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    return FileResponse(path, media_type=media_type, headers=headers)
