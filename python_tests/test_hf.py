"""--model hf:PATH: Hugging Face transformers vision models saved locally (tiny configs)."""

import pytest
import torch

pytest.importorskip("PIL.Image")
transformers = pytest.importorskip("transformers")

import dse_ext  # noqa: E402
from dse_ext import cli  # noqa: E402
from dse_ext.features import FeatureExtractor  # noqa: E402
from dse_ext.hf import load_hf_model  # noqa: E402
from dse_ext.results import read_results  # noqa: E402

from scoring_data import image_dir  # noqa: E402,F401

TINY = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=32,
            patch_size=8)
MODELS = {  # name -> (config, model class, special tokens)
    "dinov2": ("Dinov2Config", "Dinov2Model", {}, 1),
    "dinov2_registers": ("Dinov2WithRegistersConfig", "Dinov2WithRegistersModel", {"num_register_tokens": 4}, 5),
    "vit_mae": ("ViTMAEConfig", "ViTMAEModel", {"mask_ratio": 0.75}, 1),
    "ijepa": ("IJepaConfig", "IJepaModel", {}, 0),
}


def _save(tmp_path, name):
    config_name, model_name, extra, _ = MODELS[name]
    config = getattr(transformers, config_name)(**TINY, **extra)
    torch.manual_seed(0)  # noqa: the test's own weights
    model = getattr(transformers, model_name)(config)
    folder = tmp_path / name
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("name", list(MODELS))
def test_patch_tokens_without_special_tokens_and_the_global_rng_untouched(tmp_path, gen, name):
    folder = _save(tmp_path, name)
    model = load_hf_model(folder)
    assert model.num_prefix_tokens == MODELS[name][3] and model.dse_input_size == 32
    images = torch.randn(3, 3, 32, 32, generator=gen)
    state = torch.random.get_rng_state()
    with torch.no_grad():
        tokens = FeatureExtractor(model)(images)
        again = FeatureExtractor(model)(images)
    assert torch.equal(torch.random.get_rng_state(), state)  # ViT-MAE's shuffle is not drawn from it
    assert tokens.shape == (3, 16, 16) and torch.equal(tokens, again)
    hidden = model.forward_features(images)
    assert torch.equal(tokens, hidden[:, MODELS[name][3]:])


def test_score_hf_models_from_the_command_line(tmp_path, image_dir):
    folder = _save(tmp_path, "dinov2")
    out = tmp_path / "r.csv"
    argv = ["score", "--model", f"hf:{folder}", "--checkpoints", str(folder / "model.safetensors"), "--images",
            str(image_dir), "--out", str(out), "--num-images", "8", "--dse-batch", "8", "--global-clusters", "8",
            "--no-progress"]
    assert cli.main(argv) == 0
    (row,) = read_results(out)
    assert row["settings"]["image_size"] == 32 and isinstance(row["dse"], float)
    # The same number from the model and the images directly.
    from dse_ext.images import load_image_subset, normalize

    model = load_hf_model(folder)
    pixels, _ = load_image_subset(image_dir, 8, seed=0, size=32, progress=False)
    with torch.no_grad():
        tokens = FeatureExtractor(model)(normalize(pixels))
    assert row["dse"] == pytest.approx(dse_ext.dse(tokens, global_clusters=8).dse.item(), rel=1e-5)
    assert cli.main([*argv[:2], f"hf:{tmp_path / 'nothing'}", *argv[3:]]) == 2
    assert cli.main([*argv, "--model-kwargs", '{"no_such_setting": 1}', "--rescore"]) == 2
    assert cli.main([*argv, "--strip-prefix", "dinov2.", "--rescore"]) == 2

    # A later checkpoint (another save_pretrained directory): its weights are the ones scored.
    later = transformers.Dinov2Model.from_pretrained(folder)
    with torch.no_grad():
        for p in later.parameters():
            p.mul_(1.5)
    later.save_pretrained(tmp_path / "checkpoint-200")
    argv[4] = str(tmp_path / "checkpoint-200" / "model.safetensors")
    assert cli.main(argv) == 0
    rows = {r["checkpoint"]: r for r in read_results(out)}
    model.dse_load_checkpoint(argv[4])
    assert torch.equal(model.embeddings.patch_embeddings.projection.weight,
                       later.embeddings.patch_embeddings.projection.weight)
    with torch.no_grad():
        tokens = FeatureExtractor(model)(normalize(pixels))
    assert rows[argv[4]]["dse"] == pytest.approx(dse_ext.dse(tokens, global_clusters=8).dse.item(), rel=1e-5)
