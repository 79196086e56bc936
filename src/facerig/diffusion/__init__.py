"""DiffusionRig (CVPR 2023): a buffer- and latent-conditioned diffusion model for rigged portrait editing.

Images are in [-1,1]; buffers are 9 channels in ``facerig.render.renderer.BUFFER_NAMES`` order (rendered, normal,
albedo), as the official code concatenates them. Modules: ``unet`` (the denoiser), ``encoder`` (ResNet-18
global latent), ``model`` (``DiffusionRig``, named configs, official checkpoint I/O), ``process``
(noise schedule, loss, DDIM sampling and inversion with a per-step callback), ``checkpoint`` (facerig
checkpoints, ``load_checkpoint``), ``train`` (both training stages; its items in ``train_data``), ``editor``
(``DiffusionRigEditor``, the ``facerig.edit`` protocol), ``commands`` (``facerig train``). Import from the
modules: this package imports nothing eagerly, so commands that do not use it stay fast.
"""
