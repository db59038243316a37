"""Figure 4 (kernel regularisers vs noise): the pieces and a reduced end-to-end run."""
import numpy as np
import torch
from PIL import Image

from diffem.kernels.fig4 import run_fig4, update_markdown


def test_update_markdown_replaces_its_block(tmp_path):
    md = tmp_path / "k.md"
    md.write_text("# Title\n\nkept text\n")
    update_markdown(md, "first\n")
    update_markdown(md, "second\n")
    text = md.read_text()
    assert "kept text" in text and "second" in text and "first" not in text
    assert text.count("<!-- fig4:begin -->") == 1


def test_fig4_reduced_run(tmp_path):
    torch.manual_seed(0)
    # two small synthetic images instead of CBSD68: blocks + texture, so that no frequency is zero
    rng = np.random.default_rng(0)
    for i in range(2):
        base = 0.7 * np.kron(rng.random((8, 8, 3)), np.ones((8, 8, 1))) + 0.3 * rng.random((64, 64, 3))
        Image.fromarray((base * 255).astype(np.uint8)).save(tmp_path / f"im{i}.png")
    png, md = tmp_path / "fig.png", tmp_path / "k.md"
    res = run_fig4(images=tmp_path, sizes=[33], sigmas255=[0, 5, 20], n_images=1, n_kernels=1, crop=64,
                   out_png=png, out_md=md, progress=False, lambdas={33: {"l1": 1.0, "l2": 1.0, "pnp": 1.0}})
    mse = res[33]["mse"]
    assert set(mse) == {"l1", "l2", "pnp"}
    # noiseless circular blur with the true image: ℓ1/ℓ2 recover the kernel almost exactly
    assert mse["l1"][0] < 1e-8 and mse["l2"][0] < 1e-8
    # noise makes every estimate worse
    for r in mse:
        assert mse[r][2] > mse[r][0]
    assert png.read_bytes()[:4] == b"\x89PNG"
    text = md.read_text()
    assert "| 20 |" in text and "Targets:" in text
