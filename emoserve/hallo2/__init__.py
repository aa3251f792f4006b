"""Hallo2 (fudan-generative-vision/hallo2): audio-driven long portrait animation.

Plain-PyTorch reproductions of upstream's networks with upstream's module/parameter names so that
official checkpoints load, split into ONNX-exportable pieces served by Triton:

* :mod:`emoserve.hallo2.profile` -- :class:`Hallo2Profile` (``full`` = upstream sizes, ``tiny`` = tests);
* :mod:`emoserve.hallo2.unet` -- the reference UNet2D and the denoising UNet3D (mutual self-attention
  with explicit reference features, face/audio cross-attention, motion modules, face-locator features).
"""
