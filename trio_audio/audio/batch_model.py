"""Derive ``silero_vad_v6_batch.onnx`` from ``silero_vad_v6.onnx``: the same network, weights
and arithmetic, with a batch dimension so several independent streams share one call.

The shipped model takes ``input [T, 576]`` (T windows of one stream) and ``h``/``c``
``[1, 1, 128]``; inside, the encoder turns each window into ``[T, 128, 1]`` and a Transpose
makes that ``[T, 1, 128]`` for the LSTM (time-major, batch 1). The derived model replaces
that Transpose with a Reshape to ``[T, B, 128]``, where B is taken from ``h``'s shape, and
declares ``h``/``c`` as ``[1, B, 128]``. Its input is then ``[T * B, 576]`` in time-major
order (row ``t * B + b`` is window t of stream b), and ``speech_probs`` comes out
stream-major (``b * T + t``). With B = 1 it is the shipped model exactly.

Run once, by hand, when the shipped model changes (needs ``pip install onnx``, which the
service itself does not use)::

    python -m trio_audio.audio.batch_model

then put the printed sha256 in ``vad.BATCH_MODEL_SHA256``. The file it writes is what ships.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).with_name("silero_vad_v6.onnx")
TARGET = Path(__file__).with_name("silero_vad_v6_batch.onnx")


def derive(source: Path = SOURCE, target: Path = TARGET) -> str:
    """Write the batched model to *target*; its sha256."""
    import onnx
    from onnx import helper

    model: Any = onnx.load(str(source))
    graph = model.graph
    index, transpose = next(
        (i, n)
        for i, n in enumerate(graph.node)
        if n.op_type == "Transpose" and n.name == "/Transpose"
    )
    perm = next(helper.get_attribute_value(a) for a in transpose.attribute if a.name == "perm")
    if list(perm) != [0, 2, 1]:
        msg = f"unexpected model: /Transpose has perm {list(perm)}"
        raise ValueError(msg)
    made = [
        helper.make_node("Shape", ["h"], ["/batch/h_shape"], name="/batch/Shape"),
        helper.make_node("Constant", [], ["/batch/one"], name="/batch/One",
                         value=helper.make_tensor("one", onnx.TensorProto.INT64, [1], [1])),
        helper.make_node("Gather", ["/batch/h_shape", "/batch/one"], ["/batch/b"],
                         name="/batch/Gather", axis=0),
        helper.make_node("Constant", [], ["/batch/minus_one"], name="/batch/MinusOne",
                         value=helper.make_tensor("m1", onnx.TensorProto.INT64, [1], [-1])),
        helper.make_node("Constant", [], ["/batch/hidden"], name="/batch/Hidden",
                         value=helper.make_tensor("hid", onnx.TensorProto.INT64, [1], [128])),
        helper.make_node("Concat", ["/batch/minus_one", "/batch/b", "/batch/hidden"],
                         ["/batch/shape"], name="/batch/Concat", axis=0),
        helper.make_node("Reshape", [transpose.input[0], "/batch/shape"], [transpose.output[0]],
                         name="/batch/Reshape"),
    ]  # fmt: skip
    del graph.node[index]
    for offset, node in enumerate(made):
        graph.node.insert(index + offset, node)
    for value in [*graph.input, *graph.output]:
        if value.name in ("h", "c", "hn", "cn"):
            dims = value.type.tensor_type.shape.dim
            dims[1].ClearField("dim_value")
            dims[1].dim_param = "batch"
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    target.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


if __name__ == "__main__":
    print(derive())
    sys.exit(0)
