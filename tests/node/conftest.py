"""Fixtures of the node tier: the local node (containerd, CNI, kubelet, kube-scheduler) on the local
control plane, the operator's image built here and loaded into the node. The node is stopped when the
tier ends, so no later test finds Pods running."""
from __future__ import annotations

import os
import pathlib

import pytest

from tradewarden import incluster

RUN = pathlib.Path(os.environ.get("TRADEWARDEN_RUN") or incluster.CACHE / "run")


@pytest.fixture(scope="package")
def node(kubeconfig) -> incluster.LocalNode:
    if pathlib.Path(kubeconfig).resolve() != (RUN / "kubeconfig").resolve():
        pytest.skip(f"the node tier runs on the local control plane ({RUN}/kubeconfig), not on {kubeconfig}")
    try:
        yield incluster.start_node()
    finally:
        incluster.stop_node()


@pytest.fixture(scope="package")
def operator_image(node) -> str:
    """The operator's image built from the Dockerfile here (cached layers) and loaded into the node."""
    incluster.build_image()
    return incluster.load_image()
