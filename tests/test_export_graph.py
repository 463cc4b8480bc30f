"""The export's graph variants: the phase-space output stage (models/phase.py) computes what
the trained generator computes and gives its parameters back; the fp16 copy stays close."""

from __future__ import annotations

import torch

from models.config import ModelConfig
from models.networks import BiGAN
from models.phase import PhaseOutput, for_export, restore
from models.scoring import AnomalyScorer


def _scorer() -> AnomalyScorer:
    torch.manual_seed(0)
    bigan = BiGAN(ModelConfig(channels=4, latent_channels=3, depth=2, disc_channels=4))
    for p in bigan.parameters():  # trained-looking, not initial, weights
        p.data.normal_(0, 0.3)
    return AnomalyScorer(bigan, r_scale=0.1, d_scale=0.2).eval()


def test_phase_graph_matches_the_trained_one():
    scorer = _scorer()
    fast = for_export(scorer)
    assert isinstance(fast.bigan.generator.net[-1], PhaseOutput)
    for h, w in ((37, 50), (64, 64), (24, 30)):
        x = torch.rand(2, 1, h, w)
        with torch.no_grad():
            ref = scorer(x, torch.tensor(0.3), torch.tensor(2.0))
            out = fast(x, torch.tensor(0.3), torch.tensor(2.0))
        for a, b in zip(ref, out, strict=True):
            assert a.shape == b.shape
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    # the whole generator differs only on the ring the scorer crops away
    z = torch.randn(1, 3, 6, 7)
    with torch.no_grad():
        g, f = scorer.bigan.generator(z), fast.bigan.generator(z)
    torch.testing.assert_close(f[..., 1:-1, 1:-1], g[..., 1:-1, 1:-1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(f, g)


def test_restore_gives_the_original_parameters_back():
    scorer = _scorer()
    state = for_export(scorer).state_dict()
    prefix = next(k for k in state if k.endswith("up_weight")).removesuffix("up_weight")
    back = restore(dict(state), prefix)
    original = scorer.state_dict()
    assert sorted(back) == sorted(original)
    for k, v in original.items():
        assert torch.equal(back[k], v), k


def test_fp16_export_keeps_parity_with_fp32(tiny_model, tmp_path):
    import onnx

    from training.export import FP16_ATOL, to_fp16

    out = tmp_path / "half.onnx"
    gap = to_fp16(tiny_model, out)  # raises ParityError beyond rtol/atol FP16_RTOL/FP16_ATOL
    assert gap > FP16_ATOL / 1000  # fp16 really ran
    model = onnx.load(out)
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    assert {i.type.tensor_type.elem_type for i in model.graph.input} == {onnx.TensorProto.FLOAT}


def test_a_term_without_weight_is_left_out_of_the_graph(tiny_run, tiny_model, tmp_path):
    """The hand-made terms a calibration gives no weight are not computed (their state
    leaves the file), and the score map is what the full graph's terms mix to."""
    import numpy as np
    import onnx

    from models.detector import Detector
    from training.ablation import read_meta
    from training.export import scorer_from_artifact, with_meta
    from training.refit import scorer_from_run

    scorer, _ = scorer_from_run(tiny_run)
    meta = read_meta(tiny_model)
    full, pruned = tmp_path / "full.onnx", tmp_path / "pruned.onnx"
    with_meta(scorer, meta.with_(term_weights=[0.25] * 4), full)  # raises ParityError if
    with_meta(scorer, meta.with_(term_weights=[0.5, 0.0, 0.0, 0.5]), pruned)  # ort != torch
    left_out = {"features.weight", "stats.weight"}
    assert not left_out & {i.name for i in onnx.load(pruned).graph.initializer}
    assert left_out <= {i.name for i in onnx.load(full).graph.initializer}
    assert scorer_from_artifact(pruned)[0].skipped == {"f", "t"}  # it loads back
    image = np.random.default_rng(0).random((1, 1, 96, 128), dtype=np.float32)
    a = Detector(full, providers=("cpu",)).run(image, 0.3, 0.0)
    b = Detector(pruned, providers=("cpu",)).run(image, 0.3, 0.0)
    r = np.abs(a["reconstruction"] - image) / meta.r_scale
    expected = 0.5 * (0.3 * a["d_map"] + 0.7 * r) + 0.5 * a["b_map"]  # sigma 0: no blur
    np.testing.assert_allclose(b["score_map"], expected, rtol=1e-4, atol=1e-4)
    assert not b["f_map"].any() and not b["t_map"].any() and a["t_map"].any()


def test_views_average_the_networks_maps_over_the_flips(tiny_run, tiny_model, tmp_path):
    """A graph of 4 views gives D's map and the restoration as the means of the one-view
    graph's over the image's flips, each flipped back, and r as that restoration's residual;
    the hand-made terms are the one view's. The views load back from the file."""
    import numpy as np

    from models.detector import Detector
    from training.ablation import read_meta
    from training.export import scorer_from_artifact, with_meta
    from training.refit import scorer_from_run

    scorer, _ = scorer_from_run(tiny_run)
    meta = read_meta(tiny_model).with_(term_weights=[0.5, 0.0, 0.5, 0.0])
    one, four = tmp_path / "one.onnx", tmp_path / "four.onnx"
    with_meta(scorer, meta, one)  # raises ParityError if ort != torch
    with_meta(scorer, meta.with_(views=4), four)
    assert scorer_from_artifact(four)[0].views == 4
    image = np.random.default_rng(1).random((2, 1, 72, 104), dtype=np.float32)
    flips = [(), (-1,), (-2,), (-2, -1)]
    single = Detector(one, providers=("cpu",))
    seen = [single.run(np.flip(image, f) if f else image, 0.3, 0.0) for f in flips]
    back = {
        k: np.mean(
            [np.flip(o[k], f) if f else o[k] for o, f in zip(seen, flips, strict=True)], axis=0
        )
        for k in ("d_map", "reconstruction")
    }
    got = Detector(four, providers=("cpu",)).run(image, 0.3, 0.0)
    for k, v in back.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-4, atol=1e-5)
    assert not np.allclose(got["d_map"], seen[0]["d_map"], atol=1e-3)  # the views differ
    np.testing.assert_allclose(got["t_map"], seen[0]["t_map"], rtol=1e-4, atol=1e-5)
    r = np.abs(got["reconstruction"] - image) / meta.r_scale
    expected = 0.5 * (0.3 * got["d_map"] + 0.7 * r) + 0.5 * got["t_map"]  # sigma 0: no blur
    np.testing.assert_allclose(got["score_map"], expected, rtol=1e-4, atol=1e-4)
    # the networks see each image 4 times: a pixel budget holds a quarter of the images
    budget = {"providers": ("cpu",), "batch_size": 8, "batch_pixels": 4 * 72 * 104}
    assert Detector(one, **budget).per_call((72, 104)) == 4
    assert Detector(four, **budget).per_call((72, 104)) == 1
