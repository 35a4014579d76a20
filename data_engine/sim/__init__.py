"""The synthetic world: a procedural driving world rendered into a calibrated 6-camera rig and a lidar."""
