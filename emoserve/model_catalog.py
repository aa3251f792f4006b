"""Triton model names and tensor names: the one place the builder, the models and the front end read them."""

A2E_NETWORK_MODEL = "lam_a2e"
A2E_STREAM_MODEL = "lam_a2e_stream"
A2E_OFFLINE_MODEL = "lam_a2e_offline"

A2E_MODELS = (A2E_NETWORK_MODEL, A2E_STREAM_MODEL, A2E_OFFLINE_MODEL)

# lam_a2e (the exported network; also the ONNX graph's names)
NETWORK_AUDIO = "input_values"
NETWORK_IDENTITY = "id_idx"
NETWORK_BLENDSHAPES = "blendshapes"

# lam_a2e_stream and lam_a2e_offline
AUDIO = "AUDIO"  # float32 PCM, 16 kHz mono
AUDIO_BYTES = "AUDIO_BYTES"  # an encoded file (WAV/MP3/OGG/FLAC/M4A), decoded server-side
ID_IDX = "ID_IDX"
MOVEMENT_SMOOTH = "MOVEMENT_SMOOTH"
BROW_MOVEMENT = "BROW_MOVEMENT"
EX_VOL = "EX_VOL"
SEED = "SEED"
BLENDSHAPES = "BLENDSHAPES"
FIRST_FRAME_INDEX = "FIRST_FRAME_INDEX"
CHUNK_INDEX = "CHUNK_INDEX"

# Parameters written into generated configs and read back by the front end.
WEIGHTS_PARAMETER = "weights_description"
