"""The edge runtime: exported models on onnxruntime, from raw frames to boxes, and a monitor of blocked
or dirty lenses. numpy, cv2 and onnxruntime only: this package never imports torch (a test runs it with
torch unimportable)."""

from .edge_model import (
           Camera,
           EdgeModel,
           EdgeResult,
           PreparedFrame,
           RuntimeInputError,
           StreamState,
           default_providers,
)
from .lens_monitor import (
           FEATURE_NAMES,
           CameraHealth,
           LensMemory,
           LensMonitorConfig,
           camera_health,
           lens_features,
           lens_scores,
)
from .metadata import (
           FORMAT_VERSION,
           INPUT_NAMES,
           OUTPUT_NAMES,
           PRECISIONS,
           MetadataError,
           ModelMetadata,
)

__all__ = ["FEATURE_NAMES", "FORMAT_VERSION", "INPUT_NAMES", "OUTPUT_NAMES", "PRECISIONS", "Camera", "CameraHealth",
           "EdgeModel", "EdgeResult", "LensMemory", "LensMonitorConfig", "MetadataError", "ModelMetadata", "PreparedFrame",
           "RuntimeInputError", "StreamState", "camera_health", "default_providers", "lens_features", "lens_scores"]
