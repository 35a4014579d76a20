"""Populating a scene: traffic in lanes, parked vehicles, pedestrians on sidewalks and crossings,
cyclists, work zones with cones, barriers and construction vehicles, trucks with trailers, and
scenery (buildings, trees, poles) beside the roads.
"""

from __future__ import annotations

import numpy as np

from .actors import Actor, Motion, make_actor, make_scenery, sample_size
from .layout import Layout, Path, Road, paved_mask, MAP_PPM


class _Ids:
    def __init__(self) -> None:
        self.next = 0

    def __call__(self) -> int:
        self.next += 1
        return self.next - 1


def _window(road: Road, ego_s: float, reach: float) -> tuple[float, float]:
    """Arc-length range of a road's centre line worth populating around the ego's course."""
    return max(0.0, ego_s - reach), min(road.center.length, ego_s + reach)


def populate(rng: np.random.Generator, layout: Layout, ego: Motion, duration: float, *, construction: bool,
             trailers: bool) -> list[Actor]:
    """All actors of a scene; ``ego`` drives lane 0 of ``layout.roads[layout.ego_road]``."""
    ids = _Ids()
    actors: list[Actor] = []
    ego_road = layout.roads[layout.ego_road]
    ego_mid_s = ego_road.center.project(ego.pose(duration / 2)[0])
    reach = 0.5 * ego.speed * duration + 110.0
    junction = layout.junction

    def near_junction(path: Path, s: float, margin: float) -> bool:
        if junction is None:
            return False
        return bool(np.linalg.norm(path.pose(s)[0] - junction) < layout.junction_radius + margin)

    for ri, road in enumerate(layout.roads):
        centre_s = ego_mid_s if ri == layout.ego_road else road.center.length / 2
        lo, hi = _window(road, centre_s, reach)
        cross_road = junction is not None and ri != layout.ego_road
        # Moving traffic, lane by lane. On the crossing road of a junction, traffic waits in a queue.
        for direction in (1, -1):
            for lane in range(road.lanes):
                path = road.lane_path(lane, direction)
                if ri == layout.ego_road and direction == 1 and lane == 0:
                    speed = ego.speed  # the ego's lane flows at the ego's speed: no collisions
                else:
                    speed = float(rng.uniform(4.0, 13.0))
                s_lo, s_hi = (lo, hi) if direction == 1 else (road.center.length - hi, road.center.length - lo)
                s = s_lo + rng.uniform(0, 15)
                ego_s = path.project(ego.pose(0.0)[0])
                while s < s_hi:
                    cat = rng.choice(["vehicle.car"] * 12 + ["vehicle.truck"] * 2 + ["vehicle.bus.rigid", "vehicle.motorcycle"])
                    if trailers and rng.random() < 0.2:
                        cat = "truck+trailer"
                    size = sample_size(rng, "vehicle.truck" if cat == "truck+trailer" else cat)
                    if ri == layout.ego_road and direction == 1 and lane == 0 and abs(s - ego_s) < 12 + size[1]:
                        s += 15.0
                        continue
                    if cross_road:
                        # Queue before the junction on the crossing road, stopped.
                        if near_junction(path, s, 4.0) or rng.random() < 0.5:
                            s += size[1] + rng.uniform(4, 20)
                            continue
                        motion = Motion(xy=path.pose(s)[0], yaw=float(path.pose(s)[1]))
                        actors.append(make_actor(rng, ids(), "vehicle.car" if cat == "truck+trailer" else str(cat), motion,
                                                 rider=True, stopped_attribute="vehicle.stopped"))
                        s += size[1] + rng.uniform(2, 6) + 6.0
                        continue
                    if cat == "truck+trailer":
                        truck = make_actor(rng, ids(), "vehicle.truck", Motion(path, s, speed), size=size)
                        tsize = sample_size(rng, "vehicle.trailer")
                        back = s - (size[1] / 2 + tsize[1] / 2 + 0.6)
                        trailer_actor = make_actor(rng, ids(), "vehicle.trailer", Motion(path, back, speed), size=tsize)
                        actors += [truck, trailer_actor]
                        s += size[1] + tsize[1] + rng.uniform(10, 40)
                        continue
                    actors.append(make_actor(rng, ids(), str(cat), Motion(path, s, speed), rider=True))
                    s += size[1] + rng.uniform(8, 45)
        # Parked vehicles and cyclists along the parking strips.
        for direction in (1, -1):
            path = road.strip_path(direction, inset=road.parking_width / 2)
            s_lo, s_hi = (lo, hi) if direction == 1 else (road.center.length - hi, road.center.length - lo)
            s = s_lo + rng.uniform(0, 10)
            work_zone = construction and ri == 0 and direction == -1
            wz_s = (s_lo + s_hi) / 2 + rng.uniform(-20, 20)
            while s < s_hi:
                if near_junction(path, s, 8.0):
                    s += 5.0
                    continue
                if work_zone and abs(s - wz_s) < 30:
                    s = wz_s + 30
                    continue
                r = rng.random()
                if r < 0.45:
                    s += rng.uniform(4, 25)
                    continue
                cat = rng.choice(["vehicle.car"] * 10 + ["vehicle.truck", "vehicle.motorcycle", "vehicle.bicycle"])
                if trailers and rng.random() < 0.15:
                    cat = "vehicle.trailer"
                size = sample_size(rng, str(cat))
                xy, h = path.pose(s + size[1] / 2)
                motion = Motion(xy=xy, yaw=float(h) + rng.normal(0, 0.03))
                actors.append(make_actor(rng, ids(), str(cat), motion, rider=False, size=size))
                s += size[1] + rng.uniform(1.0, 6.0)
            # Cyclists riding along the strip.
            for _ in range(int(rng.poisson(1.2))):
                cat = "vehicle.bicycle" if rng.random() < 0.7 else "vehicle.motorcycle"
                bike_path = road.strip_path(direction, inset=0.8)
                actors.append(make_actor(rng, ids(), cat, Motion(bike_path, rng.uniform(*sorted((s_lo, s_hi))),
                                                               float(rng.uniform(3, 7))), rider=True))
            if work_zone:
                actors += _work_zone(rng, ids, road, direction, wz_s)
        # Pedestrians on both sidewalks.
        for side in (1, -1):
            for _ in range(int(rng.poisson(0.08 * (hi - lo)))):
                path = road.sidewalk_path(side, rng.uniform(0.2, 0.8))
                if rng.random() < 0.5:
                    path = path.reversed()
                cat = rng.choice(["human.pedestrian.adult"] * 8 + ["human.pedestrian.child", "human.pedestrian.police_officer"])
                r = rng.random()
                s0 = rng.uniform(0, path.length)
                if r < 0.65:
                    actors.append(make_actor(rng, ids(), str(cat), Motion(path, s0, float(rng.uniform(0.8, 1.7))),
                                             pose_name="walk"))
                else:
                    xy, h = path.pose(s0)
                    pose = "sit" if r > 0.93 else "stand"
                    actors.append(make_actor(rng, ids(), str(cat), Motion(xy=xy, yaw=float(h + rng.uniform(-1.5, 1.5))),
                                             pose_name=pose))
            # Parked bicycles on the sidewalk.
            for _ in range(int(rng.poisson(0.6))):
                path = road.sidewalk_path(side, 0.9)
                xy, h = path.pose(rng.uniform(lo, hi))
                actors.append(make_actor(rng, ids(), "vehicle.bicycle", Motion(xy=xy, yaw=float(h + np.pi / 2)),
                                         rider=False))
        # Scenery beyond the sidewalks.
    actors += _crossing_pedestrians(rng, ids, layout, duration)
    actors += _scenery(rng, ids, layout, ego, duration)
    return actors


