"""The checksum that rolls the pods when their config changes.

The processes read their config once, at start, and a changed ConfigMap restarts nothing.
So both Deployments carry the SHA-256 of deploy/kubernetes/configmap.yaml as the pod
annotation `shadowtrial.io/config-sha256`: change the config, run this with --write, apply,
and the changed pod template rolls the proxies (maxUnavailable 0) and the workers.

    python3 deploy/config_checksum.py           # print the checksum
    python3 deploy/config_checksum.py --write   # and write it into both Deployments

(With kustomize, a configMapGenerator gets the same effect by naming the ConfigMap after
its content: see deploy/README.md.) tests/test_deploy.py fails while they disagree.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

K8S = Path(__file__).resolve().parent / "kubernetes"
CONFIGMAP = K8S / "configmap.yaml"
DEPLOYMENTS = (K8S / "proxy-deployment.yaml", K8S / "worker-deployment.yaml")
ANNOTATION = "shadowtrial.io/config-sha256"
_LINE = re.compile(rf'({re.escape(ANNOTATION)}: )"[0-9a-f]*"')


def checksum(path: Path = CONFIGMAP) -> str:
    """SHA-256 of the ConfigMap file as it is applied (hex)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write(digest: str) -> None:
    """Put `digest` into the annotation of every Deployment (each must have the line)."""
    for path in DEPLOYMENTS:
        text, count = _LINE.subn(rf'\g<1>"{digest}"', path.read_text())
        if count != 1:
            raise SystemExit(f"{path}: expected one {ANNOTATION} annotation, found {count}")
        path.write_text(text)


if __name__ == "__main__":
    digest = checksum()
    if "--write" in sys.argv[1:]:
        write(digest)
    print(digest)
