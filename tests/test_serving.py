import base64
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image



@pytest.fixture(scope="session")
def run_dir(lesson_run):
    return lesson_run  # trained once per session (conftest); train stored its operating point


@pytest.fixture(scope="module")
def client(run_dir):
    from fastapi.testclient import TestClient

    from cxrlab.serving.app import create_app

    return TestClient(create_app(run_dir, max_upload_mb=1, seed=0), raise_server_exceptions=False)


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def a_test_image(run_dir) -> bytes:
    import pandas as pd

    split = pd.read_csv(run_dir / "split.csv")
    return open(split.loc[split["split"] == "test", "path"].iloc[0], "rb").read()


def test_health_and_model_card(client):
    assert client.get("/api/health").json() == {"status": "ok", "model": "seed-cnn"}
    card = client.get("/api/model").json()
    assert card["task"] == {"positive": "effusion", "negative": "normal"}
    assert card["policy"] == "sensitivity:0.95" and "Not a medical device" in card["intended_use"]
    # /docs and /redoc load their scripts from a public CDN (blank offline): off unless asked for
    assert client.get("/docs").status_code == 404 and "/api/predict" in client.get("/openapi.json").text


def test_predict_matches_the_predictor(client, run_dir):
    from cxrlab.serving import Predictor

    data = a_test_image(run_dir)
    body = client.post("/api/predict", files={"file": ("x.png", data, "image/png")}).json()
    expected = Predictor(run_dir).predict_bytes(data, "x.png")
    assert body["probability"] == pytest.approx(expected.probability, abs=1e-6)
    assert body["label"] == expected.label and body["threshold"] == expected.threshold
    assert "heatmap_png" not in body


def test_predict_with_heatmap(client, run_dir):
    r = client.post("/api/predict", params={"heatmap": "true", "method": "gradcam++"},
                    files={"file": ("x.png", a_test_image(run_dir))})
    body = r.json()
    assert r.status_code == 200 and body["method"] == "gradcam++"
    heat = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"])))
    assert heat.mode == "RGBA" and heat.size == (96, 96)


def test_predict_dicom(client, tmp_path):
    from test_images import gradient, write_dicom

    path = write_dicom(tmp_path / "x.dcm", gradient(shape=(96, 96)), "MONOCHROME1")
    r = client.post("/api/predict", files={"file": ("x.dcm", path.read_bytes(), "application/dicom")})
    assert r.status_code == 200 and 0 <= r.json()["probability"] <= 1


def test_upload_limit_413(client):
    big = png_bytes(np.random.default_rng(0).integers(0, 255, (1200, 1200), dtype=np.uint8))
    assert len(big) > 1024 * 1024
    r = client.post("/api/predict", files={"file": ("big.png", big)})
    assert r.status_code == 413 and "larger than" in r.json()["error"]


def test_non_image_415(client):
    r = client.post("/api/predict", files={"file": ("notes.png", b"hello, not an image at all")})
    assert r.status_code == 415 and "not a supported image" in r.json()["error"]


def test_decompression_bomb_400(client):
    buf = io.BytesIO()
    Image.new("1", (30000, 30000)).save(buf, format="PNG")  # ~100 kB, 900 megapixels declared
    r = client.post("/api/predict", files={"file": ("bomb.png", buf.getvalue())})
    assert r.status_code == 400 and "too large" in r.json()["error"]


def test_truncated_image_is_a_json_error_without_trace(client, run_dir):
    data = a_test_image(run_dir)[:300]
    r = client.post("/api/predict", files={"file": ("t.png", data)})
    assert r.status_code == 400 and "Traceback" not in r.text and set(r.json()) == {"error"}


def test_a_bad_upload_in_a_batch_fails_alone(run_dir):
    """The batcher's call decodes each upload: one that cannot be decoded gets its own error, and the
    others of its batch their own scores, the same as scored alone."""
    from cxrlab.errors import CxrlabError
    from cxrlab.serving import Predictor
    from cxrlab.serving.app import score_uploads

    predictor = Predictor(run_dir)
    good = a_test_image(run_dir)
    out = score_uploads(predictor, [(good, "a.png", None), (good[:300], "t.png", None), (good, "b.png", "gradcam")])
    assert isinstance(out[1], CxrlabError) and "t.png" in str(out[1])
    alone = predictor.predict_bytes(good, "a.png", "gradcam")
    assert out[0][0] == pytest.approx(alone.probability, abs=1e-6) and out[0][1] is None
    assert out[2][0] == pytest.approx(alone.probability, abs=1e-6) and out[2][1].shape == alone.heatmap.shape


