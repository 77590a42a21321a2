"""Regenerate github-webhook-examples.jsonl from the npm package @octokit/webhooks-examples.

Keeps the first example payload of every event type of api.github.com, one JSON object a
line: {"event": <X-GitHub-Event>, "payload": <the example>}. Needs `npm` on the PATH:

    python tests/data/regenerate_github_examples.py [VERSION]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
OUT = HERE / "github-webhook-examples.jsonl"


def main() -> None:
    spec = "@octokit/webhooks-examples" + (f"@{sys.argv[1]}" if len(sys.argv) > 1 else "")
    with tempfile.TemporaryDirectory() as tmp:
        name = subprocess.run(
            ["npm", "pack", "--silent", spec], cwd=tmp, check=True, capture_output=True, text=True
        ).stdout.split()[-1]
        with tarfile.open(Path(tmp) / name) as tar:
            member = tar.extractfile("package/api.github.com/index.json")
            package = tar.extractfile("package/package.json")
            if member is None or package is None:
                raise SystemExit(f"{name}: not the expected package layout")
            index = json.load(member)
            version = json.load(package)["version"]
    lines = [
        json.dumps({"event": entry["name"], "payload": entry["examples"][0]}, sort_keys=True)
        for entry in index
        if entry["examples"]
    ]
    OUT.write_text("\n".join(lines) + "\n")
    print(f"{OUT.name}: {len(lines)} event types from @octokit/webhooks-examples {version}")


if __name__ == "__main__":
    main()
