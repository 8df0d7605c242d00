"""Where the data lives: config value, then ``PRUNE_DATA_DIR``, then ``../shared/data``, then a download.

The shared folder is read-only and is never copied into the project. Users with internet who have no
local copy get the files fetched from the datasets' public URLs into ``PRUNE_LIT_CACHE``.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

ENV_VAR = "PRUNE_DATA_DIR"
REPO_ROOT = Path(__file__).resolve().parents[2]

# Relative path inside the data dir -> public URL it was published at (see MANIFEST.json of the shared data).
PUBLIC_URLS: dict[str, str] = {
    "counterfact/counterfact-edit.json": "https://raw.githubusercontent.com/Jometeorie/KnowledgeSpread/51d7402617c2e52bde0dc11b76e400c3725a181a/data/counterfact/counterfact-edit.json",
    "counterfact/counterfact-train.json": "https://raw.githubusercontent.com/Jometeorie/KnowledgeSpread/51d7402617c2e52bde0dc11b76e400c3725a181a/data/counterfact/counterfact-train.json",
    "counterfact/counterfact-val.json": "https://raw.githubusercontent.com/Jometeorie/KnowledgeSpread/51d7402617c2e52bde0dc11b76e400c3725a181a/data/counterfact/counterfact-val.json",
    "zsre/zsre_mend_eval_portability_gpt4.json": "https://raw.githubusercontent.com/JasonForJoy/Model-Editing-Hurt/b1504a8e5f76b51f30fa49ba3eb8eeace69f8edd/edited-data/zsre_mend_eval_portability_gpt4.json",
    "zsre/zsre_mend_train-1k.json": "https://raw.githubusercontent.com/Jometeorie/KnowledgeSpread/51d7402617c2e52bde0dc11b76e400c3725a181a/data/zsre/zsre_mend_train-1k.json",
    "task-data/test-NLI.tsv": "https://raw.githubusercontent.com/mjy1111/PRUNE/046c2a6113a865b3d85d5fd4a07142948372c1be/data/task-data/test-NLI.tsv",
    "task-data/test-OpenDomainQA.jsonl": "https://raw.githubusercontent.com/mjy1111/PRUNE/046c2a6113a865b3d85d5fd4a07142948372c1be/data/task-data/test-OpenDomainQA.jsonl",
    "task-data/test-reasoning.jsonl": "https://raw.githubusercontent.com/mjy1111/PRUNE/046c2a6113a865b3d85d5fd4a07142948372c1be/data/task-data/test-reasoning.jsonl",
    "task-data/test-summarization.json": "https://raw.githubusercontent.com/mjy1111/PRUNE/046c2a6113a865b3d85d5fd4a07142948372c1be/data/task-data/test-summarization.json",
    "corpus/wiki.test.raw": "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/test.txt",
    "corpus/wiki.valid.raw": "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/valid.txt",
}


class DataNotFoundError(FileNotFoundError):
    pass


def candidate_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The data dirs tried, in order: explicit, env var, the shared folder beside the checkout."""
    dirs = []
    if data_dir:
        dirs.append(Path(data_dir).expanduser())
    if os.environ.get(ENV_VAR):
        dirs.append(Path(os.environ[ENV_VAR]).expanduser())
    dirs += [REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    return dirs


def _download(rel: str, dest: Path) -> None:
    url = PUBLIC_URLS[rel]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    log.info("downloading %s", url)
    with urllib.request.urlopen(url, timeout=30) as resp, open(tmp, "wb") as out:
        out.write(resp.read())
    tmp.replace(dest)  # never leave a half-written file under the real name


def resolve_data_file(rel: str, data_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Absolute path of ``rel`` (e.g. ``"counterfact/counterfact-edit.json"``) in the first data dir holding it.

    An explicit ``data_dir`` that does not exist is an error (not a silent fall-back to the other folders).
    """
    if data_dir and not Path(data_dir).expanduser().is_dir():
        raise DataNotFoundError(f"data_dir {str(data_dir)!r} does not exist (or is not a folder)")
    tried = candidate_dirs(data_dir)
    for d in tried:
        if (d / rel).is_file():
            return d / rel
    from prune_lit.models.loader import cache_dir

    dest = cache_dir() / "data" / rel
    if dest.is_file():
        return dest
    if download and rel in PUBLIC_URLS:
        try:
            _download(rel, dest)
            return dest
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            reason = f"download from {PUBLIC_URLS[rel]} failed ({err})"
    else:
        reason = "no public URL is known for it" if rel not in PUBLIC_URLS else "downloads are disabled"
    looked = "\n".join(f"  {d / rel}" for d in tried)
    raise DataNotFoundError(
        f"data file {rel!r} not found. Looked in:\n{looked}\nand {reason}. "
        f"Pass data_dir=..., or set {ENV_VAR} to a folder holding {rel}."
    )