def test_concurrent_requests_with_a_bad_one_each_get_their_answer(run_dir):
    import asyncio

    import httpx

    from cxrlab.serving.app import create_app

    good = a_test_image(run_dir)
    app = create_app(run_dir)

    async def main():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            posts = [client.post("/api/predict", files={"file": (f"{i}.png", good[:300] if i == 2 else good)})
                     for i in range(6)]
            return await asyncio.gather(*posts)

    replies = asyncio.run(main())
    assert [r.status_code for r in replies] == [200, 200, 400, 200, 200, 200]
    assert len({r.json()["probability"] for i, r in enumerate(replies) if i != 2}) == 1
    assert set(replies[2].json()) == {"error"}


def test_unknown_method_400(client, run_dir):
    r = client.post("/api/predict?heatmap=true&method=magic", files={"file": ("x.png", a_test_image(run_dir))})
    assert r.status_code == 400 and "unknown method" in r.json()["error"]


def test_quiz_by_id_only(client):
    q = client.get("/api/quiz/next").json()
    assert set(q) == {"id", "labels", "majority"} and isinstance(q["id"], int)
    img = client.get(f"/api/quiz/image/{q['id']}")
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    assert client.get("/api/quiz/image/99999").status_code == 404
    assert client.get("/api/quiz/image/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)
    ans = client.post("/api/quiz/answer", json={"id": q["id"], "guess": "finding"}).json()
    assert ans["truth"] in ("finding", "normal") and ans["you_correct"] == (ans["truth"] == "finding")
    assert 0 <= ans["model"]["probability"] <= 1
    assert client.post("/api/quiz/answer", json={"id": q["id"], "guess": "maybe"}).status_code == 400


def test_pages_are_offline(client):
    for page in ("/", "/quiz"):
        html = client.get(page).text
        assert "<script>" in html and "http://" not in html and "https://" not in html


def test_onnx_export_matches_torch_and_runs_without_torch(run_dir, tmp_path):
    import onnxruntime as ort
    import torch

    from cxrlab.serving import Predictor
    from cxrlab.serving.export import export_run

    export_run(run_dir, "onnx", tmp_path / "exp")
    predictor = Predictor(run_dir, device="cpu")
    x = torch.randn(4, 1, 96, 96)
    with torch.no_grad():
        ref = predictor.model.float()(x).numpy()
    out = ort.InferenceSession(str(tmp_path / "exp" / "model.onnx")).run(None, {"image": x.numpy()})[0]
    assert np.abs(out - ref).max() < 1e-4
    # a PNG, a 512 px JPEG (cxrlab decodes it with Pillow's draft()) and a 12-bit DICOM: the standalone
    # script reads them with cxrlab's own preprocessing, shipped beside it, and gives cxrlab's plain score
    from test_images import write_dicom

    pixels = np.asarray(Image.open(io.BytesIO(a_test_image(run_dir))).convert("L"))
    images = [tmp_path / "x.png", tmp_path / "x.jpeg", tmp_path / "x.dcm"]
    images[0].write_bytes(a_test_image(run_dir))
    Image.fromarray(pixels).resize((512, 512)).save(images[1], quality=90)
    write_dicom(images[2], pixels.astype(np.uint16) * 16, WindowCenter=2048, WindowWidth=4096)
    code = ("import sys, runpy; sys.modules['torch'] = None; "  # importing torch now fails
            f"sys.argv = ['p', *{[str(i) for i in images]!r}]; "
            f"runpy.run_path({str(tmp_path / 'exp' / 'onnx_predict.py')!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    standalone = [r["probability"] for r in json.loads(proc.stdout)]
    plain = Predictor(run_dir, device="cpu", tta=0).predict_proba(np.stack([predictor.read(str(i)) for i in images]))
    assert np.abs(np.array(standalone) - plain).max() < 1e-4


def test_numpy_and_torch_normalisation_agree():
    import torch

    from cxrlab.data.images import normalize_array
    from cxrlab.data.preprocess import normalize

    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (5, 40, 40), dtype=np.uint8)
    batch[0] = 7  # a blank image stays 0 in both
    for mode, channels in (("standardize", 1), ("standardize", 3), ("unit", 1), ("imagenet", 3), ("xrv", 1)):
        ref = normalize(torch.from_numpy(batch).unsqueeze(1), mode, channels).numpy()
        assert np.abs(normalize_array(batch, mode, channels) - ref).max() < 1e-5, mode


def test_torchscript_export(run_dir, tmp_path):
    import torch

    from cxrlab.serving.export import export_run

    path = export_run(run_dir, "torchscript", tmp_path / "ts")
    assert torch.jit.load(str(path))(torch.zeros(1, 1, 96, 96)).shape == (1, 1)


def test_batcher_batches_concurrent_requests_and_keeps_their_order():
    import asyncio
    import threading

    from cxrlab.serving.batcher import MicroBatcher

    calls, gate = [], threading.Event()

    def fn(items):
        gate.wait(5)  # the first call holds the worker until the rest have queued up
        calls.append(list(items))
        if "bad" in items:
            raise ValueError("bad batch")
        return [x * 10 for x in items]

    batcher = MicroBatcher(fn)

    async def main():
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 6)]
        await asyncio.sleep(0.05)
        gate.set()
        out = await asyncio.gather(first, *rest)
        failed = await asyncio.gather(batcher.submit("bad"), return_exceptions=True)
        return out, failed

    out, failed = asyncio.run(main())
    assert out == [0, 10, 20, 30, 40, 50]
    assert calls[:2] == [[0], [1, 2, 3, 4, 5]]  # the five that waited went in one call
    assert isinstance(failed[0], ValueError)


