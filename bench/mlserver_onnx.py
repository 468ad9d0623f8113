"""The serving benchmark's peer: the same ONNX model in MLServer, through a minimal custom runtime.

MLServer loads `bench.mlserver_onnx.OnnxModel` (model-settings.json `implementation`) in its own
process; it runs onnxruntime with the same session options as `samd serve`.
"""

from __future__ import annotations

from typing import Any

import onnxruntime
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):  # type: ignore[misc]
    async def load(self) -> bool:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        uri = await get_model_uri(self.settings)  # relative to model-settings.json
        self._session: Any = onnxruntime.InferenceSession(
            uri, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._outputs = [node.name for node in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        inputs = {item.name: NumpyCodec.decode_input(item) for item in payload.inputs}
        results = self._session.run(self._outputs, inputs)
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                NumpyCodec.encode_output(name, value)
                for name, value in zip(self._outputs, results, strict=True)
            ],
        )
