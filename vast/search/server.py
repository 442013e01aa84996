"""`vast serve`: a local search page over an index (FastAPI; plain HTML and JavaScript, no CDN).

Only files the index records are served, looked up by clip id (a path in a request is never
opened), so a traversal attempt is a 404. Queries are at most MAX_QUERY_CHARS characters and
request bodies at most MAX_BODY_BYTES. The model is loaded once, when the server starts.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from vast.errors import VastError
from vast.search.index import SearchIndex
from vast.search.query import MAX_QUERY_CHARS, decode_for_matching, search, thumbnail_path
from vast.tasks import ModalityGroup

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 4096
PAGE = Path(__file__).with_name("static") / "index.html"


class ClipRequest(BaseModel):
    """A caption or question request about one indexed clip."""

    id: str = Field(max_length=512)
    group: str = Field(default="tv", max_length=8)
    question: str = Field(default="", max_length=MAX_QUERY_CHARS)


def create_app(index: SearchIndex, model):
    """The web app for one index and one loaded model."""
    app = FastAPI(title="vast search", docs_url=None, redoc_url=None)
    lock = threading.Lock()  # one model call at a time: the model is not shared across threads

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > MAX_BODY_BYTES):
            return JSONResponse({"error": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        return await call_next(request)

    def clip_or_404(clip_id: str):
        clip = index.clips.get(clip_id)
        if clip is None:
            raise HTTPException(404, "no such clip in the index")
        return clip

    def group_of(name: str) -> ModalityGroup:
        if name not in index.groups:
            raise HTTPException(400, f"group '{name}' is not in this index ({', '.join(index.groups)})")
        return ModalityGroup.parse(name)

    @app.get("/", response_class=HTMLResponse)
    def page():
        return PAGE.read_text(encoding="utf-8")

    @app.get("/api/info")
    def info():
        return {"clips": len(index.clips), "groups": index.groups, "model": Path(index.model).name,
                "max_query": MAX_QUERY_CHARS,
                "message": "" if index.clips else "this index holds no clip yet: run vast embed VIDEO_DIR --out INDEX"}

    @app.get("/api/search")
    def search_endpoint(q: str = "", group: str = "tvas", k: int = 10):
        if len(q) > MAX_QUERY_CHARS:
            raise HTTPException(400, f"the query is over {MAX_QUERY_CHARS} characters")
        group_of(group)
        if not index.clips:
            raise HTTPException(409, "this index holds no clip yet: run vast embed VIDEO_DIR --out INDEX")
        try:
            with lock:
                hits = search(model, index, q, k=max(1, min(k, 50)), group=group, rerank_k=min(50, len(index.clips)))
        except VastError as error:
            raise HTTPException(400, str(error)) from None
        return {"query": q, "group": group, "hits": [
            {**asdict(h), "path": Path(h.path).name, "video": f"/video/{h.id}", "thumbnail": f"/thumb/{h.id}"}
            for h in hits]}

    @app.post("/api/caption")
    def caption(request: ClipRequest):
        clip_or_404(request.id)
        group = group_of(request.group)
        with lock:
            vision, audio, subtitles = decode_for_matching(model, index, [request.id], group)
            text = model.caption(group, vision=vision, audio=audio, subtitles=subtitles)[0]
        return {"id": request.id, "caption": text}

    @app.post("/api/ask")
    def ask(request: ClipRequest):
        clip_or_404(request.id)
        group = group_of(request.group)
        if not request.question.strip():
            raise HTTPException(400, "ask a question")
        with lock:
            vision, audio, subtitles = decode_for_matching(model, index, [request.id], group)
            text = model.answer([request.question], group, vision=vision, audio=audio, subtitles=subtitles)[0]
        return {"id": request.id, "question": request.question, "answer": text}

    @app.get("/video/{clip_id}")
    def video(clip_id: str):
        clip = clip_or_404(clip_id)
        if not Path(clip.path).is_file():
            raise HTTPException(404, "the clip's file is gone; embed the folder again")
        return FileResponse(clip.path, media_type="video/mp4")  # answers Range requests (206)

    @app.get("/thumb/{clip_id}")
    def thumb(clip_id: str):
        clip_or_404(clip_id)
        path = thumbnail_path(index, clip_id)
        if path is None or not path.is_file():
            raise HTTPException(404, "no thumbnail")
        return FileResponse(path, media_type="image/jpeg")

    return app


def load_for_serving(folder: Path):
    """(index, model), or a one-line error naming what cannot be loaded."""
    from vast.api import load_model

    index = SearchIndex.open(folder)
    try:
        model = load_model(index.model, precision=index.precision)
    except VastError as error:
        raise VastError(f"{folder}: the index's model {index.model} cannot be loaded ({error})") from None
    return index, model


def serve(folder: Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    index, model = load_for_serving(folder)
    print(f"vast: {len(index.clips)} clips, groups {', '.join(index.groups)}; open http://{host}:{port}/")
    uvicorn.run(create_app(index, model), host=host, port=port, log_level="warning")
