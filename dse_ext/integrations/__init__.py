"""Integrations of DSE tracking with training frameworks.

- :mod:`dse_ext.integrations.lightning`: :class:`~dse_ext.integrations.lightning.DSECallback`, a
  Lightning callback that scores a fixed probe batch at the end of training epochs and logs the
  components (usable as a ``ModelCheckpoint`` monitor). Needs ``pip install 'dse_ext[lightning]'``.

Plain PyTorch loops use :class:`dse_ext.DSEMonitor` (:mod:`dse_ext.monitor`).
"""
