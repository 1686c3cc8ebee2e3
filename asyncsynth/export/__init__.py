"""From a run to a training set: export formats, dataset cards, the Hugging Face Hub.

    from asyncsynth.export import export_run, push_to_hub

    export_run("runs/gra", "sharegpt", "train.jsonl", rounds="1-3", min_mu=8.5)
    export_run("runs/s3", "dataset", "s3-data", config=load_config("s3.toml"))
    push_to_hub("runs/gra", "me/gra-10k", private=True)

The JSONL formats need nothing more than the base install; Parquet, ``datasets``
folders and the Hub need ``asyncsynth[export]`` (pyarrow, datasets, huggingface_hub),
imported only when used.
"""

from .card import dataset_card
from .exporter import FORMATS, ExportResult, Source, describe_export, export_run, open_source
from .hub import HubError, HubFolder, HubPush, hub_folder, push_to_hub
from .records import GraFilter, parse_rounds
from .runs import RunFiles, RunKind, iter_rows, open_run

__all__ = [
    "FORMATS",
    "ExportResult",
    "GraFilter",
    "HubError",
    "HubFolder",
    "HubPush",
    "RunFiles",
    "RunKind",
    "Source",
    "dataset_card",
    "describe_export",
    "export_run",
    "hub_folder",
    "iter_rows",
    "open_run",
    "open_source",
    "parse_rounds",
    "push_to_hub",
]
