"""Check the compiled template before it is published: the versioned file exists and holds a
KFP v2 pipeline spec of the expected pipeline."""

import re
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).parent
NAME = "training-pipeline"


def main() -> None:
    version = (HERE / "VERSION").read_text().strip()
    # The version becomes an OCI tag when templates are pushed, so keep it plain semver.
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        sys.exit(f"VERSION {version!r} is not MAJOR.MINOR.PATCH")
    template = HERE / "dist" / f"{NAME}_v{version}.yaml"
    if not template.is_file():
        sys.exit(f"{template} is missing")
    spec = yaml.safe_load(template.read_text())
    if not isinstance(spec, dict) or not str(spec.get("schemaVersion", "")).startswith("2."):
        sys.exit(f"{template} is not a KFP v2 pipeline spec")
    name = spec.get("pipelineInfo", {}).get("name")
    if name != NAME:
        sys.exit(f"{template} holds pipeline {name!r}, not {NAME!r}")
    tasks = ", ".join(sorted(spec["root"]["dag"]["tasks"]))
    print(f"{template}: pipeline {name} v{version}, schema {spec['schemaVersion']}, tasks {tasks}")


if __name__ == "__main__":
    main()
