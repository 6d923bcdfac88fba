"""The end-to-end demo: synthetic dense data, small SSL runs, label-free scores vs. a dense probe.

``python -m dse_ext demo [--full | --quick] [--out DIR]`` (also ``dse demo``) runs it; see
:mod:`dse_ext.demo.run`. Modules: :mod:`.data` (synthetic scenes with segmentation masks),
:mod:`.probe` (linear probe on frozen patch tokens, mIoU), :mod:`.ssl` (a small ViT and DINO /
iBOT / MoCo v3-style training), :mod:`.run` (the pipeline over configurations and seeds),
:mod:`.report` (statistics over seeds, findings, report and figure). Needs the ``demo`` extra
(timm, scipy, matplotlib).
"""
