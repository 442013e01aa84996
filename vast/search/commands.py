"""The `vast` command: the model on your own videos.

    vast embed VIDEO_DIR --model RUN_OR_CKPT --out INDEX_DIR [--subtitles none|whisper|FILE.json]
    vast search INDEX_DIR "query" [-k 10] [--group tvas] [--rerank 50]
    vast caption FILE... --model RUN_OR_CKPT [--group tv]
    vast ask FILE "question" --model RUN_OR_CKPT [--group tv]
    vast serve INDEX_DIR [--host 127.0.0.1] [--port 8000]

Every subcommand takes --json (one JSON document on stdout, for scripts). Mistakes in the input
are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from vast.errors import VastError

logger = logging.getLogger("vast")


def _sample_nums(model_path: str) -> tuple[int, int]:
    """Frames and audio clips per clip: the run's test setting (its first val entry), else 8 and 1."""
    from vast.api import locate_run
    from vast.config import resolve_path

    try:
        _, hps = locate_run(resolve_path(model_path))
        val = json.loads(hps.read_text())["data_cfg"]["val"][0]
        return int(val.get("vision_sample_num", 8)), int(val.get("audio_sample_num", 1))
    except (OSError, KeyError, IndexError, ValueError, TypeError, VastError):
        return 8, 1


def cmd_embed(args) -> dict:
    from vast.search.embed import EmbedSettings, embed_folder

    frames, clips = _sample_nums(args.model)
    settings = EmbedSettings(frames=args.frames or frames, audio_clips=args.audio_clips or clips,
                             subtitles=args.subtitles, groups=tuple(g for g in args.groups.split(",") if g),
                             batch_size=args.batch_size, workers=args.workers, precision=args.precision)
    report = embed_folder(args.video_dir, args.model, args.out, settings, progress=None)
    if not args.json:
        print(f"{args.out}: {report.summary()}")
        for clip_id, reason in list(report.failed.items())[:5]:
            print(f"  failed: {clip_id}: {reason}")
    return {"index": str(args.out), "embedded": report.embedded, "unchanged": report.unchanged,
            "failed": report.failed, "no_audio": report.no_audio, "removed": report.removed}


def cmd_search(args) -> dict:
    from vast.api import load_model
    from vast.search.index import SearchIndex
    from vast.search.query import search

    index = SearchIndex.open(Path(args.index))
    model = load_model(index.model, precision=index.precision)
    hits = search(model, index, args.query, k=args.k, group=args.group, rerank_k=args.rerank)
    if not args.json:
        for rank, hit in enumerate(hits, 1):
            print(f"{rank:3d}  {hit.score:.4f}  {hit.id}  {hit.path}")
    return {"query": args.query, "group": args.group, "hits": [asdict(h) for h in hits]}


def _clip_inputs(model, model_path: str, files: list[str], group: str):
    from vast.tasks import Modality, ModalityGroup

    parsed = ModalityGroup.parse(group)
    if Modality.SUBTITLE in parsed.modalities:
        raise VastError(f"--group {group}: captioning and questions on files take tv, ta or tva (no subtitles)")
    frames, clips = _sample_nums(model_path)
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise VastError(f"file not found: {missing[0]}")
    vision, audio = model.load_clips(files if Modality.VISION in parsed.modalities else None,
                                     files if Modality.AUDIO in parsed.modalities else None,
                                     vision_sample_num=frames, audio_sample_num=clips)
    return parsed, vision, audio


def cmd_caption(args) -> dict:
    from vast.api import load_model

    model = load_model(args.model, precision=args.precision)
    group, vision, audio = _clip_inputs(model, args.model, args.files, args.group)
    captions = model.caption(group, vision=vision, audio=audio)
    if not args.json:
        for path, caption in zip(args.files, captions):
            print(f"{path}: {caption}")
    return {"group": group.name, "captions": dict(zip(args.files, captions))}


def cmd_ask(args) -> dict:
    from vast.api import load_model

    model = load_model(args.model, precision=args.precision)
    group, vision, audio = _clip_inputs(model, args.model, [args.file], args.group)
    answer = model.answer([args.question], group, vision=vision, audio=audio)[0]
    if not args.json:
        print(answer)
    return {"file": args.file, "question": args.question, "group": group.name, "answer": answer}


def cmd_serve(args) -> dict:
    from vast.search.server import serve

    serve(Path(args.index), host=args.host, port=args.port)
    return {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vast", description="VAST on your own videos: embed, search, caption, ask, serve.")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    modelled = argparse.ArgumentParser(add_help=False)
    modelled.add_argument("--precision", choices=("run", "fp32"), default="run",  # vast.api.PRECISIONS
                          help="run (default): the autocast the run's evaluation used, so scores and texts equal "
                               "its evaluation's (bf16 on a CPU only where native); fp32: float32 throughout")

    embed = sub.add_parser("embed", parents=[common, modelled], help="embed a folder of videos into a search index")
    embed.add_argument("video_dir")
    embed.add_argument("--model", required=True, help="a run folder (log/hps.json + ckpt/) or a checkpoint file")
    embed.add_argument("--out", required=True, help="the index folder (made, or updated with new and changed files)")
    embed.add_argument("--subtitles", default="none", help="none, whisper, or a JSON file mapping ids to subtitles")
    embed.add_argument("--groups", default="", help="comma-separated groups (default: every group the model has)")
    embed.add_argument("--frames", type=int, default=0, help="frames per clip (default: the run's test setting)")
    embed.add_argument("--audio_clips", type=int, default=0, help="audio clips per clip (default: the run's)")
    embed.add_argument("--batch_size", type=int, default=8)
    embed.add_argument("--workers", type=int, default=2, help="decoding worker processes")
    embed.set_defaults(run=cmd_embed)

    search = sub.add_parser("search", parents=[common], help="search an index with a text query")
    search.add_argument("index")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=10, help="how many clips to return")
    search.add_argument("--group", default="tvas", help="the modality group to search (tv, ta, tva, tvs, tvas)")
    search.add_argument("--rerank", type=int, default=50, help="rerank this many candidates with the matching head")
    search.set_defaults(run=cmd_search)

    caption = sub.add_parser("caption", parents=[common, modelled], help="caption video files")
    caption.add_argument("files", nargs="+")
    caption.add_argument("--model", required=True)
    caption.add_argument("--group", default="tv", help="tv, ta or tva")
    caption.set_defaults(run=cmd_caption)

    ask = sub.add_parser("ask", parents=[common, modelled], help="answer a question about a video file")
    ask.add_argument("file")
    ask.add_argument("question")
    ask.add_argument("--model", required=True)
    ask.add_argument("--group", default="tv", help="tv, ta or tva")
    ask.set_defaults(run=cmd_ask)

    serve = sub.add_parser("serve", parents=[common], help="a local search page for an index")
    serve.add_argument("index")
    serve.add_argument("--host", default="127.0.0.1", help="the address to bind (default: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        result = args.run(args)
    except VastError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
