"""kopf settings and the `tradewarden run` entry point's argument checks (no cluster needed)."""
from __future__ import annotations

import logging

import kopf

from tradewarden.controller import main, settings


def test_settings_use_the_project_prefix_and_distinct_priorities(monkeypatch):
    s = kopf.OperatorSettings()
    monkeypatch.setenv("TRADEWARDEN_EVENT_LEVEL", "WARNING")
    monkeypatch.delenv("TRADEWARDEN_PEERING_PRIORITY", raising=False)
    settings.configure(s)
    assert isinstance(s.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert s.persistence.progress_storage.prefix == "tradewarden.io"
    assert isinstance(s.persistence.diffbase_storage, kopf.AnnotationsDiffBaseStorage)
    assert s.persistence.diffbase_storage.prefix == "tradewarden.io"
    assert s.persistence.finalizer.startswith("tradewarden.io/")
    assert s.posting.level == logging.WARNING
    other = kopf.OperatorSettings()
    settings.configure(other)
    assert s.peering.priority != other.peering.priority      # equal priorities would freeze both replicas
    monkeypatch.setenv("TRADEWARDEN_PEERING_PRIORITY", "42")
    settings.configure(other)
    assert other.peering.priority == 42


def test_run_requires_a_namespace_choice(capsys):
    assert main.run(namespaces=[], all_namespaces=False, standalone=True, metrics_port=0, liveness="off") == 2
    assert "--all-namespaces" in capsys.readouterr().err
    assert main.run(namespaces=["a"], all_namespaces=True, standalone=True, metrics_port=0, liveness="off") == 2
