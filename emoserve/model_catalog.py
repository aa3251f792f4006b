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
# a decoupled model's error reaches gRPC stream clients as text alone (no status code): the one input error only the
# pipeline can find, a video it cannot decode, starts with this so that clients can tell it from a failure
INVALID_VIDEO_PREFIX = "invalid video: "
PROMPT = "PROMPT"  # the user's prompt text (UTF-8)
MULTIMODAL_EMBEDDINGS = "MULTIMODAL_EMBEDDINGS"  # [260, llm hidden]: 256 image, 3 feature, 1 CLS tokens
TEMPERATURE = "TEMPERATURE"
TOP_P = "TOP_P"
REPETITION_PENALTY = "REPETITION_PENALTY"
MAX_NEW_TOKENS = "MAX_NEW_TOKENS"
# emotion_llama_llm only: EOS is ignored until this many tokens exist (fixed-length load tests, like vLLM's min_tokens)
MIN_NEW_TOKENS = "MIN_NEW_TOKENS"
TEXT_DELTA = "TEXT_DELTA"  # streamed: the text added by this response
TEXT = "TEXT"  # final response: the whole answer
TOKEN_IDS = "TOKEN_IDS"  # final response: generated token ids
RESULT_METADATA = "RESULT_METADATA"  # final response: JSON (finish reason, emotion, confidence, timings, weights)

# ---- Emotion-LLaMA: the encoders (also the ONNX graphs' names) --------------------------------------
EMOTION_VISION_MODEL = "emotion_llama_vision"  # EVA ViT-g + ln_vision + llama_proj / cls_tk_llama_proj
EMOTION_AUDIO_MODEL = "emotion_llama_audio"  # HuBERT + feats_llama_proj1/2/3
EMOTION_LLAMA_MODELS = (EMOTION_VISION_MODEL, EMOTION_AUDIO_MODEL, EMOTION_LLM_MODEL, EMOTION_PIPELINE_MODEL)

PIXEL_VALUES = "pixel_values"  # float32 [batch, 3, 448, 448], CLIP-normalised RGB
IMAGE_TOKENS = "image_tokens"  # float32 [batch, 256, llm hidden]
CLS_TOKEN = "cls_token"  # float32 [batch, 1, llm hidden]
AUDIO_INPUT_VALUES = "input_values"  # float32 [batch, samples], raw 16 kHz mono PCM (normalised in-graph)
FEATURE_TOKENS = "feature_tokens"  # float32 [batch, 3, llm hidden]: FaceMAE (zeros), VideoMAE (zeros), HuBERT

# ---- Hallo2 ----------------------------------------------------------------------------------------
# VAE, audio encoder and conditioning projections (also the ONNX graphs' names).  B = batch, F = frames,
# H = W = image size, h = w = H / 8 (latent size), L / D = wav2vec2 layers / width (12 / 768),
# C = token width (768), S = 16 kHz samples, T = ceil(S / 16000 * 25) (upstream's float formula).
HALLO2_VAE_ENCODER_MODEL = "hallo2_vae_encoder"  # pixels -> latents
HALLO2_VAE_DECODER_MODEL = "hallo2_vae_decoder"  # latents -> pixels
HALLO2_AUDIO_ENCODER_MODEL = "hallo2_audio_encoder"  # audio -> audio_features
HALLO2_AUDIO_PROJ_MODEL = "hallo2_audio_proj"  # audio_windows -> audio_tokens
HALLO2_IMAGE_PROJ_MODEL = "hallo2_image_proj"  # face_embedding -> image_tokens
HALLO2_FACE_LOCATOR_MODEL = "hallo2_face_locator"  # face_mask -> face_features

