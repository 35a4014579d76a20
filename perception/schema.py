"""Names of the nuScenes v1.0 format that the reader, the writer and the metrics share.

Written once here: camera names, the 13 table names, the categories and attributes with their
nuScenes names, the mapping from categories to the 10 detection classes (the devkit's default
mapping), and the visibility levels.
"""

from __future__ import annotations

CAMERA_NAMES: tuple[str, ...] = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK_RIGHT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_FRONT_LEFT",
)
LIDAR_NAME = "LIDAR_TOP"

TABLES: tuple[str, ...] = (
    "attribute",
    "calibrated_sensor",
    "category",
    "ego_pose",
    "instance",
    "log",
    "map",
    "sample",
    "sample_annotation",
    "sample_data",
    "scene",
    "sensor",
    "visibility",
)

DETECTION_CLASSES: tuple[str, ...] = (
    "car",
    "truck",
    "construction_vehicle",
    "bus",
    "trailer",
    "barrier",
    "motorcycle",
    "bicycle",
    "pedestrian",
    "traffic_cone",
)

# nuScenes category name -> detection class (the devkit's default mapping).
CATEGORY_TO_DETECTION: dict[str, str] = {
    "movable_object.barrier": "barrier",
    "vehicle.bicycle": "bicycle",
    "vehicle.bus.bendy": "bus",
    "vehicle.bus.rigid": "bus",
    "vehicle.car": "car",
    "vehicle.construction": "construction_vehicle",
    "vehicle.motorcycle": "motorcycle",
    "human.pedestrian.adult": "pedestrian",
    "human.pedestrian.child": "pedestrian",
    "human.pedestrian.construction_worker": "pedestrian",
    "human.pedestrian.police_officer": "pedestrian",
    "movable_object.trafficcone": "traffic_cone",
    "vehicle.trailer": "trailer",
    "vehicle.truck": "truck",
}

# nuScenes category descriptions, written into category.json.
CATEGORY_DESCRIPTIONS: dict[str, str] = {
    "movable_object.barrier": "Temporary road barrier placed in the scene in order to redirect traffic.",
    "vehicle.bicycle": "Human or electric powered 2-wheeled vehicle designed to travel at lower speeds.",
    "vehicle.bus.bendy": "Bendy bus subcategory.",
    "vehicle.bus.rigid": "Rigid bus subcategory.",
    "vehicle.car": "Vehicle designed primarily for personal use.",
    "vehicle.construction": "Vehicles primarily designed for construction.",
    "vehicle.motorcycle": "Gasoline or electric powered 2-wheeled vehicle designed to move rapidly.",
    "human.pedestrian.adult": "Adult subcategory.",
    "human.pedestrian.child": "Child subcategory.",
    "human.pedestrian.construction_worker": "Construction worker.",
    "human.pedestrian.police_officer": "Police officer.",
    "movable_object.trafficcone": "All types of traffic cones.",
    "vehicle.trailer": "Any vehicle trailer, both for trucks, cars and bikes.",
    "vehicle.truck": "Vehicles primarily designed to haul cargo.",
}

ATTRIBUTES: dict[str, str] = {
    "vehicle.moving": "Vehicle is moving.",
    "vehicle.stopped": "Vehicle, with a driver/rider in/on it, is currently stationary but has an intent to move.",
    "vehicle.parked": "Vehicle is stationary (usually for longer duration) with no immediate intent to move.",
    "cycle.with_rider": "There is a rider on the bicycle or motorcycle.",
    "cycle.without_rider": "There is NO rider on the bicycle or motorcycle.",
    "pedestrian.sitting_lying_down": "The human is sitting or lying down.",
    "pedestrian.standing": "The human is standing.",
    "pedestrian.moving": "The human is moving.",
}

# nuScenes visibility levels: token -> (level name, description, visible fraction range).
VISIBILITY: dict[str, tuple[str, str, tuple[float, float]]] = {
    "1": ("v0-40", "visibility of whole object is between 0 and 40%", (0.0, 0.4)),
    "2": ("v40-60", "visibility of whole object is between 40 and 60%", (0.4, 0.6)),
    "3": ("v60-80", "visibility of whole object is between 60 and 80%", (0.6, 0.8)),
    "4": ("v80-100", "visibility of whole object is between 80 and 100%", (0.8, 1.0)),
}

# Scene conditions we record in scene.description (comma separated, as nuScenes writes them).
CONDITIONS: tuple[str, ...] = ("day", "dusk", "night", "rain", "fog", "glare", "dirty_lens", "blocked_lens")
# The conditions an evaluation reports apart, and the rare ones among them that mining goes after.
EVAL_CONDITIONS: tuple[str, ...] = ("day", "dusk", "night", "rain", "fog")
RARE_CONDITIONS: tuple[str, ...] = ("night", "fog")
# The long tail of the detection classes: reported apart by evaluation, sought by mining.
RARE_CLASSES: tuple[str, ...] = ("construction_vehicle", "trailer")


def visibility_token(visible_fraction: float) -> str:
    """The nuScenes visibility token ('1'..'4') of a visible fraction in [0, 1]."""
    if visible_fraction < 0.4:
        return "1"
    if visible_fraction < 0.6:
        return "2"
    if visible_fraction < 0.8:
        return "3"
    return "4"


def parse_conditions(description: str) -> tuple[str, ...]:
    """Conditions named in a scene description such as ``"night, rain, blocked_lens CAM_FRONT"``: each
    comma-separated phrase names a condition in full ("dirty lens" or "dirty_lens") or by its first word
    (the camera after a lens condition); unknown phrases are ignored."""
    out = []
    for phrase in description.replace(";", ",").split(","):
        phrase = phrase.strip().lower()
        for word in (phrase.replace(" ", "_"), phrase.split(" ")[0] if phrase else ""):
            if word in CONDITIONS:
                out.append(word)
                break
    return tuple(out)
