"""`cxrlab serve`: a FastAPI app with a JSON API, a web page to try the model, and the quiz.

Safety: binds 127.0.0.1 by default (the CLI), uploads are capped (413) and must look like an
image (415), images with huge declared dimensions are refused before decoding (400), quiz images
are addressed by number only, and every error is JSON without a stack trace.
"""

from __future__ import annotations

import base64
import io
import logging
import random
from pathlib import Path

import pandas as pd
from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from pydantic import BaseModel

from ..errors import CxrlabError
from ..saliency.methods import METHODS
from .batcher import MicroBatcher
from .predictor import Predictor, heatmap_png

STATIC = Path(__file__).with_name("static")
MAX_PIXELS = 64_000_000  # ~8000 x 8000: far above any chest X-ray, far below a decompression bomb
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
    """Refuses an oversized POST /api/predict from its Content-Length, before the body is read.
    Plain ASGI: Starlette's BaseHTTPMiddleware (`@app.middleware`) adds a task and streams per request."""

    def __init__(self, app, limit: int, label: str):
        self.app, self.limit, self.label = app, limit, label

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
        await self.app(scope, receive, send)


class Answer(BaseModel):
    id: int
    guess: str  # "normal" or "finding"


def create_app(run_dir: str | Path, max_upload_mb: float = 20.0, seed: int | None = None) -> FastAPI:
    predictor = Predictor(run_dir, device="cpu", backend="auto")
    limit = int(max_upload_mb * 1024 * 1024)
    split = pd.read_csv(predictor.run.split) if predictor.run.split.exists() else pd.DataFrame(columns=["path", "y", "split"])
    quiz = split[split["split"] == "test"].reset_index(drop=True)
    rng = random.Random(seed)
    batcher = MicroBatcher(predictor.score_batch)
    app = FastAPI(title="cxrlab", description=f"{predictor.positive} vs {predictor.negative} "
                  f"({predictor.spec.name}). Not a medical device.", version="1")

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(CxrlabError)
    async def _user_error(request: Request, exc: CxrlabError):
        return JSONResponse({"error": str(exc).split(". Fix or remove")[0]}, status_code=400)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("internal error")
        return JSONResponse({"error": "internal error"}, status_code=500)

    app.add_middleware(UploadLimit, limit=limit, label=f"{max_upload_mb:g} MB")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index():
        return (STATIC / "index.html").read_text()

    @app.get("/quiz", response_class=HTMLResponse, include_in_schema=False)
    def quiz_page():
        return (STATIC / "quiz.html").read_text()

    @app.get("/api/health")
    def health():
        return {"status": "ok", "model": predictor.spec.name}

    @app.get("/api/model")
    def model_card():
        return {**predictor.card, "methods": list(METHODS), "quiz_images": len(quiz)}

    @app.post("/api/predict")
    async def predict(file: UploadFile = File(...), heatmap: bool = Query(False),
                      method: str = Query("gradcam")):
        data = await file.read(limit + 1)
        if len(data) > limit:
            raise ApiError(413, f"upload larger than {max_upload_mb:g} MB")
        kind = sniff(data)
        if kind is None:
            raise ApiError(415, "not a supported image: send PNG, JPEG, TIFF, BMP or DICOM")
        if heatmap and method not in METHODS:
            raise ApiError(400, f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        check_dimensions(data, kind)
        name = "upload.dcm" if kind == "dicom" else f"upload.{kind}"
        # decoding and scoring leave the event loop free; concurrent requests share one forward pass
        pixels = await run_in_threadpool(predictor.decode, data, name)
        probability, cam = await batcher.submit((pixels, method if heatmap else None))
        result = predictor.result(name, probability, cam)
        body = {"probability": result.probability, "label": result.label, "positive": result.positive,
                "threshold": result.threshold, "policy": result.policy, "model": predictor.spec.name}
        if result.heatmap is not None:
            body["heatmap_png"] = base64.b64encode(await run_in_threadpool(heatmap_png, result.heatmap)).decode()
            body["method"] = method
        return body

    @app.get("/api/quiz/next")
    def quiz_next():
        if quiz.empty:
            raise ApiError(404, "this run has no test images for the quiz")
        return {"id": rng.randrange(len(quiz)), "labels": {"normal": predictor.negative, "finding": predictor.positive}}

    def _quiz_row(i: int):
        if not 0 <= i < len(quiz):
            raise ApiError(404, "no such quiz image")
        return quiz.iloc[i]

    @app.get("/api/quiz/image/{i}")
    def quiz_image(i: int):
        pixels = predictor.pixels(str(_quiz_row(i)["path"]))
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png")

    @app.post("/api/quiz/answer")
    def quiz_answer(answer: Answer):
        if answer.guess not in ("normal", "finding"):
            raise ApiError(400, "guess must be 'normal' or 'finding'")
        row = _quiz_row(answer.id)
        truth = "finding" if int(row["y"]) == 1 else "normal"
        p = float(predictor.probabilities(predictor.pixels(str(row["path"]))[None])[0])
        model_call = "finding" if p >= predictor.threshold else "normal"
        return {"truth": truth, "truth_label": predictor.positive if truth == "finding" else predictor.negative,
                "you_correct": answer.guess == truth, "model": {"call": model_call, "probability": p,
                                                                 "correct": model_call == truth}}

    return app

