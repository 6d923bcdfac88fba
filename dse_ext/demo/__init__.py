"""The end-to-end demo: synthetic dense data, small SSL runs, label-free scores vs. a dense probe.

``python -m dse_ext demo [--quick] [--out DIR]`` (also ``dse demo``) runs it; see :mod:`dse_ext.demo.run`.
Modules: :mod:`.data` (synthetic scenes with segmentation masks), :mod:`.probe` (linear probe on
frozen patch tokens, mIoU), :mod:`.ssl` (a small ViT and DINO / MoCo v3-style training),
:mod:`.run` (the pipeline and its report). Needs the ``demo`` extra (timm, scipy, matplotlib).
"""
