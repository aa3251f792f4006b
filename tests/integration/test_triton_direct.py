"""Triton used directly (HTTP and gRPC), compared with the in-process reference built from the same modules."""

from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from emoserve.audio import decode_audio
from emoserve.constants import NUM_BLENDSHAPES, SAMPLE_RATE, num_output_frames
from emoserve.lam_a2e.onnx_runner import A2EOnnxRunner
from emoserve.lam_a2e.postprocess import PostprocessOptions, postprocess_offline
from emoserve.lam_a2e.sessions import ChunkRequest, StreamSessionStore
from emoserve.model_catalog import (
    A2E_NETWORK_MODEL,
    A2E_OFFLINE_MODEL,
    A2E_STREAM_MODEL,
    AUDIO,
    AUDIO_BYTES,
    BLENDSHAPES,
    CHUNK_INDEX,
    FIRST_FRAME_INDEX,
    ID_IDX,
    MOVEMENT_SMOOTH,
    NETWORK_AUDIO,
    NETWORK_BLENDSHAPES,
    NETWORK_IDENTITY,
    SEED,
)
from tests.conftest import speech_like


def _grpc_input(name, array, datatype):
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _http_input(name, array, datatype):
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


@pytest.fixture(scope="module")
def reference_network(tiny_repository):
    return A2EOnnxRunner(tiny_repository / A2E_NETWORK_MODEL / "1" / "model.onnx")


@pytest.fixture()
def grpc(triton_server):
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    yield client
    client.close()


@pytest.fixture()
def http(triton_server):
    client = httpclient.InferenceServerClient(triton_server.http_url, concurrency=8)
    yield client
    client.close()


def test_network_model_matches_onnxruntime(http, reference_network):
    audio = np.stack([speech_like(1.3, seed=s) for s in range(3)])
    ids = np.array([[0], [5], [11]], np.int64)
    result = http.infer(A2E_NETWORK_MODEL, [_http_input(NETWORK_AUDIO, audio, "FP32"), _http_input(NETWORK_IDENTITY, ids, "INT64")])
    served = result.as_numpy(NETWORK_BLENDSHAPES)
    assert served.shape == (3, num_output_frames(audio.shape[1]), NUM_BLENDSHAPES)
    np.testing.assert_allclose(served, reference_network(audio, ids.reshape(-1)), atol=1e-6)


def test_network_model_rejects_unknown_identity_and_keeps_serving(http):
    audio = speech_like(1.0)[None]
    with pytest.raises(InferenceServerException, match="id_idx must be in 0..11"):
        http.infer(
            A2E_NETWORK_MODEL,
            [_http_input(NETWORK_AUDIO, audio, "FP32"), _http_input(NETWORK_IDENTITY, np.array([[12]], np.int64), "INT64")],
        )
    ok = http.infer(
        A2E_NETWORK_MODEL, [_http_input(NETWORK_AUDIO, audio, "FP32"), _http_input(NETWORK_IDENTITY, np.array([[1]], np.int64), "INT64")]
    )
    assert ok.as_numpy(NETWORK_BLENDSHAPES).shape == (1, 30, NUM_BLENDSHAPES)


def test_offline_pcm_equals_in_process_reference(http, reference_network):
    audio = speech_like(3.0, seed=4)
    inputs = [
        _http_input(AUDIO, audio, "FP32"),
        _http_input(ID_IDX, np.array([2], np.int32), "INT32"),
        _http_input(MOVEMENT_SMOOTH, np.array([True]), "BOOL"),
        _http_input(SEED, np.array([7], np.uint64), "UINT64"),
    ]
    served = http.infer(A2E_OFFLINE_MODEL, inputs).as_numpy(BLENDSHAPES)
    expression = reference_network(audio[None], np.array([2]))[0]
    expected = postprocess_offline(expression, audio, PostprocessOptions(movement_smooth=True), np.random.default_rng(7))
    assert served.shape == (90, NUM_BLENDSHAPES)
    np.testing.assert_allclose(served, expected, atol=1e-5)


def test_offline_encoded_bytes_equal_pcm(grpc, example_wav):
    data = example_wav.read_bytes()
    from_bytes = grpc.infer(A2E_OFFLINE_MODEL, [_grpc_input(AUDIO_BYTES, np.array([data], dtype=np.object_), "BYTES")]).as_numpy(
        BLENDSHAPES
    )
    pcm = decode_audio(data)
    from_pcm = grpc.infer(A2E_OFFLINE_MODEL, [_grpc_input(AUDIO, pcm, "FP32")]).as_numpy(BLENDSHAPES)
    assert from_bytes.shape == (num_output_frames(pcm.size), NUM_BLENDSHAPES)
    np.testing.assert_array_equal(from_bytes, from_pcm)


@pytest.mark.parametrize(
    "inputs, message",
    [
        (lambda: [_grpc_input(AUDIO_BYTES, np.array([b"definitely not audio"], dtype=np.object_), "BYTES")], "invalid audio"),
        (lambda: [_grpc_input(AUDIO, np.zeros(0, np.float32), "FP32")], "no samples"),
        (lambda: [], "exactly one of"),
        (lambda: [_grpc_input(AUDIO, speech_like(1.0), "FP32"), _grpc_input(ID_IDX, np.array([-1], np.int32), "INT32")], "id_idx"),
    ],
    ids=["garbage-bytes", "empty-audio", "no-audio", "negative-identity"],
)
def test_offline_bad_requests_get_their_own_error(grpc, inputs, message):
    with pytest.raises(InferenceServerException, match=message):
        grpc.infer(A2E_OFFLINE_MODEL, inputs())
    assert grpc.infer(A2E_OFFLINE_MODEL, [_grpc_input(AUDIO, speech_like(0.5), "FP32")]).as_numpy(BLENDSHAPES).shape == (
        15,
        NUM_BLENDSHAPES,
    )


