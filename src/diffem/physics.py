"""Blur physics: y = k ⊛ x + n with a circular (periodic) true convolution.

Conventions (the whole package follows them):
  * images are (B, C, H, W) float tensors in [0, 1]; σ is the noise std on that scale;
  * kernels are (k, k) or (B, k, k), non-negative, sum to 1, centred at index ⌊k/2⌋;
  * ``k ⊛ x`` is a true convolution (the kernel is flipped, as in MATLAB ``conv2``),
    computed with FFTs and periodic boundaries.

The kernel ↔ transfer-function conversion (``kernel_to_otf`` / ``otf_to_kernel``) puts
the kernel's centre ⌊k/2⌋ at pixel (0, 0) of an H×W array (the classical ``psf2otf``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kernel_to_otf(kernel: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Transfer function (rfft2) of a (…, k, k) kernel for (H, W) images: (…, H, W//2+1) complex."""
    kh, kw = kernel.shape[-2:]
    H, W = shape
    if kh > H or kw > W:
        raise ValueError(f"kernel of size {kh}x{kw} is larger than the image {H}x{W}")
    padded = kernel.new_zeros(kernel.shape[:-2] + (H, W))
    padded[..., :kh, :kw] = kernel
    padded = torch.roll(padded, shifts=(-(kh // 2), -(kw // 2)), dims=(-2, -1))
    return torch.fft.rfft2(padded)


def crop_kernel(z: torch.Tensor, ksize: int) -> torch.Tensor:
    """Inverse of ``kernel_to_otf`` in real space: the ksize×ksize block of an (…, H, W) array
    whose centre ⌊k/2⌋ sits at pixel (0, 0)."""
    z = torch.roll(z, shifts=(ksize // 2, ksize // 2), dims=(-2, -1))
    return z[..., :ksize, :ksize]


def _as_batched_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """(k,k) -> (1,1,k,k); (B,k,k) -> (B,1,k,k); (B,1,k,k) unchanged (broadcast over channels)."""
    if kernel.dim() == 2:
        return kernel[None, None]
    if kernel.dim() == 3:
        return kernel[:, None]
    if kernel.dim() == 4:
        return kernel
    raise ValueError(f"kernel must be (k,k), (B,k,k) or (B,1,k,k); got shape {tuple(kernel.shape)}")


def blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Circular true convolution k ⊛ x. x: (B,C,H,W); kernel: (k,k) or (B,k,k) (one per image)."""
    K = kernel_to_otf(_as_batched_kernel(kernel).to(x.dtype), x.shape[-2:])
    return torch.fft.irfft2(torch.fft.rfft2(x) * K, s=x.shape[-2:])


def blur_adjoint(y: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Adjoint of ``blur``: correlation with the kernel, i.e. multiplication by conj(K)."""
    K = kernel_to_otf(_as_batched_kernel(kernel).to(y.dtype), y.shape[-2:])
    return torch.fft.irfft2(torch.fft.rfft2(y) * K.conj(), s=y.shape[-2:])


class Blur:
    """Circular-blur physics in deepinv's shape: ``A``, ``A_adjoint``, ``update(kernel=...)``, ``physics(x)``.

    ``kernel``: (k,k) shared by the batch or (B,k,k) one per image. ``sigma``: Gaussian noise std.
    ``mask``: optional boolean (1,1,H,W), True where y was observed. Real photos are a *valid*
    (non-circular) blur of a larger scene: put y on a larger canvas (``valid_canvas``) and mark
    the margin unobserved; the circular model is then exact on the observed pixels.
    """

    def __init__(self, kernel: torch.Tensor, sigma: float = 0.0, mask: torch.Tensor | None = None):
        self.kernel = kernel
        self.sigma = float(sigma)
        self.mask = mask

    def update(self, kernel: torch.Tensor | None = None, sigma: float | None = None) -> "Blur":
        if kernel is not None:
            self.kernel = kernel
        if sigma is not None:
            self.sigma = float(sigma)
        return self

    def A(self, x: torch.Tensor) -> torch.Tensor:
        return blur(x, self.kernel)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return blur_adjoint(y, self.kernel)

    def impute(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """y where observed, A(x) elsewhere: the E-step for the pixels the camera did not record.
        The residual y − A(x) then vanishes off the mask, so guidance and M-step only fit observed
        pixels, with their closed-form circular solvers unchanged."""
        if self.mask is None:
            return y
        return torch.where(self.mask, y, self.A(x).to(y.dtype))

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Noisy measurement A(x) + σ n, unclipped (the paper's protocol)."""
        y = self.A(x)
        if self.sigma > 0:
            y = y + self.sigma * torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
        return y


def valid_canvas(y: torch.Tensor, ksize: int, multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """Put a 'valid'-blurred y (B,C,H,W) on a canvas with a margin of at least ⌊k/2⌋ on every side
    (sizes rounded up to ``multiple``), the margin filled by edge replication (a start value only).

    Returns (canvas, mask, box): mask (1,1,H',W') True on y's pixels, box = (top, left, H, W) to
    crop results back. With this margin no wrap-around reaches the observed pixels.
    """
    H, W = y.shape[-2:]
    r = ksize // 2
    Hc = -(-(H + 2 * r) // multiple) * multiple
    Wc = -(-(W + 2 * r) // multiple) * multiple
    top, left = (Hc - H) // 2, (Wc - W) // 2
    canvas = F.pad(y, (left, Wc - W - left, top, Hc - H - top), mode="replicate")
    mask = torch.zeros((1, 1, Hc, Wc), dtype=torch.bool, device=y.device)
    mask[..., top:top + H, left:left + W] = True
    return canvas, mask, (top, left, H, W)


def blur_valid(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Non-circular ('valid') true convolution: output is (H-k+1, W-k+1). For realistic test data."""
    k = _as_batched_kernel(kernel).to(x.dtype)
    C = x.shape[1]
    flipped = torch.flip(k, dims=(-2, -1))
    if flipped.shape[0] == 1:
        return F.conv2d(x, flipped.expand(C, 1, *k.shape[-2:]), groups=C)
    return torch.cat([F.conv2d(x[i : i + 1], flipped[i].expand(C, 1, *k.shape[-2:]), groups=C)
                      for i in range(x.shape[0])])


def project_simplex(kernel: torch.Tensor) -> torch.Tensor:
    """The authors' kernel projection: clip at 0, then rescale to sum 1 (over the last two axes).
    An all-zero kernel becomes the uniform one."""
    k = kernel.clamp_min(0)
    s = k.sum(dim=(-2, -1), keepdim=True)
    uniform = torch.full_like(k, 1.0 / (k.shape[-1] * k.shape[-2]))
    return torch.where(s > 0, k / s.clamp_min(1e-30), uniform)


def project_simplex_euclidean(kernel: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of a (k, k) array onto {k ≥ 0, Σk = 1} (sort-based, Duchi et al. 2008).

    Unlike clip-and-rescale it is the exact prox of the simplex indicator, so a scaling of the input
    (e.g. the ℓ2 prox) changes the result."""
    v = kernel.reshape(-1)
    u, _ = torch.sort(v, descending=True)
    css = torch.cumsum(u, 0) - 1
    idx = torch.arange(1, len(u) + 1, dtype=v.dtype, device=v.device)
    rho = int(torch.nonzero(u - css / idx > 0)[-1])
    theta = css[rho] / (rho + 1)
    return (v - theta).clamp_min(0).reshape(kernel.shape)


def delta_kernel(size: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """A centred Dirac: 1 at (⌊k/2⌋, ⌊k/2⌋)."""
    k = torch.zeros(size, size, dtype=dtype, device=device)
    k[size // 2, size // 2] = 1.0
    return k


def center_of_mass(kernel: torch.Tensor) -> torch.Tensor:
    """(…, 2) centre of mass (row, col) of non-negative (…, k, k) kernels."""
    kh, kw = kernel.shape[-2:]
    k = kernel.clamp_min(0)
    s = k.sum(dim=(-2, -1)).clamp_min(1e-12)
    rows = torch.arange(kh, dtype=k.dtype, device=k.device)
    cols = torch.arange(kw, dtype=k.dtype, device=k.device)
    r = (k.sum(-1) * rows).sum(-1) / s
    c = (k.sum(-2) * cols).sum(-1) / s
    return torch.stack([r, c], dim=-1)


def shift_kernel(kernel: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Sub-pixel translation of (k, k) or (B, k, k) kernels by shift = (rows, cols), bilinear.

    Bilinear interpolation keeps the kernel non-negative and its mass (away from the border), so
    no ringing has to be clipped afterwards (a spline or Fourier shift rings on sharp kernels).
    """
    batched = kernel.dim() == 3
    k = kernel if batched else kernel[None]
    shift = shift.reshape(-1, 2).to(k.dtype)
    B, kh, kw = k.shape
    rows = torch.arange(kh, dtype=k.dtype, device=k.device)
    cols = torch.arange(kw, dtype=k.dtype, device=k.device)
    # out(p) = k(p − s): sample the input at p − s, in grid_sample's [-1, 1] coordinates.
    src_r = (rows[None, :] - shift[:, :1]) / max(kh - 1, 1) * 2 - 1          # (B, kh)
    src_c = (cols[None, :] - shift[:, 1:]) / max(kw - 1, 1) * 2 - 1          # (B, kw)
    grid = torch.stack([src_c[:, None, :].expand(B, kh, kw), src_r[:, :, None].expand(B, kh, kw)], dim=-1)
    out = F.grid_sample(k[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[:, 0]
    return out if batched else out[0]


def recenter(kernel: torch.Tensor) -> torch.Tensor:
    """Move the centre of mass to (⌊k/2⌋, ⌊k/2⌋) by a bilinear sub-pixel shift, then renormalise
    (the authors re-centre after each Fast-EM M-step, with a spline shift and no renormalisation;
    blind deconvolution cannot tell a kernel from its translate)."""
    kh, kw = kernel.shape[-2:]
    target = torch.tensor([kh // 2, kw // 2], dtype=kernel.dtype, device=kernel.device)
    return project_simplex(shift_kernel(kernel, target - center_of_mass(kernel)))
