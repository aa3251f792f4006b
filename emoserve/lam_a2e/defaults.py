"""LAM-A2E's defaults and limits, in one place: the front end's settings, the export's ``BuildSettings`` and the
``lam_a2e_offline`` model's fallbacks all read :data:`LAM_A2E`."""

from __future__ import annotations

from dataclasses import dataclass

_MiB = 1024 * 1024


@dataclass(frozen=True)
class LamA2EDefaults:
    documented_port: int = 8000  # the LAM-A2E document's server (documented-ports mode)
    max_audio_seconds: float = 600.0  # a whole-file request (front end and the lam_a2e_offline model)
    # the shortest whole-file audio: one receptive field of wav2vec2's conv feature extractor (25 ms at 16 kHz);
    # shorter, the network has no frame to compute (streaming chunks are padded by their session's context)
    min_audio_samples: int = 400
    max_upload_bytes: int = 50 * _MiB  # one whole-file audio upload
    max_chunk_bytes: int = 8 * _MiB  # one streaming chunk upload
    max_chunk_seconds: float = 30.0  # one streaming chunk's audio
    max_sessions: int = 256  # live streaming sessions of one front end
    max_sessions_per_client: int = 32  # of those, what one API key (or, without one, one address) may hold
    session_idle_timeout_s: float = 300.0  # a REST session with no chunk for this long is closed
    session_sweep_interval_s: float = 5.0
    sequence_idle_timeout_s: float = 600.0  # Triton's sequence batcher frees a silent sequence after this


LAM_A2E = LamA2EDefaults()
