"""Peer methods for comparison with Fast Diffusion EM (issue 7).

* ``l0.deblur_l0``: Anger, Facciolo & Delbracio's ℓ0-gradient blind deblurring (IPOL 2019);
* ``blinddps.deblur_blind_dps``: BlindDPS with any diffem image prior and a small kernel diffusion model;
* ``baselines.blurry_baseline`` / ``baselines.gauss_pigdm``: the blurry input, and non-blind ΠGDM with a
  fitted isotropic Gaussian kernel.

The benchmark lists them (``l0``, ``blind-dps``, ``blurry``, ``gauss-pigdm``) in
``diffem.benchmark.methods``; importing this package registers nothing.
"""
