"""Prediction latency: a direct model call (the bare baseline), the same model exported to TorchScript and to ONNX
(onnxruntime, CPU) called directly, `stagebook predict`'s predictor (PyTorch and ONNX runtimes), and HTTP to
`stagebook serve`, side by side at batch 1 and 64, p50 and p95 over interleaved repeats.

The model is the stage-04 architecture (small_cnn, width 16, 8-px grayscale, 10 classes) registered in a throwaway
project; the inputs are the same PNG-encoded images for all three. The predictor and HTTP rows include what a user
gets on top of the bare call: PNG decoding, the sha256 of each input, the versions on each answer and the
prediction log (fsync'd per call); HTTP adds multipart upload and JSON over a local socket (uvicorn, one worker).
"""
from __future__ import annotations

import io
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_predict(repeats: int = 60) -> list[dict]:
    import httpx
    import torch
    import uvicorn
    from PIL import Image

    from stagebook import registry
    from stagebook.export import EXPORTED, session, write_export
    from stagebook.lineage import file_sha256
    from stagebook.predictor import Predictor
    from stagebook.serve import create_app
    from stagebook.zoo import build

    rows = []
    with tempfile.TemporaryDirectory(prefix="stagebook-bench-predict-") as tmp:
        root = Path(tmp)
        (root / "pyproject.toml").write_text('[project]\nname = "bench"\n\n[tool.stagebook]\nexperiment = "bench"\n')
        torch.manual_seed(0)
        meta = {"arch": "small_cnn", "classes": [str(i) for i in range(10)], "image_size": 8, "width": 16, "channels": 1}
        torch.save({"state_dict": build("small_cnn", 10, 1, 16).state_dict(), "meta": meta}, root / "m.pth")
        registry.set_alias(root, registry.CHAMPION, registry.register(root, root / "m.pth", {"code_commit": "bench"}))
        predictor = Predictor(root, refresh=3600)
        model = predictor.current().model
        version = registry.by_alias(root, registry.CHAMPION)
        runtimes = {}
        for runtime in ("torchscript", "onnx"):
            path = write_export(model, meta, runtime, root / "models" / "export" / f"v1{EXPORTED[runtime]}")
            registry.attach(root, version, path, "export")
            registry.tag(root, version, f"{runtime}_sha256", file_sha256(path))
            runtimes[runtime] = session(runtime, path)
        by_onnx = Predictor(root, refresh=3600, runtime="onnx")
        rng = np.random.default_rng(0)
        pngs = []
        for _ in range(64):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), "L").save(buf, format="PNG")
            pngs.append(buf.getvalue())
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(predictor), host="127.0.0.1", port=port, log_level="error"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}")
        try:
            for batch in (1, 64):
                items = [(f"{i}.png", pngs[i]) for i in range(batch)]
                tensor = torch.rand(batch, 1, 8, 8)
                files = [("files", (name, data, "image/png")) for name, data in items]

                def direct():
                    with torch.inference_mode():
                        model(tensor)

                pixels = tensor.numpy()
                calls = {"direct model call": direct,
                         "TorchScript call": lambda: runtimes["torchscript"](pixels),
                         "ONNX Runtime call": lambda: runtimes["onnx"](pixels),
                         "predictor (stagebook predict)": lambda: predictor.predict_bytes(items),
                         "predictor, --runtime onnx": lambda: by_onnx.predict_bytes(items),
                         "HTTP (stagebook serve)": lambda: client.post("/predict", files=files).raise_for_status()}
                times = {k: [] for k in calls}
                for fn in calls.values():  # warm-up
                    for _ in range(5):
                        fn()
                for i in range(repeats):  # interleaved, the order rotating each round
                    names = list(calls)
                    turn = i % len(names)
                    for name in names[turn:] + names[:turn]:
                        start = time.perf_counter()
                        calls[name]()
                        times[name].append(1000 * (time.perf_counter() - start))
                base = float(np.percentile(times["direct model call"], 50))
                for name, t in times.items():
                    p50, p95 = float(np.percentile(t, 50)), float(np.percentile(t, 95))
                    print(f"  batch {batch:>2}  {name:<30} p50 {p50:8.3f} ms  p95 {p95:8.3f} ms  ({p50 / base:6.1f}x direct p50)")
                    rows.append({"name": f"predict latency: {name}, batch {batch}", "p50_ms": p50, "p95_ms": p95,
                                 "ratio": p50 / base, "ok": True})
        finally:
            client.close()
            server.should_exit = True
            thread.join(timeout=10)
    return rows
