"""Reading back what `core.study.save` wrote, for the tasks' study tests."""

import json
import os


def written_report(workdir: str) -> tuple[dict, str]:
    """(study.json parsed, table.md text) of `<workdir>/study`; asserts study.png is not empty."""
    out = os.path.join(workdir, "study")
    assert os.path.getsize(os.path.join(out, "study.png")) > 0
    with open(os.path.join(out, "study.json")) as f:
        saved = json.load(f)
    with open(os.path.join(out, "table.md")) as f:
        return saved, f.read()
