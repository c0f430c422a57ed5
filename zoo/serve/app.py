"""The web application of ``zoo serve`` (Starlette, jinja2 templates, matplotlib charts, Pillow thumbnails).

Read-only over the served folders: every route reads; none changes, deletes or starts a run. Names from the
URL reach the disk only through zoo.serve.study.Study's checked paths. User-supplied text (class names, run
ids, file names, errors) is escaped by the templates' autoescaping and set with ``textContent`` by the
page's script.
"""
from __future__ import annotations

import base64
import hmac
import io
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from jinja2 import Environment, PackageLoader
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from zoo.serve.study import NotServed, Study

MAX_UPLOAD_FILES = 16
MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # per image
MAX_REQUEST_BYTES = MAX_UPLOAD_FILES * MAX_UPLOAD_BYTES
TOKEN_COOKIE = "zoo_serve_token"
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
                    [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255],
                    [170, 110, 40], [255, 250, 200], [128, 0, 0], [170, 255, 195]], dtype=np.uint8)


class Models:
    """Finished runs' Predictors kept loaded between requests, the least recently used dropped beyond
    ``capacity``; one prediction at a time per model (a Keras model is not safe to call concurrently)."""

    def __init__(self, capacity: int = 2):
        self.capacity = max(1, int(capacity))
        self._kept: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run_dir: Path):
        from zoo.predict import Predictor

        key = str(run_dir)
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key]
        entry = (Predictor(run_dir), threading.Lock())
        with self._lock:
            entry = self._kept.setdefault(key, entry)
            self._kept.move_to_end(key)
            while len(self._kept) > self.capacity:
                self._kept.popitem(last=False)
        return entry


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """``mask``'s classes coloured over an RGB ``image`` (resized to it, nearest neighbour)."""
    from PIL import Image

    if mask.shape != image.shape[:2]:
        mask = np.asarray(Image.fromarray(mask.astype(np.uint16 if mask.max(initial=0) > 255 else np.uint8))
                          .resize((image.shape[1], image.shape[0]), Image.NEAREST))
    colours = PALETTE[mask.astype(np.int64) % len(PALETTE)]
    return (image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha).astype(np.uint8)


