"""The caption tables of a prepared folder are memory-mapped, not loaded: a gather returns exactly what the whole
tables would give, opening and gathering cost no process memory, and a gather on a cold page cache reads the pages
of its rows and not the kernel's read-around."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from groupdiff.training.prepared import load_prepared

IMAGES, PER_IMAGE, TOKENS, WIDTH = 2000, 2, 16, 512  # tokens: 4000 rows of 16 KB, 64 MB


def rss_anon_mb() -> float:
    """Private memory of this process (a memory-mapped file is RssFile, and only where touched)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssAnon:")) / 1024


def read_mb() -> float:
    """Bytes this process made the block layer read (page-cache hits are not counted)."""
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("read_bytes:")) / 2**20


def evict(path) -> None:
    """Drop a file's pages from the page cache (written back first, since only clean pages can go)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def big_prepared(tmp_path_factory):
    """A finished prepared folder whose caption tables are 64 MB of tokens (real files, made-up values)."""
    if not (os.path.exists("/proc/self/status") and os.path.exists("/proc/self/io")):
        pytest.skip("needs Linux /proc accounting of memory and I/O")
    root = tmp_path_factory.mktemp("prepared") / "big-text"
    (root / "text").mkdir(parents=True)
    g, rows = torch.Generator().manual_seed(0), IMAGES * PER_IMAGE
    lengths = torch.randint(1, TOKENS + 1, (rows + 1,), generator=g)
    mask = torch.arange(TOKENS)[None] < lengths[:, None]
    save_file({"tokens": torch.randn(rows, TOKENS, WIDTH, generator=g).half(), "mask": mask[:rows],
               "pooled": torch.randn(rows, WIDTH, generator=g).half(),
               "null_tokens": torch.randn(1, TOKENS, WIDTH, generator=g).half(), "null_mask": mask[rows:],
               "null_pooled": torch.randn(1, WIDTH, generator=g).half()}, root / "text" / "embeddings.safetensors")
    captions = [[f"image {i} caption {j}" for j in range(PER_IMAGE)] for i in range(IMAGES)]
    (root / "text" / "captions.json").write_text(json.dumps({"captions": captions}))
    save_file({"samples": torch.zeros(IMAGES, 1, 2, 2), "labels": torch.zeros(IMAGES, dtype=torch.int64)},
              root / "samples.safetensors")
    encoder = {"name": "tiny-clip-text", "sha256": "0" * 64, "context_length": 32}
    (root / "prepare.json").write_text(json.dumps({
        "complete": True, "dataset": {"class_names": ["image"]}, "space": "pixel", "scale_factor": 1.0,
        "encoders": {}, "text": {"captions": "folder", "per_image": PER_IMAGE, "encoder": encoder}}))
    return root


def test_a_gather_gives_the_rows_of_the_whole_tables(big_prepared):
    text = load_prepared(big_prepared).text()
    whole = {name: table.clone() for name, table in load_file(big_prepared / "text/embeddings.safetensors").items()}
    for seed in range(5):
        index = torch.randint(IMAGES, (64,), generator=torch.Generator().manual_seed(seed))
        index[1] = index[0]  # a repeated image
        condition = text.condition(index, torch.Generator().manual_seed(seed))
        choice = torch.randint(PER_IMAGE, index.shape, generator=torch.Generator().manual_seed(seed))
        rows = index * PER_IMAGE + choice
        assert condition.tokens.dtype == torch.float32 and condition.mask.dtype == torch.bool
        assert torch.equal(condition.tokens, whole["tokens"][rows].float())
        assert torch.equal(condition.mask, whole["mask"][rows])
        assert torch.equal(condition.pooled, whole["pooled"][rows].float())
    fixed = text.condition(torch.tensor([7, IMAGES - 1]), caption=1)
    assert torch.equal(fixed.pooled, whole["pooled"][[15, 2 * IMAGES - 1]].float())
    assert torch.equal(text.null.tokens, whole["null_tokens"].float())


def test_the_caption_tables_cost_no_process_memory(big_prepared):
    before = rss_anon_mb()
    text = load_prepared(big_prepared).text()
    g = torch.Generator().manual_seed(0)
    for _ in range(20):  # 1280 of the 4000 rows, each batch 2 MB in float32
        text.condition(torch.randint(IMAGES, (64,), generator=g), g)
    grown = rss_anon_mb() - before
    assert text.tokens.shape == (IMAGES * PER_IMAGE, TOKENS, WIDTH)
    assert grown < 24, f"opening and gathering added {grown:.0f} MB of private memory (a copy of the tables: 66 MB)"


def test_a_cold_gather_reads_the_pages_of_its_rows_only(big_prepared):
    path = big_prepared / "text" / "embeddings.safetensors"
    text = load_prepared(big_prepared).text()
    evict(path)
    before = read_mb()
    with open(path, "rb") as file:  # is this file system's reading counted here (not on tmpfs, say)?
        file.seek(32 * 2**20)
        file.read(2**20)
    if read_mb() - before < 1:
        pytest.skip("reads from this file system are not counted in /proc/self/io")
    evict(path)
    before = read_mb()
    text.condition(torch.randint(IMAGES, (32,), generator=torch.Generator().manual_seed(0)),
                   torch.Generator().manual_seed(0))
    read = read_mb() - before
    # 32 token rows of 4 pages, and one page each for a mask and a pooled row: 0.75 MB at most; the kernel's
    # read-around of every missing page (128 KB to 8 MB a fault) reads 12 MB or more
    assert read <= 1.0, f"a gather of 32 rows read {read:.1f} MB"
