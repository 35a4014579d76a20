"""Scene quotas of `data-engine synth`: which scenes a quota picks (specs only, nothing rendered)."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_engine.sim.synth import SynthConfig
from data_engine.sim.synth_output import SynthError
from data_engine.sim.world import scene_spec
from perception.schema import parse_conditions


def config(quotas: dict[str, int], **kw) -> SynthConfig:
    return SynthConfig(out=Path("unused"), scenes=sum(quotas.values()), frames=3, seed=5, quotas=quotas, **kw)


def test_rare_class_quotas_pick_scenes_that_draw_the_class():
    cfg = config({"trailer": 3, "construction_vehicle": 2}, first_scene=7)
    cfg.validate()
    picked = cfg.scene_indices()
    assert len(picked) == 5 and len(set(picked)) == 5 and picked == sorted(picked) and picked[0] >= 7
    specs = [scene_spec(cfg.seed, i, cfg.frames) for i in picked]
    assert all(s.trailers or s.construction for s in specs)
    # A scene counts once, for its first class still needed (work zones come before trailers).
    need = dict(cfg.quotas)
    for s in specs:
        drawn = [k for k, flag in (("construction_vehicle", s.construction), ("trailer", s.trailers)) if flag]
        need[next(k for k in drawn if need[k] > 0)] -= 1
    assert need == {"trailer": 0, "construction_vehicle": 0}
    # Scenes in between that draw neither class are skipped; the first scene drawing one is taken.
    skipped = [i for i in range(7, picked[-1]) if i not in picked]
    assert skipped, "the world draws both classes rarely, so some scenes are skipped"
    first = next(i for i in range(7, 10_000) if scene_spec(cfg.seed, i, cfg.frames).trailers
                 or scene_spec(cfg.seed, i, cfg.frames).construction)
    assert picked[0] == first


def test_condition_and_class_quotas_mix():
    cfg = config({"night": 2, "trailer": 2})
    picked = cfg.scene_indices()
    specs = [scene_spec(cfg.seed, i, cfg.frames) for i in picked]
    nights = [s for s in specs if "night" in parse_conditions(s.conditions.description())]
    assert len(picked) == 4 and len(nights) >= 2
    assert sum(s.trailers for s in specs) >= 2


def test_quotas_without_rare_classes_pick_as_before():
    cfg = config({"night": 2, "fog": 1})
    words = [parse_conditions(scene_spec(cfg.seed, i, cfg.frames).conditions.description())
             for i in cfg.scene_indices()]
    assert sum("night" in w for w in words) >= 2 and sum("fog" in w for w in words) >= 1
    assert "quotas" in cfg.recipe() and "construction_vehicle" not in str(cfg.recipe())


def test_unknown_quota_key_is_refused_by_name():
    with pytest.raises(SynthError, match=r"unknown keys \['trailers'\].*rare classes \(construction_vehicle, trailer\)"):
        config({"trailers": 2, "night": 1}).validate()
    with pytest.raises(SynthError, match="bus"):
        config({"bus": 1}).validate()
