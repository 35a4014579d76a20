"""Dataset I/O in the nuScenes v1.0 format."""
