"""`cxrlab serve`: a FastAPI app with a JSON API, a web page to try the model, and the quiz.

Safety: binds 127.0.0.1 by default (the CLI), uploads are capped (413) and must look like an
image (415), images with huge declared dimensions are refused before decoding (400), quiz images
are addressed by number only, and every error is JSON without a stack trace.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import logging
import random
from collections import OrderedDict
from pathlib import Path
from typing import Optional

from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import CxrlabError
from ..saliency import MAP_LIMITS
from ..saliency.methods import DEFAULT_MAP_METHOD, METHODS
from .batcher import MicroBatcher
from .predictor import Predictor, heatmap_png

STATIC = Path(__file__).with_name("static")
MAX_PIXELS = 64_000_000  # ~8000 x 8000: far above any chest X-ray, far below a decompression bomb
UPLOAD_TIMEOUT_S = 30.0  # an upload that sends nothing for this long is closed (a stalled client holds a worker)
QUIZ_SESSIONS = 1000  # the quiz remembers this many players' draws, oldest forgotten first
log = logging.getLogger("cxrlab.serve")


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        self.status, self.message = status, message


def sniff(data: bytes) -> str | None:
    """The image kind from its first bytes, or None: trust content, not the file name."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) > 132 and data[128:132] == b"DICM":
        return "dicom"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data.startswith(b"BM"):
        return "bmp"
    return None


def check_dimensions(data: bytes, kind: str) -> None:
    if kind == "dicom":
        import pydicom

        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        w, h = int(getattr(ds, "Columns", 0)), int(getattr(ds, "Rows", 0))
    else:
        try:
            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                w, h = im.size
        except Image.DecompressionBombError:
            raise ApiError(400, f"image dimensions are too large (limit {MAX_PIXELS:,} pixels)") from None
        except Exception:
            raise ApiError(400, "the image header cannot be read") from None
    if w * h > MAX_PIXELS:
        raise ApiError(400, f"image dimensions {w} x {h} are too large (limit {MAX_PIXELS:,} pixels)")


class UploadLimit:
    """Refuses an oversized POST /api/predict from its Content-Length, before the body is read, and
    closes an upload that stalls (no bytes for `timeout` seconds) with 408. Plain ASGI: Starlette's
    BaseHTTPMiddleware (`@app.middleware`) adds a task and streams per request."""

    def __init__(self, app, limit: int, label: str, timeout: float = UPLOAD_TIMEOUT_S):
        self.app, self.limit, self.label, self.timeout = app, limit, label, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/api/predict":
            length = dict(scope["headers"]).get(b"content-length")
            refusal = None
            if length is None:
                refusal = JSONResponse({"error": "Content-Length required"}, status_code=411)
            elif not length.isdigit():
                refusal = JSONResponse({"error": "Content-Length is not a number"}, status_code=400)
            elif int(length) > self.limit:
                refusal = JSONResponse({"error": f"upload larger than {self.label}"}, status_code=413)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
            receive = self._timed(receive)
        await self.app(scope, receive, send)

    def _timed(self, receive):
        async def timed_receive():
            try:
                return await asyncio.wait_for(receive(), self.timeout)
            except asyncio.TimeoutError:  # an HTTPException: FastAPI's body parser passes it on unchanged
                raise StarletteHTTPException(408, f"upload stalled: no data for {self.timeout:g} s") from None
        return timed_receive


class Answer(BaseModel):
    id: int
    guess: str  # "normal" or "finding"


class QuizDraws:
    """Quiz items without replacement per player (session): a shuffled deck each, dealt in order
    and reshuffled when used up. Bounded: the oldest sessions are forgotten."""

    def __init__(self, n: int, seed: int | None):
        self.n, self.rng, self.decks = n, random.Random(seed), OrderedDict()

    def next(self, session: str) -> int:
        deck = self.decks.pop(session, None) or self.rng.sample(range(self.n), self.n)
        item = deck.pop()
        self.decks[session] = deck
        while len(self.decks) > QUIZ_SESSIONS:
            self.decks.popitem(last=False)
        return item


def score_uploads(predictor: Predictor, items: list) -> list:
    """(bytes, name, heatmap target) per request -> (probability, map), or that request's own error: what
    the server's batcher calls. Decoding happens here, on the model's thread, before the forward pass:
    decoded in the request threads it ran beside the forward pass and slowed it (a batch's scoring 53 ->
    31 ms, p50 at concurrency 8 107-125 -> 94-103 ms; BENCHMARKS.md, session 13)."""
    pixels, out = [], [None] * len(items)
    for i, (data, name, target) in enumerate(items):
        try:
            pixels.append((i, predictor.decode(data, name), target))
        except Exception as exc:  # a bad upload fails alone, with its own error, not its batch
            out[i] = exc
    if pixels:
        for (i, _, _), result in zip(pixels, predictor.score_batch([(px, t) for _, px, t in pixels])):
            out[i] = result
    return out


