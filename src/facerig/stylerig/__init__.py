"""StyleRig (CVPR 2020): rigging StyleGAN2 with a 3D morphable face model.

Networks: ``stylegan2`` (a plain-PyTorch StyleGAN2 generator and discriminator in the layout of
rosinality/stylegan2-pytorch), ``rosinality`` (its ``.pt`` checkpoints), ``generator_io`` (our generators'
files), ``rig`` (DFR: W+ -> face parameters; RigNet), ``model`` (the shipped ``StyleRigModel`` folder).
Inference: ``editor`` (the StyleRig rig of ``facerig edit`` / ``ui``), ``evaluate``, ``gan_eval``.
Training: ``gan_train`` / ``gan_data`` (``facerig gan train``), ``recipe`` (StyleRig recipes as TOML files),
``rig_train`` with ``rig_data``, ``dfr_fit``, ``rignet_fit``, ``targets`` (``facerig stylerig train``),
``augment`` (DiffAugment). Inference modules import no training module. Import from the modules: this
package imports nothing eagerly.
"""
