"""StyleRig (CVPR 2020): rigging StyleGAN2 with a 3D morphable face model.

Modules: ``stylegan2`` (a plain-PyTorch StyleGAN2 generator and discriminator in the layout of
rosinality/stylegan2-pytorch, so its checkpoints load unchanged; ``load_rosinality``), ``gan_train``
(``facerig gan train``: our own generator on aligned faces), ``augment`` (DiffAugment), ``commands``.
Not yet: DFR, RigNet and the StyleRig editor. Import from the modules: this package imports nothing
eagerly.
"""
