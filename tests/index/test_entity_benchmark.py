"""The entity-recognition benchmark's scoring: pictures shared by several entities."""
from __future__ import annotations

import numpy as np
from PIL import Image


def _tricolour(colours) -> Image.Image:
    img = Image.new("RGB", (60, 40))
    for i, c in enumerate(colours):
        img.paste(c, (20 * i, 0, 20 * i + 20, 40))
    return img


def test_same_picture_groups_identical_queries_only(benchmark_module):
    er = benchmark_module("entity_recognition")
    france = _tricolour([(0, 35, 149), (255, 255, 255), (237, 41, 57)])
    italy = _tricolour([(0, 146, 70), (255, 255, 255), (206, 43, 55)])
    groups = er.same_picture([france, italy, france.copy()], ["country:FRA", "country:ITA", "country:BLM"])
    assert groups[0] == groups[2] == {"country:FRA", "country:BLM"}
    assert groups[1] == {"country:ITA"}


def test_ranks_accept_any_entity_of_the_group(benchmark_module):
    er = benchmark_module("entity_recognition")
    blank = Image.new("RGB", (4, 4))
    index = er.EntityIndex(["A", "B", "C"], [blank] * 3, ["A", "B", "C"])
    images = np.eye(3, dtype=np.float32)
    query = np.array([[0.2, 0.9, 0.1]], np.float32)  # nearest to B; its label says A
    assert index.ranks(query, images, ["A"]).tolist() == [1]
    assert index.ranks(query, images, ["A"], [frozenset({"A", "B"})]).tolist() == [0]
    assert index.ranks(query, images, ["A"], [frozenset({"A", "C"})]).tolist() == [1]
    assert index.ranks(query, images, ["B"], [frozenset()]).tolist() == [0]  # the label always counts


def test_shown_queries_take_held_out_ones_with_their_best_images(benchmark_module, tmp_path):
    er = benchmark_module("entity_recognition")
    red, blue, green = (Image.new("RGB", (8, 8), c) for c in ("red", "blue", "green"))
    # entity A has two images (red, blue), B one (green)
    index = er.EntityIndex(["A", "B"], [red, blue, green], ["A", "A", "B"])
    images = np.eye(3, dtype=np.float32)
    task = {"name": "t", "index": index, "truth": ["A", "B", "A"], "answers": None,
            "subsets": {"held-out": np.array([False, True, True])}}
    queries = np.array([[1, 0, 0], [0, 0.2, 0.9], [0, 0.9, 0.1]], np.float32)
    shown = er.shown_queries(task, "clean", [red, green, blue], queries, images, n=5, top=2)
    assert [s["truth"] for s in shown] == ["B", "A"]  # the held-out queries only
    assert [(h["key"], h["right"]) for h in shown[0]["hits"]] == [("B", True), ("A", False)]
    assert shown[1]["hits"][0]["image"] is blue  # A shown by its best-scoring image, not its first
    er.grid(shown, {"A": "Entity A"}, tmp_path / "grid.png")
    picture = np.asarray(Image.open(tmp_path / "grid.png").convert("RGB"))
    assert picture.shape[0] > 64 and picture.shape[1] > 3 * 64
    assert (np.abs(picture.astype(int) - (0, 140, 0)).sum(-1) == 0).any()  # a right hit's green frame
    assert (np.abs(picture.astype(int) - (200, 0, 0)).sum(-1) == 0).any()  # a wrong hit's red frame
    no_held_out = {**task, "subsets": {"held-out": np.zeros(3, bool)}}
    assert er.shown_queries(no_held_out, "clean", [red, green, blue], queries, images) == []
    every = {**task, "subsets": None}  # flags: no held-out subset, every query is a candidate
    picks = [s["truth"] for s in er.shown_queries(every, "clean", [red, green, blue], queries, images, n=2)]
    assert picks == ["A", "A"]  # the first and the last query, evenly spaced


def test_run_tasks_shows_the_first_method_at_the_last_distortion(benchmark_module):
    er = benchmark_module("entity_recognition")
    blank = Image.new("RGB", (4, 4))
    index = er.EntityIndex(["A", "B"], [blank, blank], ["A", "B"])
    task = {"name": "t", "domain": "d", "index": index, "queries": [blank, blank], "truth": ["A", "B"],
            "subsets": None}
    calls = []

    def method(tag):
        def encode(images):
            calls.append(tag)
            return np.eye(2, dtype=np.float32)[: len(images)]
        return encode

    results, shown = er.run_tasks({"first": method("first"), "second": method("second")}, [task],
                                  ["clean", "blur"], seed=0)
    assert len(results) == 2 * 2 and len(shown) == 2  # two queries of the one task, once
    assert {s["distortion"] for s in shown} == {"blur"} and all(s["hits"][0]["right"] for s in shown)
