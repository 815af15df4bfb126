"""Small custom MLServer runtimes for pipeline tests and the pipeline bench: written into a model folder
beside its model-settings.json and loaded through MLServer's repository API."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import httpx

from berth.adapters.mlserver_proc import MLServerProcess

RUNTIMES = textwrap.dedent('''
    import numpy as np
    from mlserver import MLModel
    from mlserver.errors import MLServerError
    from mlserver.codecs import NumpyCodec
    from mlserver.types import InferenceRequest, InferenceResponse


    class Adder(MLModel):
        """Sums its input tensors elementwise and adds the model's parameter `extra.add`."""

        async def load(self) -> bool:
            self.add = float((self.settings.parameters.extra or {}).get("add", 0))
            return True

        async def predict(self, payload: InferenceRequest) -> InferenceResponse:
            arrays = [NumpyCodec.decode_input(i).astype("float64") for i in payload.inputs]
            total = sum(arrays) + self.add
            return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("SUM", total)])


    class Chooser(MLModel):
        """Emits its input as LEFT when its first value is negative, else as RIGHT (one tensor only)."""

        async def predict(self, payload: InferenceRequest) -> InferenceResponse:
            x = NumpyCodec.decode_input(payload.inputs[0]).astype("float64")
            side = "LEFT" if float(x.flat[0]) < 0 else "RIGHT"
            return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output(side, x)])


    class Failing(MLModel):
        async def predict(self, payload: InferenceRequest) -> InferenceResponse:
            raise MLServerError("this model always fails", status_code=500)


    class Sleeper(MLModel):
        """Answers its first input back after sleeping `extra.seconds` (a slow model)."""

        async def load(self) -> bool:
            self.seconds = float((self.settings.parameters.extra or {}).get("seconds", 1))
            return True

        async def predict(self, payload: InferenceRequest) -> InferenceResponse:
            import asyncio
            await asyncio.sleep(self.seconds)
            x = NumpyCodec.decode_input(payload.inputs[0])
            return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("SLEPT", x)])


    class Big(MLModel):
        """Answers any request with one BYTES element of `extra.size` bytes (a large answer from a small call)."""

        async def load(self) -> bool:
            self.size = int((self.settings.parameters.extra or {}).get("size", 1 << 20))
            return True

        async def predict(self, payload: InferenceRequest) -> InferenceResponse:
            from mlserver.types import ResponseOutput
            out = ResponseOutput(name="BIG", shape=[1], datatype="BYTES", data=[b"b" * self.size])
            return InferenceResponse(model_name=self.name, outputs=[out])
''')


def load_custom(proc: MLServerProcess, name: str, cls: str, **extra: Any) -> None:
    """Load model ``name`` served by runtime class ``cls`` of :data:`RUNTIMES` (``extra``: its parameters)."""
    folder = proc.repository / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "berth_test_runtimes.py").write_text(RUNTIMES)
    (folder / "model-settings.json").write_text(json.dumps({
        "name": name, "implementation": f"berth_test_runtimes.{cls}", "parameters": {"extra": extra}}))
    r = httpx.post(f"http://{proc.http_address}/v2/repository/models/{name}/load", timeout=60)
    assert r.status_code == 200, r.text