def test_batched_scores_and_heatmaps_equal_one_at_a_time(run_dir):
    import pandas as pd

    from cxrlab.serving import Predictor

    pred = Predictor(run_dir, device="cpu")
    split = pd.read_csv(run_dir / "split.csv")
    pixels = [pred.read(p) for p in split["path"].iloc[:4]]
    batched = pred.score_batch([(px, "gradcam" if i % 2 else None) for i, px in enumerate(pixels)])
    for i, (px, (p, cam)) in enumerate(zip(pixels, batched)):
        assert abs(p - float(pred.predict_proba(px[None])[0])) < 1e-5
        if i % 2:
            assert np.allclose(cam, pred.heatmap(px, "gradcam"), atol=1e-4)
        else:
            assert cam is None


def test_concurrent_api_requests_get_their_own_answers(client, run_dir):
    from concurrent.futures import ThreadPoolExecutor

    import pandas as pd

    split = pd.read_csv(run_dir / "split.csv")
    images = [open(p, "rb").read() for p in split["path"].iloc[:8]]
    single = [client.post("/api/predict", files={"file": ("x.png", im)}).json()["probability"] for im in images]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(
            lambda im: client.post("/api/predict", files={"file": ("x.png", im)}).json()["probability"], images))
    assert np.allclose(single, together, atol=1e-5)


def test_heatmap_png_has_matplotlibs_jet_pixels():
    from matplotlib import cm

    from cxrlab.serving.predictor import heatmap_png

    cam = np.random.default_rng(0).random((64, 80)).astype(np.float32)
    cam[0, :3] = [0.0, 1.0, 0.5]
    got = np.asarray(Image.open(io.BytesIO(heatmap_png(cam))))
    want = (cm.jet(cam) * 255).astype(np.uint8)
    want[..., 3] = (cam * 255).astype(np.uint8)
    assert got.shape == (64, 80, 4) and np.array_equal(got, want)


def test_onnxruntime_backend_scores_like_torch(run_dir):
    import pandas as pd

    from cxrlab.serving import Predictor

    split = pd.read_csv(run_dir / "split.csv")
    torch_pred = Predictor(run_dir, device="cpu")
    ort_pred = Predictor(run_dir, device="cpu", backend="onnxruntime")
    assert torch_pred.backend == "torch" and ort_pred.backend == "onnxruntime"
    pixels = np.stack([torch_pred.read(p) for p in split["path"].iloc[:6]])
    assert np.abs(ort_pred.predict_proba(pixels) - torch_pred.predict_proba(pixels)).max() < 1e-5