def thumbnail(image: np.ndarray, size: int = 160) -> bytes:
    from PIL import Image

    picture = Image.fromarray(image)
    scale = size / max(picture.size)
    picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                             Image.NEAREST if scale > 1 else Image.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def make_app(folders, token: str | None = None, models: int = 2) -> Starlette:
    """The application over output ``folders`` (each a folder ``zoo run`` writes); ``token``: required
    on every request when given (``?token=`` once, then a cookie, or an ``Authorization: Bearer``)."""
    studies = [Study(folder) for folder in folders]
    kept = Models(models)
    templates = Environment(loader=PackageLoader("zoo.serve", "templates"), autoescape=True)
    templates.filters["seconds"] = _format_seconds
    templates.filters["number"] = _format_number
    templates.filters["thousands"] = _format_thousands
    templates.filters["inline_md"] = _inline_markdown

    def study_of(request: Request) -> tuple[int, Study]:
        index = request.path_params["study"]
        if not 0 <= index < len(studies):
            raise HTTPException(404, "no such study")
        return index, studies[index]

    def page(name: str, request: Request, status: int = 200, **values) -> HTMLResponse:
        text = templates.get_template(name).render(studies=studies, request=request, **values)
        return HTMLResponse(text, status_code=status)

    async def index(request: Request):
        if len(studies) == 1:
            return RedirectResponse("/s/0/", status_code=307)
        return page("index.html.j2", request, listed=[(i, s.name, str(s.root)) for i, s in enumerate(studies)])

    async def study_page(request: Request):
        number, study = study_of(request)
        return page("study.html.j2", request, number=number, study=study,
                    state=await run_in_threadpool(study.runs))

    async def study_api(request: Request):
        _, study = study_of(request)
        return JSONResponse(await run_in_threadpool(study.runs))

    async def leaderboard(request: Request):
        number, study = study_of(request)
        latency, size = _budget(request, "latency"), _budget(request, "size")
        boards = await run_in_threadpool(study.leaderboards, latency, size)
        return page("leaderboard.html.j2", request, number=number, study=study, boards=boards,
                    latency=latency, size=size)

    async def compare(request: Request):
        number, study = study_of(request)
        run_ids = [r for r in request.query_params.getlist("run") if r]
        found = await run_in_threadpool(_comparison, study, run_ids)
        return page("compare.html.j2", request, number=number, study=study, run_ids=run_ids, **found)

    async def run_page(request: Request):
        number, study = study_of(request)
        run_id = request.path_params["run_id"]
        details = await run_in_threadpool(_served, study.run_details, run_id)
        worst = await run_in_threadpool(study.worst_examples, run_id)
        return page("run.html.j2", request, number=number, study=study, run=details, worst=worst,
                    max_files=MAX_UPLOAD_FILES, max_megabytes=MAX_UPLOAD_BYTES // (1024 * 1024))

    async def run_file(request: Request):
        _, study = study_of(request)
        path = _served(study.run_file, request.path_params["run_id"], request.path_params["path"])
        return FileResponse(path, filename=path.name)

    async def curves_png(request: Request):
        _, study = study_of(request)
        run_ids = request.query_params.getlist("run") or [request.path_params.get("run_id")]
        data = await run_in_threadpool(_curves, study, [r for r in run_ids if r])
        return Response(data, media_type="image/png")

    async def confusion_png(request: Request):
        _, study = study_of(request)
        data = await run_in_threadpool(_confusion, study, request.path_params["run_id"])
        return Response(data, media_type="image/png")

    async def example_png(request: Request):
        _, study = study_of(request)
        run_id, index = request.path_params["run_id"], request.path_params["index"]
        data = await run_in_threadpool(_example, study, run_id, index, request.query_params.get("mask"))
        return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    async def predict(request: Request):
        _, study = study_of(request)
        run_dir = _served(study.run_dir, request.path_params["run_id"])
        length = int(request.headers.get("content-length") or 0)
        if length > MAX_REQUEST_BYTES:
            return JSONResponse({"error": f"the upload is {length / 1e6:.1f} MB; send at most {MAX_UPLOAD_FILES} "
                                          f"images of at most {MAX_UPLOAD_BYTES // (1024 * 1024)} MB each"},
                                status_code=413)
        try:
            form = await request.form(max_files=MAX_UPLOAD_FILES, max_fields=16)
        except Exception as error:  # noqa: BLE001  a malformed or oversized form is the user's to fix
            return JSONResponse({"error": f"the upload cannot be read ({getattr(error, 'detail', error)}); send up "
                                          f"to {MAX_UPLOAD_FILES} images as multipart form data"}, status_code=400)
        uploads = [item for item in form.getlist("images") if hasattr(item, "filename")]
        if not uploads:
            return JSONResponse({"error": "no image was sent: choose or drop image files"}, status_code=400)
        files = []
        for upload in uploads:
            content = await upload.read(MAX_UPLOAD_BYTES + 1)
            files.append(((upload.filename or "image")[:200], content))  # shown escaped, never used as a path
        try:
            top_k = min(10, max(1, int(form.get("top_k") or 5)))
        except ValueError:
            top_k = 5
        answers = await run_in_threadpool(_predict, kept, run_dir, files, top_k)
        return JSONResponse({"answers": answers})

    async def not_found(request: Request, exc: HTTPException):
        return PlainTextResponse(str(exc.detail) if exc.status_code != 404 else "not found", status_code=exc.status_code)

    routes = [
        Route("/", index),
        Route("/s/{study:int}/", study_page),
        Route("/s/{study:int}/api/runs", study_api),
        Route("/s/{study:int}/leaderboard", leaderboard),
        Route("/s/{study:int}/compare", compare),
        Route("/s/{study:int}/compare/curves.png", curves_png),
        Route("/s/{study:int}/run/{run_id}", run_page),
        Route("/s/{study:int}/run/{run_id}/curves.png", curves_png),
        Route("/s/{study:int}/run/{run_id}/confusion.png", confusion_png),
        Route("/s/{study:int}/run/{run_id}/example/{index:int}.png", example_png),
        Route("/s/{study:int}/run/{run_id}/files/{path:path}", run_file),
        Route("/s/{study:int}/run/{run_id}/predict", predict, methods=["POST"]),
        Mount("/static", StaticFiles(packages=[("zoo.serve", "static")]), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found})
    app.state.studies = studies
    if token:
        app.add_middleware(_TokenCheck, token=token)
    return app


class _TokenCheck:
    """Every request must carry the token: ``?token=`` (then kept in a cookie), the cookie, or a bearer
    header; anything else gets 401 and reads nothing."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        given = (request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE)
                 or request.headers.get("authorization", "").removeprefix("Bearer ").strip())
        if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
            response = PlainTextResponse("a token is required: open the address zoo serve printed (…?token=…)",
                                         status_code=401)
            return await response(scope, receive, send)
        if request.query_params.get("token"):
            async def send_with_cookie(message):
                if message["type"] == "http.response.start":
                    cookie = f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                    message.setdefault("headers", []).append((b"set-cookie", cookie.encode()))
                await send(message)
            return await self.app(scope, receive, send_with_cookie)
        return await self.app(scope, receive, send)


def _served(function, *args):
    try:
        return function(*args)
    except NotServed:
        raise HTTPException(404) from None


def _budget(request: Request, name: str):
    value = request.query_params.get(name, "").strip()
    try:
        number = float(value) if value else None
    except ValueError:
        return None
    return number if number is not None and number > 0 else None


def _comparison(study: Study, run_ids: list[str]) -> dict:
    """The paired tests of ``zoo compare`` between the first run and each other (Holm-corrected when there
    are several), and the runs' per-class precision and recall side by side."""
    from zoo import stats

    if len(run_ids) < 2:
        return {"error": "choose two or more runs to compare (tick them on the leaderboard)", "tests": [],
                "classes": [], "runs": [], "disagreements": []}
    try:
        runs = [study.run_details(run_id) for run_id in run_ids]
    except NotServed as missing:
        raise HTTPException(404) from missing
    tests, error = [], None
    for other in run_ids[1:]:
        try:
            tests.append(stats.compare_runs(study.root, run_ids[0], other))
        except (stats.ComparisonError, OSError, KeyError, ValueError) as problem:
            error = str(problem)
    if len(tests) > 1:
        for test, adjusted in zip(tests, stats.holm([t["p_value"] for t in tests])):
            test["p_holm"] = adjusted
    classes = []
    names = [row["class"] for row in runs[0]["metrics"].get("per_class", [])]
    for name in names:
        cells = []
        for run in runs:
            found = next((row for row in run["metrics"].get("per_class", []) if row["class"] == name), {})
            cells.append({"precision": found.get("precision"), "recall": found.get("recall")})
        classes.append({"name": name, "cells": cells})
    return {"error": error, "tests": tests, "classes": classes, "runs": runs,
            "disagreements": study.disagreements(run_ids)}


def _curves(study: Study, run_ids: list[str]) -> bytes:
    from zoo.report import figures

    histories = {}
    for run_id in run_ids:
        history = _served(study.history, run_id)
        if history is not None and "epoch" in history:
            histories[run_id] = history
    if not histories:
        raise HTTPException(404, "no training history")
    metric = "accuracy" if any("accuracy" in h for h in histories.values()) else "loss"
    return figures.training_curves(histories, metric, "training curves", io.BytesIO()).getvalue()


def _confusion(study: Study, run_id: str) -> bytes:
    from zoo.report import figures

    metrics = _served(study.run_details, run_id)["metrics"]
    if not metrics.get("confusion_matrix"):
        raise HTTPException(404, "no confusion matrix")
    return figures.confusion_heatmap(metrics["confusion_matrix"], metrics.get("class_names") or [], run_id,
                                     io.BytesIO()).getvalue()


def _example(study: Study, run_id: str, index: int, mask: str | None) -> bytes:
    found = _served(study.test_example, run_id, index)
    if found is None:
        raise HTTPException(404, "this dataset's images cannot be read here")
    image, true_mask = found
    if mask in ("true", "predicted") and true_mask is not None:
        chosen = true_mask
        if mask == "predicted":
            predictions = study.predictions(run_id)
            chosen = predictions["y_pred"][index] if predictions is not None else true_mask
        image = overlay(image, np.asarray(chosen))
    return thumbnail(image)


def _predict(models: Models, run_dir: Path, files: list[tuple[str, bytes]], top_k: int) -> list[dict]:
    """Each uploaded image through the run's Predictor (the same one ``zoo predict`` uses): its top-k,
    a mask overlaid for segmentation, or why it could not be read."""
    from PIL import Image

    try:
        predictor, lock = models.get(run_dir)
    except Exception as error:  # noqa: BLE001  a damaged model is the page's message, not a server error
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        return [{"name": name, "error": f"the run's model cannot be loaded: {first}"} for name, _ in files]
    answers = []
    with tempfile.TemporaryDirectory(prefix="zoo-serve-") as folder:
        for position, (name, content) in enumerate(files):
            if len(content) > MAX_UPLOAD_BYTES:
                answers.append({"name": name, "error": f"larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB"})
                continue
            suffix = Path(name.replace("\\", "/").rsplit("/", 1)[-1]).suffix.lower()
            path = Path(folder) / f"{position}{suffix if suffix.isascii() and suffix[1:].isalnum() else ''}"
            path.write_bytes(content)
            with lock:
                answer = predictor.answer([str(path)], top_k=top_k, mask_dir=folder, threads=1)[0]
            error = answer["error"].replace(str(path), name) if answer["error"] else None  # not our temp path
            item = {"name": name, "error": error, "top_k": answer.get("top_k")}
            if answer.get("mask"):
                try:
                    picture = _visible(path, predictor.input.max_pixel_value)
                    mask = np.asarray(Image.open(answer["mask"]))
                    item["overlay"] = "data:image/png;base64," + base64.b64encode(
                        thumbnail(overlay(picture, mask), 256)).decode()
                except Exception:  # noqa: BLE001  the classes stay; only the picture is missing
                    item["overlay"] = None
            answers.append(item)
    return answers


def _inline_markdown(text: str):
    """The recommendation's **bold** as HTML, everything else escaped (the report's own rule)."""
    from markupsafe import Markup

    from zoo.report.render import _inline_markdown as escaped_with_bold

    return Markup(escaped_with_bold(text))


def _visible(path: Path, max_pixel_value: float) -> np.ndarray:
    """An input image as 8-bit RGB for the page: read as the model reads it (any band count and bit
    depth), its first three bands shown (a single band as grey)."""
    from zoo.data.images import read_image, to_dataset_scale

    array = to_dataset_scale(read_image(path), max_pixel_value) * np.float32(255.0 / max_pixel_value)
    array = np.clip(array, 0, 255).astype(np.uint8)
    return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array[..., :3]


def _missing(value) -> bool:
    """None, NaN, a field a damaged or older file does not have (jinja's Undefined), or not a number."""
    from jinja2 import Undefined

    if value is None or isinstance(value, Undefined):
        return True
    try:
        return float(value) != float(value)
    except (TypeError, ValueError):
        return True


def _format_seconds(value) -> str:
    if _missing(value):
        return "–"
    value = float(value)
    if value < 60:
        return f"{value:.0f}s"
    if value < 3600:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    return f"{int(value // 3600)}h{int(value % 3600 // 60):02d}m"


def _format_number(value, digits: int = 4) -> str:
    if _missing(value):
        return "–"
    return f"{float(value):.{digits}f}"


def _format_thousands(value) -> str:
    """A count or a rate as the report writes it: whole, with thousands separated (94,115 parameters)."""
    if _missing(value):
        return "–"
    return f"{round(float(value)):,}"
