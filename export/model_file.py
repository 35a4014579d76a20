"""Writing an exported model file: the bevstack metadata embedded, onnx.checker run, an atomic save
(onnx only, no torch)."""

from __future__ import annotations

from pathlib import Path

import onnx

from export.runtime.metadata import ModelMetadata

__all__ = ["sort_nodes", "write_metadata"]


def write_metadata(proto: onnx.ModelProto, metadata: ModelMetadata, path: str | Path) -> Path:
    """Replace the bevstack metadata of ``proto``, check the model with onnx.checker and save it to ``path``
    (written next to it and renamed, so a failed write leaves no half file)."""
    path = Path(path)
    props = metadata.to_props()
    kept = [p for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "bevstack"
    sort_nodes(proto.graph)
    onnx.checker.check_model(proto, full_check=False)
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save(proto, str(tmp))
    tmp.replace(path)
    return path


def sort_nodes(graph: onnx.GraphProto) -> None:
    """Order the nodes of ``graph`` topologically, in place (stable: a node keeps its place unless an input
    comes later). Graph rewriters (the float16 converter) append the casts they insert at the end."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            missing = sorted({n for node in rest for n in node.input if n not in available})[:5]
            raise ValueError(f"graph has a cycle or undefined inputs: {missing}")
        pending = rest
    copies = [onnx.NodeProto() for _ in ordered]
    for c, node in zip(copies, ordered):
        c.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)
