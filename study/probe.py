"""Look for the Xception ImageNet weights the way training will, and print what was found as one
JSON line: {"found": true, "source", "origin"} or {"found": false, "error"}.

    python -m study.probe [WEIGHTS_FILE]

run_study.py runs it in a subprocess, because the search may download about 90 MB and loads the
weights to check them; the study itself only needs the answer.
"""

from __future__ import annotations

import json
import sys

import xception


def probe(weights_path: str | None) -> dict:
    """What ``xception.build_xception_backbone`` finds: the weights' source, or why none."""
    try:
        model = xception.build_xception_backbone(
            pretrained=True, weights_path=weights_path or None, allow_missing_classifier=True
        )
    except xception.XceptionWeightsError as exc:
        return {"found": False, "error": str(exc)}
    return {"found": True, "source": str(model.weights_info.source), "origin": model.weights_info.origin}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    print(json.dumps(probe(argv[0] if argv else None)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
