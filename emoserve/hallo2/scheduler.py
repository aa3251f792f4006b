"""DDIM sampler exactly as Hallo2 configures diffusers' ``DDIMScheduler``, in numpy (no torch).

Upstream (fudan-generative-vision/hallo2 @58a9aa6) ``scripts/inference_long.py`` builds the sampler from
``configs/inference/long.yaml``::

    noise_scheduler_kwargs: beta_start 0.00085, beta_end 0.012, beta_schedule "linear", clip_sample false,
                            steps_offset 1, prediction_type "v_prediction", rescale_betas_zero_snr True,
                            timestep_spacing "trailing"
    enable_zero_snr: true   # re-applies rescale_betas_zero_snr / trailing / v_prediction

and only AFTER constructing ``val_noise_scheduler`` switches the dict to ``beta_schedule="scaled_linear"``
(that copy is never used for inference), so the inference betas are LINEAR.  diffusers 0.32 semantics:

* betas ``linspace(0.00085, 0.012, 1000)`` (float32), rescaled to zero terminal SNR (Lin et al. 2023,
  Algorithm 1), ``alphas_cumprod = cumprod(1 - betas)`` -> ``alphas_cumprod[999] == 0``;
* ``set_alpha_to_one=True`` -> the "previous" alpha of the last step is 1.0;
* trailing spacing: ``round(arange(1000, 0, -1000/n)) - 1`` (``steps_offset`` is only used by "leading");
* ``step``: v-prediction -> ``x0 = sqrt(a_t) x_t - sqrt(1-a_t) v``, ``eps = sqrt(a_t) v + sqrt(1-a_t) x_t``,
  no clipping, eta = 0 -> ``x_prev = sqrt(a_prev) x0 + sqrt(1-a_prev) eps``;
* ``init_noise_sigma = 1`` and ``scale_model_input`` is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["HALLO2_DDIM", "DDIMConfig", "DDIMScheduler", "rescale_zero_terminal_snr"]


@dataclass(frozen=True)
class DDIMConfig:
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "linear"
    clip_sample: bool = False
    set_alpha_to_one: bool = True
    steps_offset: int = 1
    prediction_type: str = "v_prediction"
    rescale_betas_zero_snr: bool = True
    timestep_spacing: str = "trailing"


HALLO2_DDIM = DDIMConfig()


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Rescale betas so the last timestep has zero SNR (keeps the first timestep's SNR)."""
    alphas_bar_sqrt = np.sqrt(np.cumprod(1.0 - betas, axis=0))
    first = alphas_bar_sqrt[0].copy()
    last = alphas_bar_sqrt[-1].copy()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (1.0 - alphas).astype(betas.dtype)


class DDIMScheduler:
    """Deterministic (eta = 0) DDIM with diffusers' semantics for Hallo2's configuration."""

    init_noise_sigma = 1.0
    order = 1

    def __init__(self, config: DDIMConfig = HALLO2_DDIM):
        self.config = config
        n = config.num_train_timesteps
        if config.beta_schedule == "linear":
            betas = np.linspace(config.beta_start, config.beta_end, n, dtype=np.float32)
        elif config.beta_schedule == "scaled_linear":
            betas = (np.linspace(config.beta_start**0.5, config.beta_end**0.5, n, dtype=np.float32)) ** 2
        else:
            raise ValueError(f"unsupported beta_schedule {config.beta_schedule!r}")
        if config.rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        self.betas = betas.astype(np.float32)
        self.alphas = (1.0 - self.betas).astype(np.float32)
        self.alphas_cumprod = np.cumprod(self.alphas, dtype=np.float32)
        self.final_alpha_cumprod = np.float32(1.0) if config.set_alpha_to_one else self.alphas_cumprod[0]
        self.num_inference_steps: int | None = None
        self.timesteps = np.arange(n)[::-1].astype(np.int64).copy()

    def set_timesteps(self, num_inference_steps: int) -> np.ndarray:
        n = self.config.num_train_timesteps
        if not 1 <= num_inference_steps <= n:
            raise ValueError(f"num_inference_steps must be in [1, {n}], got {num_inference_steps}")
        self.num_inference_steps = int(num_inference_steps)
        spacing = self.config.timestep_spacing
        if spacing == "trailing":
            ratio = n / self.num_inference_steps
            timesteps = np.round(np.arange(n, 0, -ratio)).astype(np.int64) - 1
        elif spacing == "leading":
            ratio = n // self.num_inference_steps
            timesteps = (np.arange(0, self.num_inference_steps) * ratio).round()[::-1].astype(np.int64)
            timesteps = timesteps + self.config.steps_offset
        elif spacing == "linspace":
            timesteps = np.linspace(0, n - 1, self.num_inference_steps).round()[::-1].astype(np.int64)
        else:
            raise ValueError(f"unsupported timestep_spacing {spacing!r}")
        self.timesteps = np.ascontiguousarray(timesteps)
        return self.timesteps

    def scale_model_input(self, sample: np.ndarray, timestep: int | None = None) -> np.ndarray:
        return sample

    def previous_timestep(self, timestep: int) -> int:
        assert self.num_inference_steps is not None
        return int(timestep) - self.config.num_train_timesteps // self.num_inference_steps

    def step(self, model_output: np.ndarray, timestep: int, sample: np.ndarray) -> np.ndarray:
        """One eta = 0 DDIM step: ``x_t`` -> ``x_{t-1}`` (same dtype as ``sample``)."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps() before step()")
        t = int(timestep)
        prev_t = self.previous_timestep(t)
        alpha_t = np.float64(self.alphas_cumprod[t])
        alpha_prev = np.float64(self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod)
        beta_t = 1.0 - alpha_t
        x = sample.astype(np.float32, copy=False)
        out = model_output.astype(np.float32, copy=False)
        kind = self.config.prediction_type
        if kind == "v_prediction":
            x0 = np.float32(alpha_t**0.5) * x - np.float32(beta_t**0.5) * out
            eps = np.float32(alpha_t**0.5) * out + np.float32(beta_t**0.5) * x
        elif kind == "epsilon":
            x0 = (x - np.float32(beta_t**0.5) * out) / np.float32(alpha_t**0.5)
            eps = out
        elif kind == "sample":
            x0 = out
            eps = (x - np.float32(alpha_t**0.5) * x0) / np.float32(beta_t**0.5)
        else:
            raise ValueError(f"unsupported prediction_type {kind!r}")
        if self.config.clip_sample:
            x0 = np.clip(x0, -1.0, 1.0)
        prev = np.float32(alpha_prev**0.5) * x0 + np.float32((1.0 - alpha_prev) ** 0.5) * eps
        return prev.astype(sample.dtype, copy=False)
