"""`stagebook serve`: the predictor over HTTP (FastAPI on uvicorn, 127.0.0.1, one worker).

POST /predict takes image files (multipart field `files`) and answers one JSON object per file with the label, the
class probabilities, the model version and sha256, the code commit and the data version; the `X-Model-Version`
header says which version answered. A file that is not a usable image gets 422 with the reason, and the server
carries on. GET /health reports the loaded version. The champion alias is re-read every few seconds, so a promotion
is served without a restart.
"""

from pathlib import Path

from .errors import StagebookError
from .predictor import Predictor


def create_app(predictor: Predictor):
    from fastapi import FastAPI, File, UploadFile
    from fastapi.responses import JSONResponse

    app = FastAPI(title="stagebook predictor", version="1")

    @app.get("/health")
    def health():
        try:
            about = predictor.current().about
        except StagebookError as err:
            return JSONResponse({"status": "no model", "reason": str(err)}, status_code=503)
        return JSONResponse({"status": "ok", **about}, headers={"X-Model-Version": str(about["model_version"])})

    @app.post("/predict")
    async def predict(files: list[UploadFile] = File(...)):
        items = [(f.filename or f"file{i}", await f.read()) for i, f in enumerate(files)]
        try:
            answers = predictor.predict_bytes(items)
        except StagebookError as err:
            return JSONResponse({"error": str(err)}, status_code=503)
        version = str(answers[0]["model_version"]) if answers else ""
        refused = [a for a in answers if "error" in a]
        status = 422 if refused and len(refused) == len(answers) else 200
        return JSONResponse({"predictions": answers}, status_code=status, headers={"X-Model-Version": version})

    return app


def serve(root: Path, host: str = "127.0.0.1", port: int = 8000, version: "int | None" = None,
          runtime: str = "torch", keep_inputs: bool = False) -> None:
    import uvicorn

    predictor = Predictor(root, version, runtime=runtime, keep_inputs=keep_inputs)
    predictor.current()  # fail now, in one line, if there is no model to serve
    uvicorn.run(create_app(predictor), host=host, port=port, workers=1, log_level="warning")