def _work_zone(rng: np.random.Generator, ids: _Ids, road: Road, direction: int, s_mid: float) -> list[Actor]:
    """A closed parking strip: a line of cones, barriers, a construction vehicle and workers."""
    out: list[Actor] = []
    edge = road.strip_path(direction, inset=road.parking_width + 0.2)
    for s in np.arange(s_mid - 28, s_mid + 28, rng.uniform(3.0, 5.0)):
        xy, h = edge.pose(s)
        out.append(make_actor(rng, ids(), "movable_object.trafficcone", Motion(xy=xy, yaw=float(h))))
    inner = road.strip_path(direction, inset=road.parking_width / 2)
    for s in (s_mid - 20, s_mid + 20):
        xy, h = inner.pose(s)
        out.append(make_actor(rng, ids(), "movable_object.barrier", Motion(xy=xy, yaw=float(h))))
    xy, h = inner.pose(s_mid + rng.uniform(-8, 8))
    out.append(make_actor(rng, ids(), "vehicle.construction", Motion(xy=xy, yaw=float(h) + rng.uniform(-0.3, 0.3))))
    for _ in range(int(rng.integers(1, 4))):
        xy, h = inner.pose(s_mid + rng.uniform(-15, 15))
        out.append(make_actor(rng, ids(), "human.pedestrian.construction_worker",
                              Motion(xy=xy, yaw=float(rng.uniform(-np.pi, np.pi))), pose_name="stand"))
    return out


