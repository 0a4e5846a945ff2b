"""The entity-recognition benchmark's scoring: pictures shared by several entities."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "entity_recognition.py"


def _bench():
    spec = importlib.util.spec_from_file_location("entity_recognition", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tricolour(colours) -> Image.Image:
    img = Image.new("RGB", (60, 40))
    for i, c in enumerate(colours):
        img.paste(c, (20 * i, 0, 20 * i + 20, 40))
    return img


def test_same_picture_groups_identical_queries_only():
    er = _bench()
    france = _tricolour([(0, 35, 149), (255, 255, 255), (237, 41, 57)])
    italy = _tricolour([(0, 146, 70), (255, 255, 255), (206, 43, 55)])
    groups = er.same_picture([france, italy, france.copy()], ["country:FRA", "country:ITA", "country:BLM"])
    assert groups[0] == groups[2] == {"country:FRA", "country:BLM"}
    assert groups[1] == {"country:ITA"}


def test_ranks_accept_any_entity_of_the_group():
    er = _bench()
    blank = Image.new("RGB", (4, 4))
    index = er.EntityIndex(["A", "B", "C"], [blank] * 3, ["A", "B", "C"])
    images = np.eye(3, dtype=np.float32)
    query = np.array([[0.2, 0.9, 0.1]], np.float32)  # nearest to B; its label says A
    assert index.ranks(query, images, ["A"]).tolist() == [1]
    assert index.ranks(query, images, ["A"], [frozenset({"A", "B"})]).tolist() == [0]
    assert index.ranks(query, images, ["A"], [frozenset({"A", "C"})]).tolist() == [1]
    assert index.ranks(query, images, ["B"], [frozenset()]).tolist() == [0]  # the label always counts