def _stream_inputs(chunk: np.ndarray, id_idx: int = 0, seed: int | None = None):
    inputs = [_grpc_input(AUDIO, chunk[None].astype(np.float32), "FP32"), _grpc_input(ID_IDX, np.array([[id_idx]], np.int32), "INT32")]
    if seed is not None:
        inputs.append(_grpc_input(SEED, np.array([[seed]], np.uint64), "UINT64"))
    return inputs


def _reference_stream(reference_network, chunks, correlation_id, id_idx, seed):
    store = StreamSessionStore()
    frames = []
    for index, chunk in enumerate(chunks):
        request = ChunkRequest(correlation_id, chunk, start=index == 0, end=index == len(chunks) - 1, id_idx=id_idx, seed=seed)
        (result,) = store.process([request], reference_network)
        frames.append(result.frames)
    assert len(store) == 0
    return np.concatenate(frames)


def test_grpc_sequence_equals_in_process_stream(grpc, reference_network):
    audio = speech_like(5.0, seed=9)
    chunks = [audio[i : i + SAMPLE_RATE] for i in range(0, audio.size, SAMPLE_RATE)]
    served, first_frames, chunk_indices = [], [], []
    for index, chunk in enumerate(chunks):
        result = grpc.infer(
            A2E_STREAM_MODEL,
            _stream_inputs(chunk, id_idx=4, seed=123),
            sequence_id=9001,
            sequence_start=index == 0,
            sequence_end=index == len(chunks) - 1,
        )
        served.append(result.as_numpy(BLENDSHAPES)[0])
        first_frames.append(int(result.as_numpy(FIRST_FRAME_INDEX).reshape(-1)[0]))
        chunk_indices.append(int(result.as_numpy(CHUNK_INDEX).reshape(-1)[0]))
    served = np.concatenate(served)
    assert served.shape == (150, NUM_BLENDSHAPES)
    assert first_frames == [0, 30, 60, 90, 120] and chunk_indices == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(served, _reference_stream(reference_network, chunks, 1, 4, 123), atol=1e-5)
    # END freed the sequence: a chunk without START is refused by Triton's sequence batcher
    with pytest.raises(InferenceServerException, match="START"):
        grpc.infer(A2E_STREAM_MODEL, _stream_inputs(chunks[0]), sequence_id=9001)


def _statistics(http, model):
    stats = http.get_inference_statistics(model)["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def _settled_statistics(http, model, expected_inferences: int, timeout_s: float = 10.0):
    """Triton updates a model's counters just after the responses are sent: wait for the last ones."""
    import time

    deadline = time.monotonic() + timeout_s
    counts = _statistics(http, model)
    while counts[0] < expected_inferences and time.monotonic() < deadline:
        time.sleep(0.05)
        counts = _statistics(http, model)
    return counts


def test_concurrent_sequences_are_batched_into_one_network_call(triton_server, http, reference_network):
    """8 sessions stream at once: the stream model and the network see fewer executions than requests."""
    num_sessions, num_chunks = 8, 4
    audios = [speech_like(float(num_chunks), seed=100 + s) for s in range(num_sessions)]
    before_stream = _statistics(http, A2E_STREAM_MODEL)
    before_network = _statistics(http, A2E_NETWORK_MODEL)

    def run_session(session: int) -> np.ndarray:
        client = grpcclient.InferenceServerClient(triton_server.grpc_url)
        try:
            out = []
            for index in range(num_chunks):
                chunk = audios[session][index * SAMPLE_RATE : (index + 1) * SAMPLE_RATE]
                result = client.infer(
                    A2E_STREAM_MODEL,
                    _stream_inputs(chunk, id_idx=session % 12, seed=session),
                    sequence_id=5000 + session,
                    sequence_start=index == 0,
                    sequence_end=index == num_chunks - 1,
                )
                out.append(result.as_numpy(BLENDSHAPES)[0])
            return np.concatenate(out)
        finally:
            client.close()

    with concurrent.futures.ThreadPoolExecutor(num_sessions) as pool:
        results = list(pool.map(run_session, range(num_sessions)))

    for session, served in enumerate(results):  # isolation: each equals its session run alone
        chunks = [audios[session][i * SAMPLE_RATE : (i + 1) * SAMPLE_RATE] for i in range(num_chunks)]
        np.testing.assert_allclose(served, _reference_stream(reference_network, chunks, 1, session % 12, session), atol=1e-5)

    total = num_sessions * num_chunks
    inferences, executions = (a - b for a, b in zip(_settled_statistics(http, A2E_STREAM_MODEL, before_stream[0] + total), before_stream))
    assert inferences == total
    assert executions < inferences, f"stream model ran {executions} executions for {inferences} chunks"
    network_after = _settled_statistics(http, A2E_NETWORK_MODEL, before_network[0] + total)
    network_inferences, network_executions = (a - b for a, b in zip(network_after, before_network))
    assert network_inferences == num_sessions * num_chunks  # one window per chunk, batched
    assert network_executions < network_inferences