def _crossing_pedestrians(rng: np.random.Generator, ids: _Ids, layout: Layout, duration: float) -> list[Actor]:
    """People crossing the crossing road of a junction (its traffic waits) and barrier lines."""
    out: list[Actor] = []
    if layout.junction is None:
        return out
    cross_road = layout.roads[1 - layout.ego_road]
    for centre, direction in layout.crossings:
        if abs(np.dot(direction, _dir(cross_road))) < 0.7:
            continue  # only crossings on the crossing road's arms, whose traffic waits
        across = np.array([-direction[1], direction[0]])
        span = cross_road.half_width + 2.0
        for _ in range(int(rng.poisson(1.5))):
            sign = rng.choice([-1.0, 1.0])
            offs = direction * rng.uniform(-1.2, 1.2)
            path = Path(np.stack([centre + offs - sign * across * span, centre + offs + sign * across * span]))
            speed = float(rng.uniform(0.9, 1.6))
            out.append(make_actor(rng, ids(), "human.pedestrian.adult",
                                  Motion(path, 0.0, speed, t_start=float(rng.uniform(0, duration / 2))), pose_name="walk"))
    return out


def _dir(road: Road) -> np.ndarray:
    _, h = road.center.pose(road.center.length / 2)
    return np.array([np.cos(float(h)), np.sin(float(h))])


def _scenery(rng: np.random.Generator, ids: _Ids, layout: Layout, ego: Motion, duration: float) -> list[Actor]:
    """Buildings, trees and poles off the paved area, along every road near the ego's course."""
    out: list[Actor] = []
    paved = paved_mask(layout)
    size_px = paved.shape[0]
    ego_xy = [ego.pose(t)[0] for t in np.linspace(0, duration, 5)]

    def free(xy: np.ndarray, radius: float) -> bool:
        c, r = int(xy[0] * MAP_PPM), int(size_px - xy[1] * MAP_PPM)
        rr = int(radius * MAP_PPM)
        if c - rr < 0 or r - rr < 0 or c + rr >= size_px or r + rr >= size_px:
            return False
        return not paved[r - rr:r + rr + 1, c - rr:c + rr + 1].any()

    taken: list[tuple[np.ndarray, float]] = []
    for road in layout.roads:
        for side in (1, -1):
            for s in np.arange(0, road.center.length, rng.uniform(14, 24)):
                xy, h = road.center.pose(s)
                if min(np.linalg.norm(xy - e) for e in ego_xy) > 140:
                    continue
                normal = side * np.array([-np.sin(h), np.cos(h)])
                r = rng.random()
                if r < 0.55:
                    actor = make_scenery(rng, ids(), "building", xy, float(h))
                    depth_off = road.half_width + road.sidewalk_width + actor.size[0] / 2 + rng.uniform(1, 6)
                    radius = np.hypot(actor.size[0], actor.size[1]) / 2
                elif r < 0.85:
                    actor = make_scenery(rng, ids(), "tree", xy, 0.0)
                    depth_off = road.half_width + road.sidewalk_width + rng.uniform(1.5, 4)
                    radius = actor.size[0] / 2
                else:
                    actor = make_scenery(rng, ids(), "pole", xy, float(np.arctan2(-normal[1], -normal[0])))
                    depth_off = road.half_width + road.sidewalk_width + 0.8
                    radius = 0.3
                pos = xy + normal * depth_off
                check = actor.size[0] / 2 if actor.category is None and radius > 3 else 0.3
                if not free(pos, min(check, 4.0)):
                    continue
                if any(np.linalg.norm(pos - p) < radius + pr for p, pr in taken):
                    continue
                actor.motion = Motion(xy=pos, yaw=actor.motion.yaw)
                taken.append((pos, radius))
                out.append(actor)
    return out
