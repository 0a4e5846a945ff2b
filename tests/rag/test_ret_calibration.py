"""RET read with the closed-book answer's probability (rag.vlm.ret_calibration)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from rag.vlm import ret_calibration
from rag.vlm.ret_calibration import RetCalibration


def test_fit_recovers_the_witnesses_and_ranks_better_than_either():
    rng = np.random.default_rng(0)
    head = rng.normal(0, 2, 4000)
    prob = 1 / (1 + np.exp(-rng.normal(0, 2, 4000)))
    true = RetCalibration(0.5, -1.5, 0.3)
    wrong = (rng.random(4000) < true.p_ret(head, prob)).astype(int)
    cal = ret_calibration.fit(head, prob, wrong)
    assert cal.head == pytest.approx(0.5, abs=0.15) and cal.closed_book == pytest.approx(-1.5, abs=0.2)
    right = wrong == 0
    both = ret_calibration.auroc(-cal.p_ret(head, prob), right)
    assert both > ret_calibration.auroc(-head, right) and both > ret_calibration.auroc(prob, right)
    with pytest.raises(ValueError, match="both right and wrong"):
        ret_calibration.fit(head[:10], prob[:10], np.ones(10))


def test_calibration_file_round_trip(tmp_path):
    cal = RetCalibration(0.4, -0.5, 0.2)
    ret_calibration.save(tmp_path, cal, {"questions": 3})
    assert ret_calibration.load(tmp_path) == cal
    assert json.loads((tmp_path / ret_calibration.FILE).read_text())["stats"] == {"questions": 3}
    assert ret_calibration.load(tmp_path / "none") is None
    # the surer the closed-book answer, the less RET wants to retrieve
    p = cal.p_ret(np.zeros(3), np.array([0.1, 0.5, 0.99]))
    assert p[0] > p[1] > p[2] and p.dtype == np.float32


def test_reader_reads_ret_with_and_without_its_calibration(tiny_reader, tiny_kb):
    from rag.vlm.reader_vlm import ReaderVLM

    vlm = ReaderVLM.load(tiny_reader)
    vec = vlm.embed_images([str(tiny_kb / "images" / "btn.png")])
    qs = ["What is the capital of this country?", "What is this emoji called?"]
    vlm.ret_calibration = None
    _, conf, head_p, _ = vlm.inspect([vec[0]] * 2, qs)
    logit = vlm.inspect([vec[0]] * 2, qs, ret_head_logit=True)[2]
    assert 1 / (1 + np.exp(-logit)) == pytest.approx(head_p, abs=1e-5)
    vlm.ret_calibration = RetCalibration(0.0, -1.0, 0.0)  # the closed-book probability alone: 1 - p_answer
    assert vlm.inspect([vec[0]] * 2, qs)[2] == pytest.approx(1 - conf, abs=1e-4)
    assert vlm.retrieval_needed([vec[0]] * 2, qs) == pytest.approx(1 - conf, abs=1e-4)
    assert vlm.inspect([vec[0]] * 2, qs, calibrated=False)[2] == pytest.approx(head_p, abs=1e-6)
    assert vlm.retrieval_needed([vec[0]] * 2, qs, calibrated=False) == pytest.approx(head_p, abs=1e-6)


def test_the_pipeline_reads_ret_calibrated_unless_told_not_to(rag, tiny_kb):
    image, q = tiny_kb / "images" / "btn.png", "What is the capital of this country?"
    rag.vlm.ret_calibration = RetCalibration(0.0, 0.0, -20.0)  # calibrated: never retrieve
    calibrated = rag(image, q, familiarity_gate=False)
    head = rag(image, q, familiarity_gate=False, ret_closed_book=False, gamma=0.0)  # the head: always
    assert calibrated.p_ret < 1e-6 and not calibrated.retrieved
    assert head.p_ret > 1e-6 and head.retrieved
    # the answer says what the VLM answers alone and how sure it is, whether or not it retrieved
    for out in (calibrated, head):
        assert out.closed_book and 0 < out.closed_book_probability <= 1
    assert calibrated.answer == calibrated.closed_book


def test_training_writes_the_calibration_or_says_why_not(tiny_reader):
    card = json.loads((tiny_reader / "training.json").read_text())
    written = card["ret_calibration"]
    if "skipped" in written:  # a tiny run's few self-labels: the export reads the head alone
        assert written["skipped"] and ret_calibration.load(tiny_reader) is None
    else:
        assert ret_calibration.load(tiny_reader) == RetCalibration(
            written["head"], written["closed_book"], written["bias"])


def test_fit_converges_whatever_the_inputs_scale():
    rng = np.random.default_rng(1)
    head = rng.normal(0, 10, 3000)  # a sharp head: logits far from 0
    prob = 1 / (1 + np.exp(-rng.normal(3, 4, 3000)))
    true = RetCalibration(0.3, -0.6, 0.5)
    wrong = (rng.random(3000) < true.p_ret(head, prob)).astype(int)
    cal = ret_calibration.fit(head, prob, wrong)
    assert cal.head == pytest.approx(0.3, abs=0.05) and cal.closed_book == pytest.approx(-0.6, abs=0.1)


def test_a_fit_not_worth_shipping_is_refused(monkeypatch):
    rng = np.random.default_rng(2)
    head, prob = rng.normal(0, 2, 500), 1 / (1 + np.exp(-rng.normal(0, 2, 500)))

    def labels(wrong):
        monkeypatch.setattr(ret_calibration, "self_labels", lambda *a, **k: (head, prob, wrong))
        return ret_calibration.build(None, [], {})

    good = (rng.random(500) < RetCalibration(0.5, -1.0, 0.0).p_ret(head, prob)).astype(int)
    cal, stats = labels(good)
    assert cal.closed_book < 0 and stats["auroc_calibrated"] >= stats["auroc_head"] and stats["questions"] == 500
    with pytest.raises(ValueError, match="at least 20 of each"):
        labels(np.r_[np.zeros(5, int), np.ones(495, int)])
    with pytest.raises(ValueError, match="surer the closed-book answer"):  # sure answers wrong more often
        labels((rng.random(500) < RetCalibration(0.0, 1.5, 0.0).p_ret(head, prob)).astype(int))
