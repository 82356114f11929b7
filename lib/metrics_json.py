"""The analyses' metrics JSON, ``out/<D>_<M>_metrics.json``: one section per script, every other
section kept (docs/design.md#analysis-metrics-json)."""

from __future__ import annotations

from lib.fileio import atomic_write_json, file_lock, read_json_object, remove_unfinished_writes


def section_header(args) -> dict:
    """The first entries of an analysis script's JSON section, from its ``add_analysis_flags``
    flags: the model, the dataset, the split (test), the checkpoint it is about and the training
    run that saved it (``run_id``; None for a checkpoint without one)."""
    return {"model": args.model, "dataset": args.dataset, "split": "test", "checkpoint": args.checkpoint_path,
            "run_id": getattr(args, "run_id", None)}  # fmt: skip


def update_metrics_json(path: str, sections: dict) -> dict:
    """Set each section of ``sections`` (name: data) in the JSON object at ``path``, in one write,
    keeping every other section.

    Read-modify-write, written atomically; a killed write's temp file is removed (its script did
    not finish, and runs again). A corrupt file (bad JSON, or not a JSON object) is moved aside
    with a warning (``<path>.corrupt-<time>``), never overwritten. Returns the new content.
    """
    with file_lock(path):
        remove_unfinished_writes(path)  # every writer of the file holds this lock
        content = read_json_object(path, "metrics JSON")
        content.update(sections)
        atomic_write_json(path, content)
        return content
