"""Evaluators of the file_processing demo (conf/workflow/file_processing.yaml): how well a
cleaning variant kept the rows it should have kept. The reference is `workflow.expected`."""

from __future__ import annotations


def kept_rows(state: dict, expected: dict) -> dict:
    """Precision, recall and F1 of the rows kept (`clean`) against `expected.keep_ids`."""
    kept = {row["id"] for row in state["clean"]}
    want = {str(i) for i in expected["keep_ids"]}
    right = len(kept & want)
    precision = right / len(kept) if kept else 0.0
    recall = right / len(want) if want else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}
