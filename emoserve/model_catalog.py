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

# ---- Emotion-LLaMA: the LLM and the pipeline --------------------------------------------------------
EMOTION_LLM_MODEL = "emotion_llama_llm"
EMOTION_PIPELINE_MODEL = "emotion_llama"

VIDEO = "VIDEO"  # encoded video file bytes
VIDEO_BASE64 = "VIDEO_BASE64"  # the same, base64-encoded: for JSON-only clients such as Triton's generate endpoint
PROMPT = "PROMPT"  # the user's prompt text (UTF-8)
MULTIMODAL_EMBEDDINGS = "MULTIMODAL_EMBEDDINGS"  # [260, llm hidden]: 256 image, 3 feature, 1 CLS tokens
TEMPERATURE = "TEMPERATURE"
TOP_P = "TOP_P"
REPETITION_PENALTY = "REPETITION_PENALTY"
MAX_NEW_TOKENS = "MAX_NEW_TOKENS"
TEXT_DELTA = "TEXT_DELTA"  # streamed: the text added by this response
TEXT = "TEXT"  # final response: the whole answer
TOKEN_IDS = "TOKEN_IDS"  # final response: generated token ids
RESULT_METADATA = "RESULT_METADATA"  # final response: JSON (finish reason, emotion, confidence, timings, weights)

# ---- Emotion-LLaMA: the encoders (also the ONNX graphs' names) --------------------------------------
EMOTION_VISION_MODEL = "emotion_llama_vision"  # EVA ViT-g + ln_vision + llama_proj / cls_tk_llama_proj
EMOTION_AUDIO_MODEL = "emotion_llama_audio"  # HuBERT + feats_llama_proj1/2/3

PIXEL_VALUES = "pixel_values"  # float32 [batch, 3, 448, 448], CLIP-normalised RGB
IMAGE_TOKENS = "image_tokens"  # float32 [batch, 256, llm hidden]
CLS_TOKEN = "cls_token"  # float32 [batch, 1, llm hidden]
AUDIO_INPUT_VALUES = "input_values"  # float32 [batch, samples], raw 16 kHz mono PCM (normalised in-graph)
FEATURE_TOKENS = "feature_tokens"  # float32 [batch, 3, llm hidden]: FaceMAE (zeros), VideoMAE (zeros), HuBERT