def create_app(run_dir: str | Path, max_upload_mb: float = 20.0, seed: int | None = None, docs: bool = False,
               upload_timeout: float = UPLOAD_TIMEOUT_S, site: str | None = None, backend: str = "auto") -> FastAPI:
    """docs: serve /docs and /redoc, whose scripts FastAPI loads from a public CDN (blank offline);
    the OpenAPI schema itself is always at /openapi.json. site: call at that site's operating point.
    backend: torch, onnxruntime or auto (RunModel's choice)."""
    predictor = Predictor(run_dir, device="cpu", backend=backend, site=site)
    limit = int(max_upload_mb * 1024 * 1024)
    split = predictor.run.read_split()
    quiz = split[split["split"] == "test"].reset_index(drop=True)
    draws = QuizDraws(len(quiz), seed)
    # what always answering the commoner class scores: the bar a person (or model) must beat, not 50%
    positives = int(quiz["y"].sum()) if len(quiz) else 0
    majority = {"label": predictor.positive if 2 * positives > len(quiz) else predictor.negative,
                "rate": max(positives, len(quiz) - positives) / len(quiz) if len(quiz) else None}

    batcher = MicroBatcher(functools.partial(score_uploads, predictor))
    app = FastAPI(title="cxrlab", description=f"{predictor.positive} vs {predictor.negative} "
                  f"({predictor.spec.name}). Not a medical device.", version="1",
                  docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(CxrlabError)
    async def _user_error(request: Request, exc: CxrlabError):
        return JSONResponse({"error": str(exc).split(". Fix or remove")[0]}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):  # unknown routes, wrong methods
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": f"invalid request: {where}: {first.get('msg', 'invalid')}"}, status_code=422)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("internal error")
        return JSONResponse({"error": "internal error"}, status_code=500)

    app.add_middleware(UploadLimit, limit=limit, label=f"{max_upload_mb:g} MB", timeout=upload_timeout)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index():
        return (STATIC / "index.html").read_text()

    @app.get("/quiz", response_class=HTMLResponse, include_in_schema=False)
    def quiz_page():
        return (STATIC / "quiz.html").read_text()

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return Response(status_code=204)

    @app.get("/api/health")
    def health():
        return {"status": "ok", "model": predictor.spec.name}

    @app.get("/api/model")
    def model_card():
        return {**predictor.card, "methods": list(METHODS), "default_method": DEFAULT_MAP_METHOD, "quiz_images": len(quiz),
                "quiz_majority": majority}

    @app.post("/api/predict")
    async def predict(file: UploadFile = File(...), heatmap: bool = Query(False),
                      method: str = Query(DEFAULT_MAP_METHOD),
                      finding: Optional[str] = Query(None, description="multi-label: the finding the heatmap is for "
                                                     "(default: the most probable)")):
        data = await file.read(limit + 1)
        if len(data) > limit:
            raise ApiError(413, f"upload larger than {max_upload_mb:g} MB")
        kind = sniff(data)
        if kind is None:
            raise ApiError(415, "not a supported image: send PNG, JPEG, TIFF, BMP or DICOM")
        if heatmap and method not in METHODS:
            raise ApiError(400, f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        if finding is not None and finding not in (predictor.findings or []):
            raise ApiError(400, f"unknown finding {finding!r}; this model scores "
                                f"{', '.join(predictor.findings or [predictor.positive])}")
        check_dimensions(data, kind)
        name = "upload.dcm" if kind == "dicom" else f"upload.{kind}"
        # decoding and scoring leave the event loop free (the batcher's thread); concurrent requests share one forward pass
        target = ((method, finding) if finding else method) if heatmap else None
        scored = await batcher.submit((data, name, target))
        if isinstance(scored, Exception):
            raise scored
        probability, cam = scored
        result = predictor.result(name, probability, cam)
        body = {"probability": result.probability, "label": result.label, "positive": result.positive,
                "threshold": result.threshold, "policy": result.policy, "model": predictor.spec.name}
        if result.findings:  # a multi-label run: every finding, highest probability first
            body["findings"] = result.findings
            if heatmap:
                body["heatmap_finding"] = finding or result.findings[0]["finding"]
        if result.heatmap is not None:
            body["heatmap_png"] = base64.b64encode(await run_in_threadpool(heatmap_png, result.heatmap)).decode()
            body["method"] = method
            body["heatmap_resolution"] = predictor.heatmap_resolution  # what the map can show
            body["heatmap_note"] = MAP_LIMITS
        return body

    @app.get("/api/quiz/next")
    def quiz_next(session: str = Query("", max_length=64, description="A player's id: no image twice per round")):
        if quiz.empty:
            raise ApiError(404, "this run has no test images for the quiz")
        return {"id": draws.next(session), "labels": {"normal": predictor.negative, "finding": predictor.positive},
                "majority": majority}

    def _quiz_row(i: int):
        if not 0 <= i < len(quiz):
            raise ApiError(404, "no such quiz image")
        return quiz.iloc[i]

    def _quiz_pixels(i: int):
        """The quiz item's pixels. A file that cannot be read is logged here with its path; the
        answer names only the item number: the server never tells a client its file system."""
        try:
            return predictor.read(str(_quiz_row(i)["path"]))
        except CxrlabError as exc:
            log.warning("quiz image %d: %s", i, exc)
            raise ApiError(500, f"quiz image {i} cannot be read on the server (its log says why)") from None

    @app.get("/api/quiz/image/{i}")
    def quiz_image(i: int):
        pixels = _quiz_pixels(i)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png")

    @app.post("/api/quiz/answer")
    def quiz_answer(answer: Answer):
        if answer.guess not in ("normal", "finding"):
            raise ApiError(400, "guess must be 'normal' or 'finding'")
        row = _quiz_row(answer.id)
        truth = "finding" if int(row["y"]) == 1 else "normal"
        # the model's call through the one path predict and the API use (multi-label: any finding at or above
        # its threshold; the probability is then the top finding's)
        result = predictor.result("quiz", predictor.predict_proba(_quiz_pixels(answer.id)[None])[0])
        p, model_call = result.probability, "finding" if result.positive else "normal"
        return {"truth": truth, "truth_label": predictor.positive if truth == "finding" else predictor.negative,
                "you_correct": answer.guess == truth, "model": {"call": model_call, "probability": p,
                                                                 "correct": model_call == truth}}

    return app

