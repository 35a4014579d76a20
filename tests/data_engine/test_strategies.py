"""Mining strategies and selection on hand-made model outputs, where the right answer is known."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from data_engine.catalog import Catalog, FrameResult
from data_engine.mining.selection import SelectionConfig, rank_normalize, select, select_frames
from data_engine.mining.strategies import (
    STRATEGIES,
    FrameOutput,
    StrategyError,
    binary_entropy,
    load_plugins,
    make_strategy,
)
from perception.boxes import DecodedBoxes
from perception.schema import DETECTION_CLASSES
from perception.geometry import BEVGrid, make_transform, rotz
from perception.metrics.detection_boxes import EvalBoxes

GRID = BEVGrid(-25.6, 25.6, -25.6, 25.6, 0.8)
CLASSES = DETECTION_CLASSES


def boxes(rows: list[tuple[float, float, str, float]]) -> DecodedBoxes:
    """Boxes from (x, y, class, score) rows."""
    n = len(rows)
    return DecodedBoxes(
        center=np.array([[x, y, 0.8] for x, y, _, _ in rows], np.float64).reshape(n, 3),
        size=np.tile([1.9, 4.5, 1.6], (n, 1)).astype(np.float64), yaw=np.zeros(n), velocity=np.zeros((n, 2)),
        label=np.array([CLASSES.index(c) for _, _, c, _ in rows], np.int64),
        score=np.array([s for *_, s in rows], np.float64))


def output(token: str = "t", t: float = 0.0, pose: np.ndarray | None = None, det: DecodedBoxes | None = None,
           heat: np.ndarray | None = None, seg: np.ndarray | None = None, labels: EvalBoxes | None = None,
           embedding: np.ndarray | None = None) -> FrameOutput:
    X, Y = GRID.shape
    return FrameOutput(
        token=token, timestamp=t, global_T_ego=np.eye(4) if pose is None else pose,
        boxes=boxes([]) if det is None else det, class_names=CLASSES,
        heatmap=np.zeros((len(CLASSES), X, Y), np.float32) if heat is None else heat,
        seg_prob=np.full((2, X, Y), 0.01, np.float32) if seg is None else seg, seg_classes=("drivable_area", "lane"),
        embedding=np.ones(8, np.float32) if embedding is None else embedding, det_grid=GRID, labels=labels)


def test_det_entropy_and_margin_follow_the_peaks() -> None:
    X, Y = GRID.shape
    heat = np.zeros((len(CLASSES), X, Y), np.float32)
    heat[0, 10, 10] = 0.5  # the most uncertain peak there is: 1 bit
    heat[1, 30, 30] = 0.99  # a confident one
    out = output(heat=heat)
    ent, det = make_strategy("det_entropy:2").score(out, None)
    assert ent == pytest.approx((1.0 + binary_entropy(np.array(0.99))) / 2, abs=1e-6)
    assert det["peaks"] == 2
    calm = np.zeros_like(heat)
    calm[1, 30, 30] = 0.99
    assert make_strategy("det_entropy:2").score(output(heat=calm), None)[0] < ent
    # Margin: two classes equally likely at one cell is the most ambiguous.
    tie = np.zeros_like(heat)
    tie[0, 5, 5] = tie[3, 5, 5] = 0.5
    sure = np.zeros_like(heat)
    sure[0, 5, 5] = 0.95
    m_tie = make_strategy("det_margin:1").score(output(heat=tie), None)[0]
    m_sure = make_strategy("det_margin:1").score(output(heat=sure), None)[0]
    assert m_tie == pytest.approx(1.0, abs=1e-6) and m_sure == pytest.approx(1 - (0.95 - 0.05), abs=1e-6)


def test_seg_entropy() -> None:
    X, Y = GRID.shape
    half = np.full((2, X, Y), 0.5, np.float32)
    assert make_strategy("seg_entropy").score(output(seg=half), None)[0] == pytest.approx(1.0, abs=1e-5)
    assert make_strategy("seg_entropy").score(output(), None)[0] < 0.1


def test_flicker_counts_appear_vanish_and_switch_after_ego_motion() -> None:
    flicker = make_strategy("flicker:0.3")
    prev_pose = np.eye(4)
    pose = make_transform(rotz(0.0), np.array([5.0, 0.0, 0.0]))  # the ego drove 5 m forward
    # In the global frame: a car at x=10 stays; a car at x=0,y=8 vanishes; a pedestrian at x=12,y=-6 becomes a bicycle.
    prev = output(t=0.0, pose=prev_pose, det=boxes([(10, 0, "car", 0.9), (0, 8, "car", 0.8), (12, -6, "pedestrian", 0.7)]))
    cur = output(t=0.5, pose=pose, det=boxes([(5, 0, "car", 0.9), (7, -6, "bicycle", 0.6), (3, 3, "truck", 0.5),
                                              (2, 2, "car", 0.1)]))  # the last is below the threshold
    score, d = flicker.score(cur, prev)
    assert d == {"appear": 1, "vanish": 1, "switch": 1}
    assert score == pytest.approx(0.5 + 0.8 + 2 * 0.6)
    # The same boxes without the ego motion look like flicker everywhere; no previous frame is no flicker.
    assert flicker.score(output(t=0.5, pose=prev_pose, det=cur.boxes), prev)[1]["appear"] >= 2
    assert flicker.score(cur, None)[0] == 0.0
    # Objects at the edge of the grid may just enter the view: ignored.
    edge = output(t=0.5, pose=pose, det=boxes([(5, 0, "car", 0.9), (7, -6, "pedestrian", 0.7), (0, 8 - 0, "car", 0.8),
                                                (25.0, 0, "car", 0.9)]))
    assert flicker.score(edge, prev)[1]["appear"] == 1  # the car at x=0,y=8 (in the new frame) is new; x=25 is ignored


def test_rare_trigger_fires_above_its_threshold() -> None:
    X, Y = GRID.shape
    heat = np.zeros((len(CLASSES), X, Y), np.float32)
    heat[CLASSES.index("trailer"), 3, 4] = 0.42
    rare = make_strategy("rare:trailer@0.4")
    score, d = rare.score(output(heat=heat), None)
    assert score == pytest.approx(0.42) and d["fired"] and rare.fired(score, d)
    assert not make_strategy("rare:trailer@0.5").fired(score, d)
    with pytest.raises(StrategyError, match="unknown class 'spaceship'"):
        make_strategy("rare:spaceship")
    with pytest.raises(StrategyError, match="name the class"):
        make_strategy("rare")


def test_disagreement_finds_each_kind_of_label_error() -> None:
    labels = EvalBoxes.create(center=[[10, 0, 0.8], [0, 10, 0.8], [-10, 0, 0.8]], size=[[1.9, 4.5, 1.6]] * 3,
                              yaw=[0, 0, 0], names=["car", "car", "truck"])
    # The model: agrees on the car at (10, 0); sees a pedestrian where the label says car (0, 10);
    # sees the truck 2.5 m from its label; sees a bus nobody labeled.
    pred = boxes([(10.2, 0, "car", 0.9), (0, 10.3, "pedestrian", 0.8), (-12.5, 0, "truck", 0.7), (5, -15, "bus", 0.6)])
    score, d = make_strategy("disagreement").score(output(det=pred, labels=labels), None)
    assert d == {"missing": 1, "wrong_class": 1, "shifted": 1}
    assert score == pytest.approx(0.8 + 0.7 + 0.6)
    agree = boxes([(10.2, 0, "car", 0.9), (0, 10.3, "car", 0.8), (-10, 0.2, "truck", 0.7)])
    assert make_strategy("disagreement").score(output(det=agree, labels=labels), None)[0] == 0.0
    assert make_strategy("disagreement").target == "labeled"


def test_novelty_ranks_far_embeddings_higher() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(20, 8)) + np.array([5, 0, 0, 0, 0, 0, 0, 0])
    near = ref[:3] + 0.01 * rng.normal(size=(3, 8))
    far = rng.normal(size=(3, 8)) - np.array([5, 0, 0, 0, 0, 0, 0, 0])
    scores = make_strategy("novelty:2").score_run(np.concatenate([near, far]), ref)
    assert min(s for s, _ in scores[3:]) > max(s for s, _ in scores[:3])
    with pytest.raises(StrategyError, match="no labeled frames"):
        make_strategy("novelty").score_run(far, np.zeros((0, 8)))


def test_registry_plugins_and_errors(tmp_path) -> None:
    plugin = tmp_path / "mine_more.py"
    plugin.write_text(textwrap.dedent("""
        import numpy as np
        from data_engine.mining.strategies import Strategy, register

        @register("box_count")
        def box_count(arg):
            class Count(Strategy):
                def score(self, out, prev):
                    return float(len(out.boxes)), {}
            return Count("box_count")
    """))
    load_plugins([plugin])
    assert "box_count" in STRATEGIES
    assert make_strategy("box_count").score(output(det=boxes([(1, 1, "car", 0.5)] * 3)), None)[0] == 3.0
    with pytest.raises(StrategyError, match="unknown strategy 'nope'.*--plugin"):
        make_strategy("nope")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(StrategyError, match="broken.py: the plugin failed to load.*boom"):
        load_plugins([broken])
    with pytest.raises(StrategyError, match="missing"):
        load_plugins([tmp_path / "absent.py"])
    with pytest.raises(StrategyError, match="expected an integer"):
        make_strategy("det_entropy:many")
    # A plugin written against the API's earlier address registers into the same registry.
    older = tmp_path / "older_plugin.py"
    older.write_text(plugin.read_text().replace("data_engine.mining.strategies", "data_engine.strategies")
                     .replace('"box_count"', '"box_count_older"'))
    load_plugins([older])
    assert make_strategy("box_count_older").score(output(det=boxes([(1, 1, "car", 0.5)] * 2)), None)[0] == 2.0


def test_rank_normalize() -> None:
    v = np.array([0.0, 3.0, 1.0, 1.0, 5.0])
    n = rank_normalize(v, v > 0)
    assert n[0] == 0 and n[4] == 1.0 and n[2] == n[3] == pytest.approx(1.5 / 4) and n[1] == pytest.approx(0.75)


@pytest.fixture()
def scored_catalog(tmp_path):
    """A catalog with two pool scenes of 8 frames (0.5 s apart) scored by hand: scores rise with the
    frame index, and frames 6 and 7 of scene A are exact copies of frame 5 in embedding space."""
    from data_engine.sim.synth import SynthConfig, synthesize

    pool = tmp_path / "pool"
    synthesize(SynthConfig(out=pool, scenes=2, frames=8, seed=3, width=160, height=90, unlabeled=True), progress=False)
    cat = Catalog.open(tmp_path / "cat.db")
    cat.index_dataset(pool, unlabeled=True)
    run_id, _ = cat.start_run("r", "m.onnx", "0" * 64, ["det_entropy"], 4, "local", {})
    rng = np.random.default_rng(1)
    for d, scene, frames in cat.scene_frames(["unlabeled"]):
        offset = 0.0 if frames[0].scene_name == "scene-0000" else 0.01
        results = []
        for f in frames:
            emb = rng.normal(size=16).astype(np.float32)
            if offset == 0.0 and f.frame_index >= 5:
                emb = np.asarray(results[5].embedding) if f.frame_index > 5 else emb
            results.append(FrameResult(f.id, embedding=emb, scores={"det_entropy": (f.frame_index + offset, {})}))
        cat.write_scene(run_id, d, scene, results)
    yield cat, run_id
    cat.close()


def test_selection_suppresses_repeats_and_records_reasons(scored_catalog) -> None:
    cat, run_id = scored_catalog
    strategy = [make_strategy("det_entropy")]
    by_score = select(cat, run_id, strategy, 4, "unlabeled", SelectionConfig(diversity=0.0, dedup=0.0, min_gap=0.0))
    rows = {r.id: r for r in cat.query()}
    # Pure score ranking: frames 7 of both scenes first (B's offset wins the tie), then frames 6.
    assert [(rows[p.frame_id].scene_name, rows[p.frame_id].frame_index) for p in by_score] == \
        [("scene-0001", 7), ("scene-0000", 7), ("scene-0001", 6), ("scene-0000", 6)]
    assert all(any(r.startswith("det_entropy") for r in p.reasons) for p in by_score)
    # Temporal suppression: picks of one scene at least 2 s (4 frames) apart.
    spaced = select(cat, run_id, strategy, 10, "unlabeled", SelectionConfig(diversity=0.0, dedup=0.0, min_gap=2.0))
    for a in spaced:
        for b in spaced:
            fa, fb = rows[a.frame_id], rows[b.frame_id]
            if a is not b and fa.scene_name == fb.scene_name:
                assert abs(fa.timestamp - fb.timestamp) >= 2e6
    assert len(spaced) == 4  # 2 per scene of 8 frames at 2 Hz
    # Near-duplicates: frames 5, 6, 7 of scene A share an embedding; only one of them is picked.
    dedup = select(cat, run_id, strategy, 16, "unlabeled", SelectionConfig(diversity=0.0, dedup=0.25, min_gap=0.0))
    picked_a = {rows[p.frame_id].frame_index for p in dedup if rows[p.frame_id].scene_name == "scene-0000"}
    assert len(picked_a & {5, 6, 7}) == 1 and len(dedup) == 14
    # Diversity: by score alone, two copies (frames 6 and 7 of scene A) are both picked; k-center greedy
    # never takes a copy of a pick while distinct frames remain.
    diverse = select(cat, run_id, strategy, 4, "unlabeled", SelectionConfig(diversity=1.0, dedup=0.0, min_gap=0.0))
    assert all(any(r.startswith("diversity") for r in p.reasons) for p in diverse)
    ids, emb = cat.run_embeddings(run_id)
    vec = {int(i): e for i, e in zip(ids, emb)}

    def closest_pair(picks) -> float:
        return min(float(np.linalg.norm(vec[a.frame_id] - vec[b.frame_id])) for a in picks for b in picks if a is not b)

    assert closest_pair(by_score) == 0.0 and closest_pair(diverse) > 0.1


def test_select_is_select_frames_on_the_catalog_arrays(scored_catalog) -> None:
    cat, run_id = scored_catalog
    frames = {r.id: r for r in cat.query()}
    queued = next(f for f in frames.values() if f.scene_name == "scene-0000" and f.frame_index == 3)
    cat.set_label_state([queued.id], "queued")  # its neighbours in time may not be picked
    strategies = [make_strategy("det_entropy")]
    cfg = SelectionConfig(diversity=0.3, dedup=0.25, min_gap=1.0)
    picks = select(cat, run_id, strategies, 6, "unlabeled", cfg)
    ids, emb = cat.run_embeddings(run_id, ["unlabeled"])
    scene = np.array([frames[int(i)].scene_name for i in ids], dtype=object)
    time_s = np.array([frames[int(i)].timestamp / 1e6 for i in ids])
    raw = cat.run_scores(run_id)["det_entropy"]
    blocked = (scene == "scene-0000") & (np.abs(time_s - queued.timestamp / 1e6) < 1.0)
    direct = select_frames(emb, scene, time_s, {"det_entropy": np.array([raw[int(i)] for i in ids])}, strategies, 6,
                           cfg, np.zeros((0, emb.shape[1])), blocked)
    assert [(p.frame_id, p.score, p.reasons) for p in picks] == [(int(ids[j]), sc, r) for j, sc, r in direct]
    assert len(picks) == 6 and blocked.sum() == 2 and not {int(i) for i in ids[blocked]} & {p.frame_id for p in picks}
    free = select_frames(emb, scene, time_s, {"det_entropy": np.array([raw[int(i)] for i in ids])}, strategies, 6,
                         cfg, np.zeros((0, emb.shape[1])))
    assert {int(i) for i in ids[blocked]} & {int(ids[j]) for j, _, _ in free}  # the queued frame's neighbours
    assert picks[0].token == frames[picks[0].frame_id].sample_token


def test_label_qa_precision_at_k(tmp_path) -> None:
    from typer.testing import CliRunner

    from data_engine.cli import app
    from data_engine.labels.qa import qa_precision
    from data_engine.sim.synth import SynthConfig, synthesize

    data = tmp_path / "labeled"
    synthesize(SynthConfig(out=data, scenes=2, frames=5, seed=4, width=96, height=64), progress=False)
    with Catalog.open(tmp_path / "cat.db") as cat:
        cat.index_dataset(data)
        run_id, _ = cat.start_run("qa", "m.onnx", "0" * 64, ["disagreement"], 3, "local", {})
        frames = [f for _, _, fs in cat.scene_frames(["labeled"]) for f in fs]
        ranked = sorted(frames, key=lambda f: (f.scene_name, f.frame_index))  # scores 10, 9, ..., 1 in this order
        for d, scene, fs in cat.scene_frames(["labeled"]):
            cat.write_scene(run_id, d, scene, [FrameResult(f.id, scores={"disagreement": (10.0 - ranked.index(f), {})})
                                               for f in fs])
        # Errors in the 1st, 3rd and 8th ranked frames (two in the 3rd).
        errors = [{"kind": "missing", "sample_token": ranked[0].sample_token},
                  {"kind": "shift", "sample_token": ranked[2].sample_token},
                  {"kind": "class", "sample_token": ranked[2].sample_token},
                  {"kind": "missing", "sample_token": ranked[7].sample_token}]
        report = qa_precision(cat, "qa", errors, (1, 2, 5, 10))
    assert report["precision_at"] == {"1": 1.0, "2": 0.5, "5": 0.4, "10": 0.3}
    assert report["base_rate"] == 0.3 and report["frames_with_errors"] == 3
    assert report["recall_by_kind_at"]["5"] == {"class": 1.0, "missing": 0.5, "shift": 1.0}
    errors_file = tmp_path / "errors.json"
    errors_file.write_text(json.dumps(errors))
    res = CliRunner().invoke(app, ["qa", "--run", "qa", "--errors", str(errors_file), "--catalog", str(tmp_path / "cat.db"),
                                   "--k", "2"])
    assert res.exit_code == 0 and "precision@2: 0.500" in res.output, res.output
    errors_file.write_text(json.dumps([{"frame": "x"}]))
    res = CliRunner().invoke(app, ["qa", "--run", "qa", "--errors", str(errors_file), "--catalog", str(tmp_path / "cat.db")])
    assert res.exit_code == 1 and "errors.json: expected a list of errors" in res.output
