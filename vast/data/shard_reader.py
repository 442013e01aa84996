"""`type: shards` datasets: stream WebDataset shards, split by rank and loader worker, decode in workers.

Shards are named by a brace pattern (`data/shard-{000000..000099}.tar`), a list, or the writer's
`shards.json` (which also gives the sample counts that `epoch` budgets need). Any URL that
`webdataset.gopen` opens works: local paths, `pipe:COMMAND` (e.g. `pipe:aws s3 cp s3://b/x.tar -`,
so object storage works through its own command-line client) and http(s) (through curl).

Who reads what. A rank with W loader workers (W = max(1, n_workers)) runs W streams; stream
`rank * W + w` of `world_size * W`:
- epoch streams (default): each epoch the shard list is shuffled with a seed shared by every rank
  (training only), and stream s reads shards s, s + S, s + 2S, ... (S streams in all): every clip is
  read exactly once per epoch across all ranks and workers. Training shuffles samples through a
  buffer of `shuffle_buffer` samples per stream. Ranks may hold one shard more than others; training
  runs a fixed number of steps, so a rank that finishes an epoch earlier simply starts the next.
- resampled streams (`resampled: true`, training with `steps`): each stream draws shards with
  replacement forever from its own random generator (seeded by seed, rank and worker), as
  multi-node pretraining on a huge corpus does; there are no epochs.

Position, for resuming (`ShardDataset.state_dict`): the trainer-side loader records the stream
position carried by every batch. For epoch streams it is exact: the epoch, and per stream the
number of samples delivered (the sequence of a stream is a function of seed, epoch and stream, so a
resumed stream replays it without decoding and continues at that count), plus which worker is next,
so the resumed loader hands out batches in the same order. For resampled streams the state is each
stream's random generator state (taken when it drew its current shard), not an item position: a
resumed stream draws its next shards as the interrupted one would have, and the rest of the shard
in progress and the samples in its shuffle buffer are not replayed.
"""

from __future__ import annotations

import io
import json
import logging
import random
import re
import tarfile
from pathlib import Path

import braceexpand
import webdataset
from torch.utils.data import IterableDataset, get_worker_info

from vast.config import resolve_path
from vast.data import media
from vast.data.annotations import normalise_row
from vast.data.batch import Failure, Item, Sample, collate, sample_problem
from vast.data.items import decode_item, failure_of, item_rng, media_specs
from vast.data.shards import FRAME_MEMBER, read_index
from vast.errors import ConfigError, DataError, MediaError

logger = logging.getLogger(__name__)

_FRAME = re.compile(FRAME_MEMBER.replace("{:04d}", r"\d+") + r"\.(\w+)$")


def expand_shards(spec: list, where: str) -> tuple[list[str], dict[str, int] | None]:
    """Shard URLs and, from a shards.json, the sample count of each (None without an index)."""
    if len(spec) == 1 and str(spec[0]).endswith(".json"):
        index_path = resolve_path(spec[0])
        index = read_index(index_path)
        urls, counts = [], {}
        for shard in index["shards"]:
            url = shard["url"]
            if "://" not in url and not url.startswith("pipe:") and not Path(url).is_absolute():
                url = str(index_path.parent / url)
            urls.append(url)
            counts[url] = int(shard["samples"])
        if not urls:
            raise DataError(f"{where}: {index_path} lists no shards")
        return urls, counts
    urls = [url for pattern in spec for url in braceexpand.braceexpand(str(pattern))]
    urls = [url if "://" in url or url.startswith("pipe:") else str(resolve_path(url)) for url in urls]
    return urls, None


