"""The edge runtime: exported models on onnxruntime, from raw frames to boxes. numpy, cv2 and
onnxruntime only: this package never imports torch (a test runs it with torch unimportable)."""

from .edge_model import (
           Camera,
           EdgeModel,
           EdgeResult,
           PreparedFrame,
           RuntimeInputError,
           StreamState,
           default_providers,
)
from .metadata import (
           FORMAT_VERSION,
           INPUT_NAMES,
           OUTPUT_NAMES,
           PRECISIONS,
           MetadataError,
           ModelMetadata,
)

__all__ = ["FORMAT_VERSION", "INPUT_NAMES", "OUTPUT_NAMES", "PRECISIONS", "Camera", "EdgeModel", "EdgeResult",
           "MetadataError", "ModelMetadata", "PreparedFrame", "RuntimeInputError", "StreamState",
           "default_providers"]