HALLO2_PIXELS = "pixels"  # float32 [B, 3, H, W] RGB in [-1, 1]
HALLO2_LATENTS = "latents"  # float32 [B, 4, h, w], VAE posterior mean x 0.18215
HALLO2_AUDIO = "audio"  # float32 [B, S] raw 16 kHz mono PCM (normalised in-graph), S >= 400
HALLO2_AUDIO_FEATURES = "audio_features"  # float32 [B, T, L, D]: every wav2vec2 layer's output at 25 fps
HALLO2_AUDIO_WINDOWS = "audio_windows"  # float32 [B, F, 5, L, D]: features of frames i-2..i+2 (clamped)
HALLO2_AUDIO_TOKENS = "audio_tokens"  # float32 [B, F, 32, C]
HALLO2_FACE_EMBEDDING = "face_embedding"  # float32 [B, 512] InsightFace embedding (zeros: no face / uncond)
HALLO2_IMAGE_TOKENS = "image_tokens"  # float32 [B, 4, C]
HALLO2_FACE_MASK = "face_mask"  # float32 [B, 1, F, H, W] face-region mask in [0, 1] (expanded x1.2)
HALLO2_FACE_FEATURES = "face_features"  # float32 [B, 320, F, h, w]

# Hallo2 UNets (also the ONNX graphs' names).  n = UNet levels (4; tiny 2), K = reference features (16; tiny 4),
# R = 1 + motion frames (3), L_i / C_i = tokens / channels of reference feature i
# (emoserve.hallo2.unet.reference_feature_layout), M_i = (h / 2^i)^2 mask tokens at level i.
HALLO2_REFERENCE_UNET_MODEL = "hallo2_reference_unet"  # ref_latents, timestep, image_tokens -> ref_feat_*
HALLO2_DENOISING_UNET_MODEL = "hallo2_denoising_unet"  # sample, ..., ref_feat_* -> model_output

HALLO2_REF_LATENTS = "ref_latents"  # float32 [N, 4, h, w]: reference image and motion frames (N = B * R)
HALLO2_TIMESTEP = "timestep"  # int64 [B] (the reference UNet: 0)
HALLO2_SAMPLE = "sample"  # float32 [B, 4, F, h, w] noisy latents
HALLO2_MODEL_OUTPUT = "model_output"  # float32 [B, 4, F, h, w] v-prediction
HALLO2_REF_MASK = "ref_mask"  # float32 [B]: 1 = read the reference features, 0 = CFG unconditional branch
HALLO2_REF_FEAT_PREFIX = "ref_feat_"  # ref_feat_i: reference UNet [N, L_i, C_i]; denoiser [B, R, L_i, C_i]
HALLO2_FULL_MASK_PREFIX = "full_mask_"  # full_mask_i float32 [B, M_i] in [0, 1]
HALLO2_FACE_MASK_PREFIX = "face_mask_"  # face_mask_i float32 [B, M_i]
HALLO2_LIP_MASK_PREFIX = "lip_mask_"  # lip_mask_i float32 [B, M_i]

# ---- Hallo2: the pipeline ---------------------------------------------------------------------------
HALLO2_PIPELINE_MODEL = "hallo2"  # portrait + audio -> MP4, decoupled: progress responses, then the video
HALLO2_IMAGE = "IMAGE"  # JPG/PNG bytes
GUIDANCE_SCALE = "GUIDANCE_SCALE"
INFERENCE_STEPS = "INFERENCE_STEPS"
USE_CACHE = "USE_CACHE"
PROGRESS = "PROGRESS"  # float32 percent 0..100
STATUS_MESSAGE = "STATUS_MESSAGE"
VIDEO_MP4 = "VIDEO_MP4"  # final response: H.264 + AAC MP4 bytes

HALLO2_NETWORK_MODELS = (
    HALLO2_VAE_ENCODER_MODEL, HALLO2_VAE_DECODER_MODEL, HALLO2_AUDIO_ENCODER_MODEL, HALLO2_AUDIO_PROJ_MODEL,
    HALLO2_IMAGE_PROJ_MODEL, HALLO2_FACE_LOCATOR_MODEL, HALLO2_REFERENCE_UNET_MODEL, HALLO2_DENOISING_UNET_MODEL,
)
HALLO2_MODELS = (*HALLO2_NETWORK_MODELS, HALLO2_PIPELINE_MODEL)

# the Triton models of each slice (the slice names of every layer: emoserve/<slice>/, export/<slice>.py, frontend/<slice>/)
SLICE_MODELS = {"lam_a2e": A2E_MODELS, "emotion_llama": EMOTION_LLAMA_MODELS, "hallo2": HALLO2_MODELS}