def member_key(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the member path up to the first dot of its base name."""
    folder, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension


class ShardError(Exception):
    """A shard that cannot be opened or read to its end."""


def read_shard(url: str):
    """Yield (key, {extension: bytes}) for each sample of one shard, in order. Raises ShardError
    when the shard is missing or unreadable; samples read before a truncation are yielded first."""
    try:
        stream = webdataset.gopen(url, "rb")
    except FileNotFoundError:
        raise ShardError("not found (a missing shard; check the pattern or the shards.json)") from None
    except (OSError, ValueError) as error:
        raise ShardError(f"cannot be opened ({error})") from None
    key, members, count = None, {}, 0
    try:
        with stream, tarfile.open(fileobj=stream, mode="r|*") as archive:
            for info in archive:
                if not info.isfile():
                    continue
                member, extension = member_key(info.name)
                data = archive.extractfile(info).read()
                if member != key and key is not None:
                    yield key, members
                    count += 1
                    members = {}
                key = member
                members[extension] = data
    except (tarfile.TarError, EOFError, OSError, ValueError) as error:
        raise ShardError(f"is truncated or corrupt after {count} complete samples ({error})") from None
    if key is not None:
        yield key, members


def _shuffled(samples, size: int, rng: random.Random):
    """A shuffle buffer: hold `size` samples, hand out a random one as each new one arrives."""
    buffer = []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) >= size:
            yield buffer.pop(rng.randrange(len(buffer)))
    rng.shuffle(buffer)
    yield from buffer


class ShardDataset(IterableDataset):
    """A `type: shards` dataset (see the module docstring for who reads what and the position)."""

    def __init__(self, entry, model_cfg, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.entry, self.task, self.training = entry, entry.task, entry.training
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        self.resampled = bool(entry.resampled) and entry.training
        self.urls, self.counts = expand_shards(entry.shards, entry.where)
        self.specs = media_specs(entry, model_cfg)
        self.workers = max(1, entry.n_workers)
        self.resume: dict | None = None  # a state_dict to continue from, used by the next iteration
        if self.training and not self.resampled and len(self.urls) < world_size:
            raise ConfigError(f"{entry.where}: {len(self.urls)} shard(s) cannot feed {world_size} processes "
                              "(each reads whole shards); write smaller shards or set 'resampled': true")
        offsets, total = {}, 0
        for url in self.urls:
            offsets[url] = total
            total += (self.counts or {}).get(url, 0)
        self.offsets = offsets if self.counts else None

    @property
    def num_samples(self) -> int | None:
        return sum(self.counts.values()) if self.counts else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def collate(self, items: list[Item]):
        return collate(items, self.entry.name, self.task, self.training,
                       (self.specs.vision.mean, self.specs.vision.std))

    # --- streams ----------------------------------------------------------------------------------

    def _stream_index(self) -> tuple[int, int]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        offset = (self.resume or {}).get("next_worker", 0)
        return self.rank * self.workers + (worker + offset) % self.workers, self.world_size * self.workers

    def _epoch_shards(self, stream: int, streams: int) -> list[str]:
        order = list(self.urls)
        if self.training:
            random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
        return order[stream::streams]

    def _raw(self, urls):
        """(url, key, members, index) for each sample of `urls`; a failing shard yields one failure."""
        for url in urls:
            position = 0
            try:
                for key, members in read_shard(url):
                    index = self.offsets[url] + position if self.offsets else f"{url}:{key}"
                    position += 1
                    yield url, key, members, index
            except ShardError as error:
                yield url, None, Failure(url, str(error)), None

    def __iter__(self):
        stream, streams = self._stream_index()
        resume = (self.resume or {}).get("streams", {}).get(str(stream))
        if self.resampled:
            yield from self._resampled(stream, resume)
            return
        rng = random.Random(f"{self.seed}:{self.epoch}:{stream}")
        raw = self._raw(self._epoch_shards(stream, streams))
        if self.training and self.entry.shuffle_buffer > 1:
            raw = _shuffled(raw, self.entry.shuffle_buffer, rng)
        skip = int(resume["delivered"]) if resume and int(resume.get("epoch", -1)) == self.epoch else 0
        for delivered, sample in enumerate(raw, 1):
            if delivered <= skip:
                continue  # replayed without decoding: the resumed stream continues where it stopped
            item = self._decode(*sample)
            item.stream = {"stream": stream, "epoch": self.epoch, "delivered": delivered}
            yield item

    def _resampled(self, stream: int, resume: dict | None):
        rng = random.Random(f"{self.seed}:resampled:{stream}")
        if resume and "rng" in resume:
            rng.setstate(_tuples(resume["rng"]))
        while True:
            state = rng.getstate()
            url = self.urls[rng.randrange(len(self.urls))]
            raw = self._raw([url])
            if self.entry.shuffle_buffer > 1:
                raw = _shuffled(raw, self.entry.shuffle_buffer, rng)
            for sample in raw:
                item = self._decode(*sample)
                item.stream = {"stream": stream, "rng": state}
                yield item

    # --- one sample ---------------------------------------------------------------------------

    def _decode(self, url: str, key: str | None, members, index) -> Item:
        if key is None:  # the shard itself failed
            return Item(None, failed=members)
        name = f"{url}:{key}"
        try:
            sample, record = self._sample(name, members)
        except DataError as error:
            return Item(None, failed=failure_of(error))
        rng = item_rng(self.seed, self.epoch, index)
        return decode_item(sample, lambda: self._vision_source(name, members),
                           lambda: self._audio_source(name, members, record), self.specs, self.training, rng)

    def _sample(self, name: str, members: dict) -> tuple[Sample, dict]:
        if "json" not in members:
            raise MediaError(name, "has no json member (clip id and text); not a shard of this format")
        try:
            record = json.loads(members["json"])
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise MediaError(f"{name}.json", f"is not valid JSON ({error})") from None
        sample = normalise_row(record, f"{name}.json")
        problem = sample_problem(sample, self.task, self.training)
        if problem:
            raise MediaError(f"{name}.json", problem)
        return sample, record

    @staticmethod
    def _vision_source(name: str, members: dict):
        frames = sorted(ext for ext in members if _FRAME.match(ext))
        if frames:
            return [media.MediaBytes(f"{name}.{ext}", members[ext]) for ext in frames]
        for extension in members:
            if f".{extension}" in media.VIDEO_EXTENSIONS or f".{extension}" in media.IMAGE_EXTENSIONS:
                return media.MediaBytes(f"{name}.{extension}", members[extension])
        raise MediaError(name, f"has no video, image or frames among its members ({', '.join(sorted(members))})")

    @staticmethod
    def _audio_source(name: str, members: dict, record: dict):
        if record.get("audio_missing"):
            raise MediaError(name, "has no audio stream (recorded when the shard was written)")
        for extension in members:
            if f".{extension}" in media.AUDIO_EXTENSIONS:
                return media.MediaBytes(f"{name}.{extension}", members[extension])
        for extension in members:
            if f".{extension}" in media.VIDEO_EXTENSIONS:
                return media.MediaBytes(f"{name}.{extension}", members[extension])
        raise MediaError(name, "has no audio stream (no audio or video member)")


def _tuples(value):
    """A random.Random state that went through JSON (lists) back to tuples."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
