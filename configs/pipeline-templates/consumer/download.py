"""Fetch a published training-pipeline template by tag with Kubeflow's own client, from the KFP
registry API of `builder serve --kfp-registry localhost:5000/kfp` (the build pushes to
localhost:5000/kfp/ml/pipelines/training-pipeline, which that API serves as the package
`training-pipeline` of /kfp/ml/pipelines).

    pip install 'kfp~=2.17.0'
    KFP_REGISTRY=http://localhost:8080/kfp/ml/pipelines python download.py 1.0.0 pipeline.yaml

BUILDER_API_TOKEN is sent as a bearer token when set (needed if the server's reads need it).
"""

import os
import sys

from kfp.registry import ApiAuth, RegistryClient

PACKAGE = "training-pipeline"


def main() -> None:
    tag = sys.argv[1] if len(sys.argv) > 1 else "latest"
    out = sys.argv[2] if len(sys.argv) > 2 else f"{PACKAGE}_{tag}.yaml"
    host = os.environ.get("KFP_REGISTRY", "http://localhost:8080/kfp/ml/pipelines")
    token = os.environ.get("BUILDER_API_TOKEN")
    client = RegistryClient(host=host, auth=ApiAuth(token) if token else None)
    version = client.get_tag(PACKAGE, tag)["version"].rsplit("/", 1)[-1]
    client.download_pipeline(PACKAGE, tag=tag, file_name=out)
    print(f"{out}: {PACKAGE} {tag} ({version})")


if __name__ == "__main__":
    main()
