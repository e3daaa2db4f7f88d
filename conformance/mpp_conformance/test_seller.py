"""Collected by `pytest --pyargs mpp_conformance --mpp-seller URL`: one test item per check."""

from __future__ import annotations

from .pytest_plugin import gate, run_one


def test_conformance(mpp_conformance_check, mpp_conformance_options, request):
    gate(request.config)  # a dead or unpriced target: the first item fails with the reason, the rest skip
    run_one(mpp_conformance_check, request.config.getoption("--mpp-seller"), mpp_conformance_options, request.node)
