"""Blur physics: y = k ⊛ x + n, a true convolution computed with FFTs; ``Blur`` owns the boundary.

Conventions (the whole package follows them):
  * images are (B, C, H, W) float tensors in [0, 1]; σ is the noise std on that scale;
  * kernels are (k, k) or (B, k, k), non-negative, sum to 1, centred at index ⌊k/2⌋;
  * ``k ⊛ x`` is a true convolution (the kernel is flipped, as in MATLAB ``conv2``),
    computed with FFTs on a periodic grid; ``Blur(boundary="valid")`` puts that grid around y.

The kernel ↔ transfer-function conversion (``kernel_to_otf`` / ``crop_kernel``) puts
the kernel's centre ⌊k/2⌋ at pixel (0, 0) of an H×W array (the classical ``psf2otf``).

``Blur`` — the measurement's physics (deepinv's shape: ``A``, ``A_adjoint``, ``physics(x)``). It owns
its boundary; the unknown image x lives on a *canvas*:

* ``"circular"``: y = k ⊛ x with wrap-around; the canvas is y's own grid, so ``canvas``, ``crop`` and
  ``impute`` are identities and ``A`` is the circular blur.
* ``"valid"``: y (h×w) is the valid part of the blur of a larger scene. The canvas exceeds y by at
  least ⌊k/2⌋ on every side (sizes rounded up to ``multiple``, what the prior needs, and to a size
  whose FFT is fast: ``fft_size``), so that no wrap-around of the circular blur on the canvas
  reaches an observed pixel.

Interface (x on the canvas, y and r on the observed grid)::

    Blur(kernel, sigma=0.0, boundary="circular", *, observed_shape=None, multiple=1, trusted=None)
    Blur.for_measurement(y, kernel, sigma=0.0, boundary="circular", multiple=1, trusted=None) -> Blur
    .kernel  .sigma  .boundary  .canvas_shape (H', W')  .box (top, left, h, w) or None
    .mask                 (1,1,H',W') bool, True on observed pixels (None for circular without ``trusted``)
    .trusted              (1,1,h,w) bool on y's grid or None: pixels the likelihood may use (e.g. False
                          on saturated pixels, whose value is not k ⊛ x); the others count as unobserved
    .canvas(y)            the start image on the canvas: y, its margin filled by edge replication
    .crop(x)              x's observed box (what a user gets back)
    .convolve(x)          the circular k ⊛ x on the canvas
    .A(x)                 canvas -> observed: crop(k ⊛ x);   .A_adjoint(r): observed -> canvas
    .impute(y, x)         the full-canvas measurement: y where observed, k ⊛ x elsewhere (the E-step
                          for the pixels the camera did not record: the residual vanishes there, so
                          the circular closed-form solvers fit the observed pixels only)
    .pigdm_vector(x, y, r2)   Hᵀ(r²HHᵀ + σ²I)⁻¹(y − Hx) in closed form in Fourier (ΠGDM, Eq. 17)
    .prox(v, y, rho)      argmin_x ‖y − A x‖² + ρ‖x − v‖² (the data step of HQS): closed form in
                          Fourier (circular) or conjugate gradients preconditioned by it (valid: exact)
    .with_kernel(k)       a new physics with another kernel, same boundary and canvas (``.with_sigma(s)``: σ)
    physics(x, generator) a noisy measurement A(x) + σ n
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from diffem.measurement import check_boundary

CG_ITERS = 8   # CG iterations of a data step without a closed form ('valid', untrusted pixels)


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


def fft_size(n: int, multiple: int = 1) -> int:
    """The smallest size ≥ n that is a multiple of ``multiple`` with no prime factor above 7: an FFT of a
    size with a large prime factor is several times slower (1281 = 3·7·61 px: 5× a 1280 px one)."""
    m = -(-n // multiple) * multiple
    while True:
        rest = m // multiple
        for p in (2, 3, 5, 7):
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return m
        m += multiple


class Blur:
    """The physics of a blur measurement y = A x + σ n; it owns its boundary (interface: module docstring).

    ``kernel``: (k,k) shared by the batch or (B,k,k) one per image; ``sigma``: the Gaussian noise std on
    [0, 1]; ``boundary``: "circular" or "valid" (a valid blur needs ``observed_shape``, y's (h, w):
    use ``Blur.for_measurement``). Never modified after construction.
    """

    def __init__(self, kernel: torch.Tensor, sigma: float = 0.0, boundary: str = "circular", *,
                 observed_shape: tuple[int, int] | None = None, multiple: int = 1,
                 trusted: torch.Tensor | None = None):
        self.kernel = kernel
        self.sigma = float(sigma)
        self.boundary = check_boundary(boundary)
        self.trusted = None if trusted is None else trusted.to(dtype=torch.bool).reshape(1, 1, *trusted.shape[-2:])
        self.box = None                                   # (top, left, h, w) of y on the canvas
        self.canvas_shape = None if observed_shape is None else tuple(observed_shape[-2:])
        self._mask = None
        if self.boundary == "valid":
            if observed_shape is None:
                raise ValueError("observed_shape: a 'valid' blur needs the size of y "
                                 "(build it with Blur.for_measurement(y, kernel, sigma, 'valid'))")
            h, w = observed_shape[-2:]
            r = kernel.shape[-1] // 2
            H, W = (fft_size(n + 2 * r, multiple) for n in (h, w))
            self.box = ((H - h) // 2, (W - w) // 2, h, w)
            self.canvas_shape = (H, W)

    @classmethod
    def for_measurement(cls, y: torch.Tensor, kernel: torch.Tensor, sigma: float = 0.0, boundary: str = "circular",
                        multiple: int = 1, trusted: torch.Tensor | None = None) -> "Blur":
        """The physics of measurement y (…, h, w); ``multiple``: what the prior needs H and W to be multiples of."""
        h, w = y.shape[-2:]
        if check_boundary(boundary) == "circular" and (h % multiple or w % multiple):
            raise ValueError(f"y: this prior needs height and width multiples of {multiple}, got {h}x{w} "
                             "(or use boundary='valid', which pads; `diffem deblur` does it for you)")
        if trusted is not None and tuple(trusted.shape[-2:]) != (h, w):
            raise ValueError(f"trusted: expected a mask of y's size {h}x{w}, got {tuple(trusted.shape[-2:])}")
        return cls(kernel, sigma, boundary, observed_shape=(h, w), multiple=multiple, trusted=trusted)

    def with_sigma(self, sigma: float) -> "Blur":
        new = copy.copy(self)
        new.sigma = float(sigma)
        return new

    def with_kernel(self, kernel: torch.Tensor) -> "Blur":
        if self.box is not None and kernel.shape[-1] // 2 > min(self.box[0], self.box[1]):
            raise ValueError(f"kernel: a {kernel.shape[-1]}-pixel kernel needs a larger canvas margin than this physics has")
        new = copy.copy(self)
        new.kernel = kernel
        return new

    @property
    def mask(self) -> torch.Tensor | None:
        if self._mask is None and self.box is not None:
            top, left, h, w = self.box
            self._mask = torch.zeros((1, 1) + self.canvas_shape, dtype=torch.bool, device=self.kernel.device)
            self._mask[..., top:top + h, left:left + w] = True if self.trusted is None else self.trusted
        elif self._mask is None and self.trusted is not None:
            self._mask = self.trusted
        return self._mask

    def _weight(self, r: torch.Tensor) -> torch.Tensor:
        """r on y's grid with untrusted pixels zeroed."""
        return r if self.trusted is None else r * self.trusted.to(device=r.device, dtype=r.dtype)

    def residual(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """y − A x on y's grid, zero on untrusted pixels."""
        return self._weight(y - self.A(x))

    def canvas(self, y: torch.Tensor) -> torch.Tensor:
        if self.box is None:
            return y
        top, left, h, w = self.box
        H, W = self.canvas_shape
        return F.pad(y, (left, W - w - left, top, H - h - top), mode="replicate")

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.box is None else crop(x, self.box)

    def _embed(self, r: torch.Tensor) -> torch.Tensor:
        """Observed-grid r on the canvas, zero outside y's box."""
        if self.box is None:
            return r
        top, left, h, w = self.box
        H, W = self.canvas_shape
        return F.pad(r, (left, W - w - left, top, H - h - top))

    def convolve(self, x: torch.Tensor) -> torch.Tensor:
        return blur(x, self.kernel)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        return self.crop(self.convolve(x))

    def A_adjoint(self, r: torch.Tensor) -> torch.Tensor:
        return blur_adjoint(self._embed(r), self.kernel)

    def impute(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return y
        return torch.where(self.mask, self._embed(y), self.convolve(x).to(y.dtype))

    def pigdm_vector(self, x: torch.Tensor, y: torch.Tensor, r2: float) -> torch.Tensor:
        """Eq. 17 without the Jacobian: v = Hᵀ (r² H Hᵀ + σ² I)⁻¹ (y − H x), in closed form in Fourier
        on the canvas (y imputed by H x where unobserved): v = F⁻¹[ conj(K) (Y − K X) / (r² |K|² + σ²) ]."""
        K = kernel_to_otf(self.kernel.to(x.dtype), x.shape[-2:])
        X, Y = torch.fft.rfft2(x), torch.fft.rfft2(self.impute(y, x))
        sigma2 = max(self.sigma, 1e-8) ** 2
        return torch.fft.irfft2(K.conj() * (Y - K * X) / (r2 * K.abs() ** 2 + sigma2), s=x.shape[-2:])

    def prox(self, v: torch.Tensor, y: torch.Tensor, rho: float, cg_iters: int = CG_ITERS,
             cg_tol: float | None = None) -> torch.Tensor:
        """argmin_x ‖y − A x‖² + ρ‖x − v‖² over the trusted pixels, x and v on the canvas. Circular:
        (K̄Y + ρV)/(|K|² + ρ) in Fourier. Valid (or untrusted pixels): (AᵀWA + ρ)x = AᵀWy + ρv by
        conjugate gradients from v, preconditioned with the circular solve (the operators differ only
        near the border and the untrusted pixels, so a few iterations suffice): at most ``cg_iters``, fewer
        once the preconditioned residual norm falls to ``cg_tol`` × its start (None: the dtype's rounding)."""
        K = kernel_to_otf(_as_batched_kernel(self.kernel).to(v.dtype), v.shape[-2:])
        K2 = K.abs() ** 2
        if self.mask is None:
            return torch.fft.irfft2((K.conj() * torch.fft.rfft2(y) + rho * torch.fft.rfft2(v)) / (K2 + rho),
                                    s=v.shape[-2:])
        # CG on the spectra (rfft2) of x, r and p: AᵀWA + ρ is K̄·F(w·F⁻¹(K·)) + ρ, the preconditioner a
        # multiplication, inner products by Parseval; in place where it can be (the loop is memory-bound:
        # 1.8× faster than out of place on a 1120² canvas, the same iterates up to rounding)
        shape = v.shape[-2:]
        w = self.mask.to(v.dtype)
        K_conj, inverse = K.conj().resolve_conj(), 1.0 / (K2 + rho)

        def normal(P):
            return torch.fft.rfft2(torch.fft.irfft2(K * P, s=shape).mul_(w)).mul_(K_conj).add_(P, alpha=rho)

        X = torch.fft.rfft2(v)
        R = K_conj * torch.fft.rfft2(self._embed(self._weight(y))) + rho * X - normal(X)
        Z = R * inverse
        P, rz = Z.clone(), _rfft_dot(R, Z, shape)
        # by default stop at the dtype's rounding level (e.g. the no-blur hypothesis, k = δ: two iterations)
        converged = (10 * torch.finfo(v.dtype).eps if cg_tol is None else cg_tol) ** 2 * rz
        for _ in range(cg_iters):
            if rz <= converged:
                break
            AP = normal(P)
            step = float(rz / _rfft_dot(P, AP, shape).clamp_min(1e-30))
            X.add_(P, alpha=step)
            R.sub_(AP, alpha=step)
            torch.mul(R, inverse, out=Z)
            rz, rz_old = _rfft_dot(R, Z, shape), rz
            P.mul_(float(rz / rz_old.clamp_min(1e-30))).add_(Z)
        return torch.fft.irfft2(X, s=shape)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Noisy measurement A(x) + σ n, unclipped (the paper's protocol)."""
        y = self.A(x)
        if self.sigma > 0:
            y = y + self.sigma * torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
        return y


def _rfft_dot(A: torch.Tensor, B: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Σ x·y for real H×W images x, y given their rfft2 A, B (Parseval: the half spectrum's columns other
    than 0 and, for even W, W/2 stand for two)."""
    H, W = shape
    dot = lambda a, b: torch.vdot(b.reshape(-1), a.reshape(-1)).real   # noqa: E731  Σ Re(a·b̄)
    total = 2 * dot(A, B) - dot(A[..., 0].contiguous(), B[..., 0].contiguous())
    if W % 2 == 0:
        total = total - dot(A[..., -1].contiguous(), B[..., -1].contiguous())
    return total / (H * W)


def crop(x: torch.Tensor, box) -> torch.Tensor:
    """The (top, left, h, w) box of (…, H, W) images."""
    top, left, h, w = box
    return x[..., top:top + h, left:left + w]


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
    """Euclidean projection of (…, k, k) arrays onto {k ≥ 0, Σk = 1} (sort-based, Duchi et al. 2008).

    Unlike clip-and-rescale it is the exact prox of the simplex indicator, so a scaling of the input
    (e.g. the ℓ2 prox) changes the result."""
    shape = kernel.shape
    flat = kernel.reshape(-1, shape[-2] * shape[-1])
    u, _ = torch.sort(flat, dim=1, descending=True)
    css = u.cumsum(1) - 1
    idx = torch.arange(1, flat.shape[1] + 1, dtype=kernel.dtype, device=kernel.device)
    rho = (u - css / idx > 0).to(torch.int64).cumsum(1).argmax(1, keepdim=True)  # last index where it holds
    theta = css.gather(1, rho) / (rho + 1).to(kernel.dtype)
    return (flat - theta).clamp_min(0).reshape(shape)


def delta_kernel(size: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """A centred Dirac: 1 at (⌊k/2⌋, ⌊k/2⌋)."""
    k = torch.zeros(size, size, dtype=dtype, device=device)
    k[size // 2, size // 2] = 1.0
    return k


def kernel_radius(kernel: torch.Tensor) -> int:
    """How far (Chebyshev distance, px) the farthest non-zero tap of (k, k) ``kernel`` lies from its
    centre ⌊k/2⌋; 0 for a Dirac or an all-zero kernel."""
    rows, cols = torch.nonzero(kernel > 0, as_tuple=True)
    c = kernel.shape[-1] // 2
    return int(max((rows - c).abs().max(), (cols - c).abs().max())) if len(rows) else 0


def center_crop_or_pad(k: torch.Tensor, size: int) -> torch.Tensor:
    """Crop or zero-pad (…, n, n) kernels around their centre ⌊n/2⌋ to (…, size, size)."""
    n = k.shape[-1]
    if size == n:
        return k
    if size < n:
        s = n // 2 - size // 2
        return k[..., s: s + size, s: s + size]
    before = size // 2 - n // 2
    return F.pad(k, (before, size - n - before, before, size - n - before))


def trim_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """(k, k) ``kernel`` cropped around its centre to the smallest odd support that holds every non-zero
    tap: the same blur, whose 'valid' canvas and tiles are smaller (an estimate's zero border is common:
    the support is chosen before the blur's size is known)."""
    return center_crop_or_pad(kernel, 2 * kernel_radius(kernel) + 1)


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


def gradient_otf2(shape: tuple[int, int], dtype=torch.float64, device=None) -> torch.Tensor:
    """|F∂x|² + |F∂y|² on the rfft2 grid of an H×W image: the Fourier symbol of ∇ᵀ∇ (finite differences)."""
    dx = torch.zeros(shape, dtype=dtype, device=device)
    dx[0, 0], dx[0, -1] = 1, -1
    dy = torch.zeros_like(dx)
    dy[0, 0], dy[-1, 0] = 1, -1
    return torch.fft.rfft2(dx).abs() ** 2 + torch.fft.rfft2(dy).abs() ** 2


def wiener_deconv(y: torch.Tensor, kernel: torch.Tensor, sigma: float, lam_scale: float = 100.0,
                  lam_min: float = 1e-4) -> torch.Tensor:
    """Circular Wiener deconvolution of (…, H, W) ``y`` with a gradient (Tikhonov) prior:
    x = argmin ‖k ⊛ x − y‖² + λ‖∇x‖² = F⁻¹[ K̄ Y / (|K|² + λ(|Dx|² + |Dy|²)) ], λ = max(lam_scale·σ², lam_min)."""
    H, W = y.shape[-2:]
    K = kernel_to_otf(kernel.to(y.dtype), (H, W))
    lam = max(lam_scale * sigma ** 2, lam_min)
    X = K.conj() * torch.fft.rfft2(y) / (K.abs() ** 2 + lam * gradient_otf2((H, W), y.dtype, y.device))
    return torch.fft.irfft2(X, s=(H, W))
