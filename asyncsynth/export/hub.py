"""Upload an exported run to the Hugging Face Hub, with its dataset card.

What is uploaded is first written to a folder (:func:`hub_folder`), exactly as it will
be in the repository: ``README.md`` (the card) and ``data/{split}-0000K-of-0000N.parquet``
(the Hub's layout, typed columns, split by :data:`~asyncsynth.export.arrow.SHARD_ROWS`
rows). :func:`push_to_hub` then sends that folder with ``huggingface_hub`` in one
commit (the card and the data change together), deleting the data files of an earlier
push that it does not replace. The token comes from ``token``,
else from ``HF_TOKEN`` or the login ``huggingface_hub`` keeps; asyncsynth never writes
it anywhere. ``HF_ENDPOINT`` (or ``endpoint``) points it at another Hub.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config
from ..engine import AsyncsynthError, InputError
from .card import RunStats, dataset_card
from .exporter import Source, open_source, typed_columns
from .runs import RunFiles

Run = str | os.PathLike[str] | RunFiles | Source

__all__ = ["HubError", "HubFolder", "HubPush", "hub_folder", "push_to_hub"]


@dataclass
class HubFolder:
    """A folder laid out as the dataset repository: the card and the data files."""

    root: Path
    files: list[Path]
    rows: dict[str, int]

    @property
    def card(self) -> Path:
        return self.root / "README.md"


@dataclass
class HubPush:
    repo_id: str
    url: str
    commit_url: str
    files: list[str]
    """Paths in the repository."""
    rows: dict[str, int]


def hub_folder(
    run: Run,
    folder: str | os.PathLike[str],
    *,
    repo_id: str | None = None,
    license: str = "unknown",
    language: Sequence[str] | None = None,
    pretty_name: str | None = None,
    config: Config | None = None,
    max_rows: int | None = None,
    **options: Any,
) -> HubFolder:
    """Write the card and the Parquet files of ``run`` into ``folder``.

    ``options`` are :func:`~asyncsynth.export.export_run`'s (GRA filters, ``system``).
    """
    from .arrow import SHARD_ROWS, write_shards

    source = open_source(run, config=config, **options)
    root = Path(folder)
    data = root / "data"
    columns = typed_columns(source)
    where = str(source.run.output or source.run.root)
    files: list[Path] = []
    rows: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for split, make in source.splits.items():
        parts, rows[split] = write_shards(
            data, split, columns, make(), max_rows=max_rows or SHARD_ROWS, source=where
        )
        files += parts
        sizes[split] = sum(p.stat().st_size for p in parts)
    card = dataset_card(
        source,
        rows,
        features=columns.features(),
        data_files={split: f"data/{split}-*.parquet" for split in rows},
        num_bytes=sizes,
        license=license,
        language=language,
        pretty_name=pretty_name,
        config=config,
        repo_id=repo_id,
        run_stats=RunStats.of(source.run) if source.run.kind == "run" else None,
    )
    (root / "README.md").write_text(card, encoding="utf-8")
    return HubFolder(root, [root / "README.md", *files], rows)


class HubError(AsyncsynthError):
    """The Hub refused or could not be reached (its message says why)."""


def _token(token: str | None) -> str:
    from huggingface_hub import get_token

    found = token or get_token()
    if not found:
        raise InputError("no Hugging Face token: set HF_TOKEN, or log in once with `hf auth login`")
    return found


def push_to_hub(
    run: Run,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    license: str = "unknown",
    language: Sequence[str] | None = None,
    pretty_name: str | None = None,
    config: Config | None = None,
    commit_message: str | None = None,
    **options: Any,
) -> HubPush:
    """Create the dataset repository ``repo_id`` (``OWNER/NAME``) if needed and upload
    ``run`` with its card in one commit, which also deletes the data files of an earlier
    push that this one does not replace.

    ``options`` are :func:`~asyncsynth.export.export_run`'s (GRA filters, ``system``).
    """
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise InputError(f"--push-to-hub: expected OWNER/NAME, got {repo_id!r}")
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    source = open_source(run, config=config, **options)
    api = HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT"), token=_token(token))
    with tempfile.TemporaryDirectory(prefix="asyncsynth-hub-") as scratch:
        staged = hub_folder(
            source,
            scratch,
            repo_id=repo_id,
            license=license,
            language=language,
            pretty_name=pretty_name,
            config=config,
        )
        paths = [p.relative_to(staged.root).as_posix() for p in staged.files]
        total = sum(staged.rows.values())
        try:
            repo = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
            stale = [
                p
                for p in api.list_repo_files(repo_id, repo_type="dataset")
                if p.startswith("data/") and p.endswith(".parquet") and p not in paths
            ]
            operations: list[Any] = [
                CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(file))
                for path, file in zip(paths, staged.files, strict=True)
            ]
            operations += [CommitOperationDelete(path_in_repo=p) for p in stale]
            commit = api.create_commit(
                repo_id,
                operations,
                commit_message=commit_message or f"asyncsynth export: {total:,} rows",
                repo_type="dataset",
            )
        except (HfHubHTTPError, OfflineModeIsEnabled, OSError, ValueError) as exc:
            raise HubError(f"{repo_id}: the upload failed: {exc}") from exc  # ValueError: bad card
    return HubPush(repo_id, str(repo), str(commit.commit_url), paths, staged.rows)
