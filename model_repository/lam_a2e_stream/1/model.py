"""LAM-A2E streaming: sequence-batched, per-correlation-id context, sessions batched into one network call.

The sequence batcher (``oldest`` strategy) hands chunks of several live sessions to one ``execute``;
:class:`~emoserve.lam_a2e.sessions.StreamSessionStore` keeps each session's context (real previous audio as
left context, the last 64 processed frames, the previous RMS) and runs every session's window in one
batched call to the ``lam_a2e`` network model. State is created on START, freed on END, and evicted
after ``max_sequence_idle_microseconds`` without a chunk.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from emoserve.lam_a2e.postprocess import PostprocessOptions
from emoserve.lam_a2e.sessions import ChunkRequest, StreamSessionStore, UnknownSequenceError
from emoserve.model_catalog import (
    A2E_NETWORK_MODEL,
    AUDIO,
    BLENDSHAPES,
    BROW_MOVEMENT,
    CHUNK_INDEX,
    FIRST_FRAME_INDEX,
    ID_IDX,
    MOVEMENT_SMOOTH,
    NETWORK_AUDIO,
    NETWORK_BLENDSHAPES,
    NETWORK_IDENTITY,
    SEED,
)
from emoserve.triton.backend import bls_network, error_response, load_model_config, optional_input, scalar_input


def _control(request, name):
    value = optional_input(pb_utils, request, name)
    return 0 if value is None else int(value.reshape(-1)[0])


class TritonPythonModel:
    def initialize(self, args):
        config = load_model_config(args)
        batching = config.get("sequence_batching")
        if batching is None or "oldest" not in batching:
            raise pb_utils.TritonModelException("lam_a2e_stream needs sequence_batching with the oldest strategy")
        controls = {c["kind"] for entry in batching.get("control_input", []) for c in entry["control"]}
        missing = {"CONTROL_SEQUENCE_START", "CONTROL_SEQUENCE_END", "CONTROL_SEQUENCE_CORRID"} - controls
        if missing:
            raise pb_utils.TritonModelException(f"lam_a2e_stream config lacks control inputs {sorted(missing)}")
        idle_us = int(batching.get("max_sequence_idle_microseconds", 300_000_000))
        self.sessions = StreamSessionStore(idle_timeout_s=idle_us / 1e6)
        self.run_network = bls_network(pb_utils, A2E_NETWORK_MODEL, (NETWORK_AUDIO, NETWORK_IDENTITY), NETWORK_BLENDSHAPES)
        self.logger = pb_utils.Logger

    def execute(self, requests):
        chunk_requests, slots = [], []
        for request in requests:
            correlation_id = _control(request, "CORRID")
            if correlation_id == 0:  # an empty batch slot, not a request of any sequence
                slots.append(None)
                continue
            options = PostprocessOptions(
                movement_smooth=scalar_input(pb_utils, request, MOVEMENT_SMOOTH, bool, False),
                brow_movement=scalar_input(pb_utils, request, BROW_MOVEMENT, bool, False),
            )
            seed = scalar_input(pb_utils, request, SEED, int, None)
            chunk_requests.append(
                ChunkRequest(
                    correlation_id=correlation_id,
                    audio=optional_input(pb_utils, request, AUDIO),
                    start=bool(_control(request, "START")),
                    end=bool(_control(request, "END")),
                    id_idx=scalar_input(pb_utils, request, ID_IDX, int, 0),
                    options=options,
                    seed=seed,
                )
            )
            slots.append(len(chunk_requests) - 1)

        try:
            results = self.sessions.process(chunk_requests, self.run_network)
        except Exception as exc:  # the network itself failed: every request of this batch learns why
            self.logger.log_error(f"lam_a2e_stream batch failed: {exc}")
            return [error_response(pb_utils, f"streaming inference failed: {exc}", "INTERNAL") for _ in requests]

        responses = []
        for slot in slots:
            if slot is None:
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor(BLENDSHAPES, np.zeros((1, 0, 52), np.float32)),
                    pb_utils.Tensor(FIRST_FRAME_INDEX, np.zeros((1, 1), np.int64)),
                    pb_utils.Tensor(CHUNK_INDEX, np.zeros((1, 1), np.int64)),
                ]))
                continue
            result = results[slot]
            if isinstance(result, UnknownSequenceError):
                responses.append(error_response(pb_utils, str(result), "NOT_FOUND"))
            elif isinstance(result, Exception):
                responses.append(error_response(pb_utils, str(result)))
            else:
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor(BLENDSHAPES, result.frames[None]),
                    pb_utils.Tensor(FIRST_FRAME_INDEX, np.array([[result.first_frame_index]], np.int64)),
                    pb_utils.Tensor(CHUNK_INDEX, np.array([[result.chunk_index]], np.int64)),
                ]))
        return responses

    def finalize(self):
        self.logger.log_info(f"lam_a2e_stream: dropping {len(self.sessions)} live sessions at unload")
