"""The search index on disk: one row of contrastive features per clip and modality group, in shards.

    INDEX_DIR/index.json                 the model, the groups, and every clip: path, size, mtime,
                                         subtitle, thumbnail, and where its feature rows are
    INDEX_DIR/shards/<k>/<group>.npy     float16 [rows, contra_dim], L2-normalised features
    INDEX_DIR/shards/<k>/<group>.json    the clip id of each row (the id table)
    INDEX_DIR/thumbs/<id>.jpg            a frame from the middle of the clip

Each `vast embed` run that finds new or changed files writes one new shard; a changed file's old
rows stay in their shard but the clip table points at the new ones, so they are never returned.
index.json is written last (temporary file + rename): a killed run leaves the previous index whole.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from vast.errors import DataError

INDEX_FILE = "index.json"
FORMAT_VERSION = 1
# From this many clips in a group (and faiss installed) a search starts from an HNSW graph instead of
# the exact product with every row. Measured on 2 cores (bench/README.md, search.py): the exact top 50
# takes 0.5 ms at 10k clips, 9 ms at 100k and 100 ms at 1M, against 33 ms per reranked candidate;
# at 1M the graph takes 6 ms with 93% of the exact top 50 (efSearch 2048), after a 92 s build.
FAISS_MIN_CLIPS = 1_000_000
HNSW_NEIGHBOURS = 32
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 2048  # 128: 52% of the exact top 50 at 1M clips; 512: 77%; 2048: 93%


@dataclass
class ClipRecord:
    id: str
    path: str  # absolute path of the media file
    size: int
    mtime: float
    subtitle: str = ""
    thumbnail: str = ""  # relative to the index folder; "" when none could be made
    rows: dict[str, list] = field(default_factory=dict)  # group -> [shard, row]

    def unchanged(self, stat: os.stat_result) -> bool:
        return self.size == stat.st_size and abs(self.mtime - stat.st_mtime) < 1e-6


class SearchIndex:
    """The clip table and the feature shards of one index folder."""

    def __init__(self, folder: Path, model: str, groups: list[str], clips: dict[str, ClipRecord],
                 settings: dict, shards: int):
        self.folder = Path(folder)
        self.model = model
        self.groups = groups
        self.clips = clips
        self.settings = settings  # frames, audio clips, subtitle source: a rerun must embed alike
        self.shards = shards
        self._features: dict[str, tuple[list[str], torch.Tensor]] = {}
        self._graphs: dict[str, object] = {}

    @classmethod
    def create(cls, folder: Path, model: str, groups: list[str], settings: dict) -> "SearchIndex":
        return cls(folder, model, list(groups), {}, dict(settings), 0)

    @classmethod
    def open(cls, folder: Path) -> "SearchIndex":
        path = Path(folder) / INDEX_FILE
        if not path.is_file():
            raise DataError(f"{folder}: not a search index (no {INDEX_FILE}); make one with: vast embed VIDEO_DIR "
                            f"--model RUN --out {folder}")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            clips = {c["id"]: ClipRecord(**c) for c in raw["clips"]}
            return cls(Path(folder), raw["model"], raw["groups"], clips, raw.get("settings", {}), raw["shards"])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise DataError(f"{path}: unreadable index ({error}); embed again into a new folder") from None

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        raw = {"version": FORMAT_VERSION, "model": self.model, "groups": self.groups, "settings": self.settings,
               "shards": self.shards, "clips": [asdict(c) for c in self.clips.values()]}
        tmp = self.folder / (INDEX_FILE + ".tmp")
        tmp.write_text(json.dumps(raw, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(self.folder / INDEX_FILE)

    def add_shard(self, features: dict[str, tuple[list[str], np.ndarray]], records: list[ClipRecord]) -> None:
        """Write one shard (group -> (ids, [N, D] features)) and point the records' rows at it."""
        shard = self.shards
        folder = self.folder / "shards" / f"{shard:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        by_id = {r.id: r for r in records}
        for group, (ids, matrix) in features.items():
            np.save(folder / f"{group}.npy", matrix.astype(np.float16))
            (folder / f"{group}.json").write_text(json.dumps(ids), encoding="utf-8")
            for row, clip_id in enumerate(ids):
                by_id[clip_id].rows[group] = [shard, row]
        for record in records:
            self.clips[record.id] = record
        self.shards = shard + 1
        self._features.clear()
        self._graphs.clear()

    @property
    def precision(self) -> str:
        """The model precision the clips were embedded with (queries and reranking use the same)."""
        return self.settings.get("precision", "fp32")

    def features(self, group: str) -> tuple[list[str], torch.Tensor]:
        """The ids and float32 features [N, D] of every clip embedded for `group`, in clip-table order
        (read once per SearchIndex: a server searches the matrix in memory)."""
        if group not in self.groups:
            raise DataError(f"group '{group}' is not in this index (it has {', '.join(self.groups)}); embed it "
                            "with --groups")
        if group not in self._features:
            self._features[group] = self._read_features(group)
        return self._features[group]

    def _read_features(self, group: str) -> tuple[list[str], torch.Tensor]:
        ids: list[str] = []
        by_shard: dict[int, tuple[list[int], list[int]]] = {}  # shard -> (positions in the matrix, rows)
        for clip in self.clips.values():
            where = clip.rows.get(group)
            if where is not None:
                positions, rows = by_shard.setdefault(where[0], ([], []))
                positions.append(len(ids))
                rows.append(where[1])
                ids.append(clip.id)
        matrix = None
        for shard, (positions, rows) in by_shard.items():
            stored = np.load(self.folder / "shards" / f"{shard:05d}" / f"{group}.npy", mmap_mode="r")
            if matrix is None:
                matrix = np.empty((len(ids), stored.shape[1]), dtype=np.float32)
            matrix[positions] = stored[rows]
        return ids, torch.from_numpy(matrix if matrix is not None else np.zeros((0, 0), dtype=np.float32))

    def graph(self, group: str):
        """The FAISS HNSW graph over `group`'s features: read from INDEX_DIR/faiss/ when this state of
        the index has one, else built (once) and written there."""
        if group not in self._graphs:
            ids, matrix = self.features(group)
            path = self.folder / "faiss" / f"{group}.{self.shards}.{len(ids)}.hnsw"
            self._graphs[group] = read_graph(path) if path.is_file() else write_graph(build_graph(matrix), path)
        return self._graphs[group]

    def uses_graph(self, group: str) -> bool:
        """Whether searches of `group` start from the graph: faiss installed and FAISS_MIN_CLIPS clips."""
        return len(self.features(group)[0]) >= FAISS_MIN_CLIPS and importlib.util.find_spec("faiss") is not None


def build_graph(matrix: torch.Tensor, neighbours: int = HNSW_NEIGHBOURS):
    """An HNSW graph (inner product) over the rows of `matrix`."""
    import faiss

    graph = faiss.IndexHNSWFlat(matrix.shape[1], neighbours, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    graph.add(np.ascontiguousarray(matrix.numpy()))
    return graph


def read_graph(path: Path):
    import faiss

    return faiss.read_index(str(path))


def write_graph(graph, path: Path):
    import faiss

    path.parent.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp")
    faiss.write_index(graph, str(tmp))
    tmp.replace(path)
    return graph