def test_predict_paths_heatmaps_equal_one_image_at_a_time(run_dir):
    import pandas as pd

    from cxrlab.serving import Predictor

    pred = Predictor(run_dir, device="cpu")
    paths = pd.read_csv(run_dir / "split.csv")["path"].iloc[:3].tolist()
    results = pred.predict_paths(paths, method="gradcam")
    for path, r in zip(paths, results):
        assert r.heatmap.shape == (96, 96)
        assert np.allclose(r.heatmap, pred.heatmap(pred.read(path), "gradcam"), atol=1e-4)
    assert all(r.heatmap is None for r in pred.predict_paths(paths))


def test_docs_pages_only_when_asked(run_dir):
    from fastapi.testclient import TestClient

    from cxrlab.serving.app import create_app

    assert TestClient(create_app(run_dir, docs=True)).get("/docs").status_code == 200


def test_unknown_routes_and_bad_requests_answer_error_like_the_rest(client):
    r = client.get("/no/such/route")
    assert r.status_code == 404 and set(r.json()) == {"error"}
    r = client.post("/api/quiz/answer", json={"id": "x"})
    assert r.status_code == 422 and set(r.json()) == {"error"} and "id" in r.json()["error"]
    assert client.get("/favicon.ico").status_code == 204  # the page's favicon request does not 404


def test_quiz_draws_without_replacement_per_session_and_names_the_majority_rate(client, run_dir):
    import pandas as pd

    split = pd.read_csv(run_dir / "split.csv")
    test = split[split["split"] == "test"]
    ids = [client.get("/api/quiz/next?session=alice").json()["id"] for _ in range(len(test))]
    assert sorted(ids) == list(range(len(test)))  # every image once before any repeats
    majority = client.get("/api/model").json()["quiz_majority"]
    rate = max(test["y"].mean(), 1 - test["y"].mean())
    assert majority["rate"] == pytest.approx(rate) and majority["label"] in ("effusion", "normal")


def test_quiz_errors_never_show_server_paths(run_dir, tmp_path):
    import shutil

    from fastapi.testclient import TestClient

    from cxrlab.serving.app import create_app

    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    split = (moved / "split.csv").read_text().splitlines()
    first_test = next(i for i, line in enumerate(split) if line.endswith(",test"))
    split[first_test] = "/etc/hostname" + split[first_test][split[first_test].index(","):]
    (moved / "split.csv").write_text("\n".join(split) + "\n")
    quiz_client = TestClient(create_app(moved), raise_server_exceptions=False)
    for r in (quiz_client.get("/api/quiz/image/0"),
              quiz_client.post("/api/quiz/answer", json={"id": 0, "guess": "finding"})):
        assert r.status_code == 500 and r.json() == {"error": "quiz image 0 cannot be read on the server (its log says why)"}


def test_a_stalled_upload_is_closed(run_dir):
    """A client that declares a body and stops sending gets 408 after the upload timeout."""
    import socket
    import threading
    import time

    import uvicorn

    from cxrlab.serving.app import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(run_dir, upload_timeout=1.0), host="127.0.0.1", port=port,
                                           log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                         b"Content-Length: 5000\r\n\r\n--b\r\n")
            t0 = time.perf_counter()
            reply = conn.recv(4096).decode()
            waited = time.perf_counter() - t0
            while "upload stalled" not in reply:  # the body may come in its own segment
                more = conn.recv(4096).decode()
                if not more:
                    break
                reply += more
        assert reply.startswith("HTTP/1.1 408") and "upload stalled" in reply and waited < 8
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_auto_backend_is_torch_where_cxrlabs_kernels_run_the_model(run_dir, monkeypatch):
    """seed-cnn(-bn) in cxrlab's CPU kernels scores faster than ONNX Runtime (BENCHMARKS.md: p50 112 against
    199 ms serving a default-recipe run); without the kernels `auto` keeps ONNX Runtime."""
    from cxrlab.accel import kernels
    from cxrlab.serving import Predictor

    if kernels._library() is not None:
        assert Predictor(run_dir, device="cpu", backend="auto").backend == "torch"
    monkeypatch.setitem(kernels._state, "lib", None)
    assert Predictor(run_dir, device="cpu", backend="auto").backend == "onnxruntime"
