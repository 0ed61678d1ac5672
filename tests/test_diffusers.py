"""diffusers' Wan 2.1 VAE (AutoencoderKLWan): its weight names read as the checkpoint's, and its decode made
native in diffusers' own Wan pipelines, against diffusers' own decode."""
import numpy as np
import pytest

import wanvideo_vae as wv
from helpers import write_safetensors
from wanvideo_vae.weights import decoder_key, load_weights, normalize_keys

TOL = 1e-4  # float32 frames, ours against diffusers' own decode of the same weights
BF16_OUT = 2.0 ** -8  # half a bf16 step at 1: ours in float32, rounded to bf16 at the end

# diffusers' name -> the checkpoint's, as diffusers' conversion script (scripts/convert_wan_to_diffusers.py)
# renames the Wan 2.1 checkpoint; None: an encoder-side weight
NAMES = [
    ("post_quant_conv.weight", "conv2.weight"),
    ("decoder.conv_in.bias", "decoder.conv1.bias"),
    ("model.decoder.conv_in.weight", "decoder.conv1.weight"),
    ("decoder.mid_block.resnets.0.norm1.gamma", "decoder.middle.0.residual.0.gamma"),
    ("decoder.mid_block.attentions.0.to_qkv.weight", "decoder.middle.1.to_qkv.weight"),
    ("decoder.mid_block.attentions.0.norm.gamma", "decoder.middle.1.norm.gamma"),
    ("decoder.mid_block.resnets.1.conv2.weight", "decoder.middle.2.residual.6.weight"),
    ("decoder.up_blocks.0.resnets.2.conv1.bias", "decoder.upsamples.2.residual.2.bias"),
    ("decoder.up_blocks.0.upsamplers.0.time_conv.weight", "decoder.upsamples.3.time_conv.weight"),
    ("decoder.up_blocks.1.resnets.0.conv_shortcut.weight", "decoder.upsamples.4.shortcut.weight"),
    ("decoder.up_blocks.1.resnets.1.norm2.gamma", "decoder.upsamples.5.residual.3.gamma"),
    ("decoder.up_blocks.2.upsamplers.0.resample.1.bias", "decoder.upsamples.11.resample.1.bias"),
    ("decoder.up_blocks.3.resnets.2.conv2.bias", "decoder.upsamples.14.residual.6.bias"),
    ("decoder.norm_out.gamma", "decoder.head.0.gamma"),
    ("decoder.conv_out.weight", "decoder.head.2.weight"),
    ("quant_conv.weight", None),
    ("encoder.conv_in.weight", None),
    ("encoder.mid_block.resnets.0.norm1.gamma", None),
    # no Wan 2.1 name: left as given, for the core to name as unexpected
    ("decoder.up_blocks.3.upsamplers.0.resample.1.weight", "decoder.up_blocks.3.upsamplers.0.resample.1.weight"),
    ("decoder.up_blocks.0.resnets.3.conv1.weight", "decoder.up_blocks.0.resnets.3.conv1.weight"),
]


@pytest.mark.parametrize("name,checkpoint", NAMES)
def test_diffusers_names_are_read_as_the_checkpoints(name, checkpoint):
    assert decoder_key(name) == checkpoint


@pytest.mark.parametrize("extra,says", [
    ({"decoder.mid_block.resnets.0.conv_shortcut.weight": np.zeros(3, np.float32)},
     r"^unexpected weight 'decoder\.middle\.0\.shortcut\.weight' \(not a Wan 2\.1 decoder key for dim=8, z_dim=4\) "
     r"\(given as 'decoder\.mid_block\.resnets\.0\.conv_shortcut\.weight'\)$"),
    ({"decoder.conv_out.bias": np.zeros(4, np.float32)},
     r"^weight 'decoder\.head\.2\.bias' has shape \(4\); expected \(3\) \(given as 'decoder\.conv_out\.bias'\)$"),
    ({"model.decoder.head.2.bias": np.zeros(3, np.int64)},
     r"^weight 'decoder\.head\.2\.bias': unsupported dtype int64; .* \(given as 'model\.decoder\.head\.2\.bias'\)$"),
])
def test_a_weights_error_names_it_as_given_too(extra, says):
    """A weight the core names by its checkpoint name, given under another (diffusers', 'model.'): both named."""
    from helpers import random_weights
    weights = random_weights(8, 4)
    for key in extra:
        weights.pop(decoder_key(key), None)
    with pytest.raises(wv.WanVAEError, match=says):
        wv.Decoder(dict(weights, **extra))


def _diffusers():
    return pytest.importorskip("diffusers", reason="diffusers is not installed")


def _small_vae(seed=0, **config):
    """diffusers' AutoencoderKLWan, 8 channels wide (96 in Wan 2.1), every weight moved off its initial value
    (RMS gains of 1 and zero biases would hide a gain or a bias read from the wrong place)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    vae = _diffusers().AutoencoderKLWan(base_dim=8, **config).eval().requires_grad_(False)
    for p in vae.parameters():
        p.add_(torch.randn_like(p) * 0.05)
    return vae


def test_a_diffusers_vae_has_every_decoder_weight_under_its_checkpoint_name():
    _diffusers()
    from diffusers import AutoencoderKLWan
    ours = normalize_keys(AutoencoderKLWan().state_dict())  # full size: 96 channels
    expected = dict(wv._C.expected_keys(96, 16))
    assert ours.keys() == expected.keys()
    assert all(tuple(ours[k].shape) == tuple(expected[k]) for k in expected)


def test_a_decoder_of_diffusers_weights_decodes_as_diffusers_does():
    """Decoder(vae.state_dict()) on un-normalized latents (mean 0, std 1: diffusers' decode takes them so),
    untiled and in tiles, against diffusers' own decode, which clamps."""
    torch = pytest.importorskip("torch")
    vae = _small_vae()
    z = torch.randn(1, 16, 3, 6, 8)
    theirs = vae.decode(z).sample[0].permute(1, 2, 3, 0).numpy()
    assert np.abs(theirs).max() == 1.0  # the clamp is reached
    dec = wv.Decoder(vae.state_dict(), mean=np.zeros(16, np.float32), std=np.ones(16, np.float32))
    for tiles in (dict(enable_vae_tiling=False), dict(tile_x=32, tile_y=32, tile_stride_x=16, tile_stride_y=16)):
        ours = np.clip(dec.decode(z[0], raw=True, **tiles), -1, 1)
        assert ours.shape == theirs.shape and np.abs(ours - theirs).max() <= TOL
    assert dec.last_stats["n_tiles"] > 1


def test_a_diffusers_safetensors_file_loads_under_the_checkpoints_names(tmp_path):
    vae = _small_vae()
    state = {k: v.numpy() for k, v in vae.state_dict().items()}
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    write_safetensors(str(path), state)
    loaded = load_weights(str(path))
    assert loaded.keys() == normalize_keys(state).keys() and "decoder.upsamples.4.shortcut.weight" in loaded
    np.testing.assert_array_equal(loaded["conv2.weight"], state["post_quant_conv.weight"])


def test_a_diffusers_model_folder_loads_from_its_weights_file(tmp_path):
    """load_weights (and the CLI's --vae) of a folder: a diffusers VAE's (save_pretrained's), or a pipeline's with
    the VAE in its vae/; a folder of neither is named as such."""
    vae = _small_vae()
    vae.save_pretrained(str(tmp_path / "pipeline" / "vae"))
    expected = normalize_keys({k: v.numpy() for k, v in vae.state_dict().items()})
    for folder in (tmp_path / "pipeline" / "vae", tmp_path / "pipeline"):
        loaded = load_weights(str(folder))
        assert loaded.keys() == expected.keys()
        np.testing.assert_array_equal(loaded["decoder.head.2.weight"], expected["decoder.head.2.weight"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(wv.WanVAEError, match=r"empty: is a folder, not a checkpoint file \(nor a diffusers model "
                                             r"folder: no diffusion_pytorch_model\.safetensors or "
                                             r"diffusion_pytorch_model\.bin of a VAE in it or in its vae/, nor a Wan "
                                             r"repository's folder: no Wan2\.1_VAE\.pth\)$"):
        load_weights(str(tmp_path / "empty"))


def test_a_wan_repository_folder_loads_its_vae_not_its_transformer(tmp_path):
    """A Wan repository's folder (Wan-AI/Wan2.1-T2V-1.3B): the transformer as diffusion_pytorch_model.safetensors,
    its config.json naming its class (WanModel), beside the VAE as Wan2.1_VAE.pth. The VAE is loaded; the
    transformer's file, passed over, is never taken for a VAE's (it was: 'no decoder weights found' in it)."""
    torch = pytest.importorskip("torch")
    from helpers import random_weights
    repo = tmp_path / "Wan2.1-T2V-1.3B"
    repo.mkdir()
    (repo / "config.json").write_text('{"_class_name": "WanModel", "dim": 1536}', encoding="utf-8")
    write_safetensors(str(repo / "diffusion_pytorch_model.safetensors"),
                      {"blocks.0.ffn.0.weight": np.zeros(2, np.float32)})
    with pytest.raises(wv.WanVAEError, match=r"Wan2\.1-T2V-1\.3B: is a folder, not a checkpoint file .* no "
                                             r"Wan2\.1_VAE\.pth\)$"):
        load_weights(str(repo))
    weights = random_weights(8, 4)
    torch.save({k: torch.from_numpy(v) for k, v in weights.items()}, str(repo / "Wan2.1_VAE.pth"))
    loaded = load_weights(str(repo))
    assert loaded.keys() == weights.keys()
    np.testing.assert_array_equal(loaded["decoder.head.2.weight"].numpy(), weights["decoder.head.2.weight"])


def _diffusers_decode(vae, z, **kw):
    """diffusers' own decode, whether or not `vae` is patched."""
    return type(vae).decode(vae, z, **kw)


def test_native_wan_vae_makes_a_diffusers_vaes_decode_native():
    """wanvideo_vae.native_wan_vae(AutoencoderKLWan): its decode(z, return_dict) native (patched in place, so it
    stays the module diffusers' pipelines move, offload and save), returning what diffusers' returns (a
    DecoderOutput, or a 1-tuple), a batch of videos [B, 3, F, H, W]; everything else, encode included, as it was."""
    torch = pytest.importorskip("torch")
    from diffusers.models.autoencoders.vae import DecoderOutput
    from wanvideo_vae import comfy_nodes
    vae = _small_vae(1)
    z = torch.randn(2, 16, 2, 5, 7)
    theirs = vae.decode(z)
    native = wv.native_wan_vae(vae)
    assert native is vae and wv.native_wan_vae(vae) is vae and "decode" in vars(vae)
    ours = vae.decode(z)
    assert vae in comfy_nodes._decoders._cache  # the native decoder ran
    assert isinstance(ours, DecoderOutput) and ours.sample.shape == theirs.sample.shape == (2, 3, 5, 40, 56)
    assert ours.sample.dtype == torch.float32 and ours.sample.device == z.device and ours.sample.is_contiguous()
    assert (ours.sample - theirs.sample).abs().max() <= TOL
    (plain,) = vae.decode(z, return_dict=False)
    assert torch.equal(plain, ours.sample)
    video = torch.rand(1, 3, 5, 40, 56) * 2 - 1
    assert torch.equal(vae.encode(video).latent_dist.mode(), _small_vae(1).encode(video).latent_dist.mode())
    for bad in (z[0], z[:0], z[:, :8]):
        with pytest.raises(ValueError, match=r"takes latents \[B, 16, T, h, w\] \(B >= 1\), got shape \[" +
                                             ", ".join(map(str, bad.shape)) + r"\]"):
            vae.decode(bad)
    del vae.decode  # diffusers' own again
    assert torch.equal(vae.decode(z).sample, theirs.sample)


# torch.compile imports torch's inductor, whose own module warns of torch.jit.script_method on import
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_a_compiled_diffusers_vae_is_patched_too():
    """torch.compile's module around the VAE (its weights named '_orig_mod.' on): recognised and patched."""
    torch = pytest.importorskip("torch")
    vae = _small_vae(4)
    compiled = torch.compile(vae)
    z = torch.randn(1, 16, 1, 3, 4)
    assert wv.native_wan_vae(compiled) is compiled and wv.native_wan_vae(compiled) is compiled
    assert (compiled.decode(z).sample - _diffusers_decode(vae, z).sample).abs().max() <= TOL


def test_the_offload_hook_runs_before_the_native_decode():
    """enable_model_cpu_offload: the VAE's hook moves the model before it (the transformer) off the GPU when the
    VAE decodes; ours runs it as diffusers' decode does, and the patched VAE is offloaded and hooked again after
    every call like the other models; its Decoder is closed after each decode, holding no device memory while
    the transformer runs. accelerate's hooks on the CPU stand in for the GPU's."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("accelerate", reason="the offload hooks are accelerate's")
    from accelerate.hooks import CpuOffload
    from wanvideo_vae import comfy_nodes
    pipe, call = _tiny_pipeline()
    pipe.vae = wv.native_wan_vae(pipe.vae)
    pipe.enable_model_cpu_offload(device="cpu")
    ran = []
    original = CpuOffload.pre_forward

    def pre_forward(hook, module, *args, **kwargs):
        ran.append(type(module).__name__)
        return original(hook, module, *args, **kwargs)

    CpuOffload.pre_forward = pre_forward
    try:
        for _ in range(2):
            ran.clear()
            pipe(generator=torch.Generator().manual_seed(1), **call)
            assert ran[-1] == "AutoencoderKLWan"  # the decode's, after the transformer's
            assert len(pipe._all_hooks) == 2  # the transformer's and the VAE's, hooked again after each call
            assert pipe.vae not in comfy_nodes._decoders._cache  # offloaded, its Decoder closed after the decode
    finally:
        CpuOffload.pre_forward = original


def test_a_diffusers_vae_whose_weights_are_kept_elsewhere_is_refused_by_name():
    """enable_sequential_cpu_offload leaves meta tensors on the module (the values live in its hooks): a weight
    without values is named (by its checkpoint name), not decoded as garbage."""
    torch = pytest.importorskip("torch")
    vae = _small_vae()
    vae.decoder.conv_out.bias = torch.nn.Parameter(torch.empty(3, device="meta"))
    with pytest.raises(ValueError, match=r"weight 'decoder\.head\.2\.bias' holds no values .* an offload keeps it "
                                         r"elsewhere \(diffusers' enable_sequential_cpu_offload\)"):
        wv.native_wan_vae(vae).decode(torch.zeros(1, 16, 1, 2, 2))


def test_a_diffusers_vae_whose_weights_are_offloaded_to_disk_is_refused(tmp_path):
    """Group offloading to disk (enable_group_offload with offload_to_disk_path) leaves placeholders on the module
    in place of its weights: refused by name when patched, and at a decode where the offload came after the
    patch, not decoded as garbage (it was: NaN frames refused as 'a damaged checkpoint', or wrong ones). In
    memory, group offloading keeps the weights' values: decoded, and the Decoder closed after each decode."""
    torch = pytest.importorskip("torch")
    from wanvideo_vae import comfy_nodes
    z = torch.randn(1, 16, 2, 5, 7)
    says = r"^this VAE's weights are offloaded to disk \(diffusers' enable_group_offload with offload_to_disk_path\)"
    cpu = torch.device("cpu")
    for patched_first in (False, True):
        vae = _small_vae(1)
        if patched_first:
            wv.native_wan_vae(vae)
        vae.enable_group_offload(onload_device=cpu, offload_device=cpu, offload_type="block_level",
                                 num_blocks_per_group=1,
                                 offload_to_disk_path=str(tmp_path / f"groups{int(patched_first)}"))
        with pytest.raises(ValueError, match=says):
            wv.native_wan_vae(vae).decode(z)
    vae = _small_vae(1)
    theirs = vae.decode(z).sample
    vae.enable_group_offload(onload_device=cpu, offload_device=cpu, offload_type="block_level",
                             num_blocks_per_group=1)
    assert (wv.native_wan_vae(vae).decode(z).sample - theirs).abs().max() <= TOL
    assert vae not in comfy_nodes._decoders._cache


def test_a_diffusers_vae_stored_in_8_bit_floats_decodes_as_diffusers_does():
    """enable_layerwise_casting (weights stored in float8, cast up as each layer runs): the weights are read as
    float32, which holds them exactly, and decoded as diffusers' own decode does (it was refused at the
    decode: 'unsupported dtype float8_e4m3fn')."""
    torch = pytest.importorskip("torch")
    z = torch.randn(1, 16, 2, 5, 7)
    for storage in (torch.float8_e4m3fn, torch.float8_e5m2):
        vae = _small_vae(1)
        vae.enable_layerwise_casting(storage_dtype=storage, compute_dtype=torch.float32)
        theirs = vae.decode(z).sample
        assert (wv.native_wan_vae(vae).decode(z).sample - theirs).abs().max() <= TOL


def test_a_patched_diffusers_vae_pickles_and_copies_with_its_native_decode(tmp_path):
    """torch.save(vae) / torch.load, and copy.deepcopy: the copy's decode is native and its own (a bound method
    pickled as a lookup of its name on the VAE, which has none: the load failed)."""
    torch = pytest.importorskip("torch")
    import copy
    vae = wv.native_wan_vae(_small_vae(1))
    z = torch.randn(1, 16, 2, 5, 7)
    expected = vae.decode(z).sample
    torch.save(vae, str(tmp_path / "vae.pt"))
    for other in (torch.load(str(tmp_path / "vae.pt"), weights_only=False), copy.deepcopy(vae)):
        assert other is not vae and other.decode.vae is other
        assert wv.native_wan_vae(other) is other
        assert torch.equal(other.decode(z).sample, expected)


def test_a_patched_diffusers_vae_and_its_decoder_go_with_its_last_reference():
    """The native decode holds its VAE weakly: the VAE, and the Decoder cached for it, are freed when the last
    reference goes, cycle collector or not (a partial stored on the VAE held it in a cycle, and kept both, and on
    a GPU their device memory, until a collection). A decode kept past its VAE says the VAE is gone."""
    torch = pytest.importorskip("torch")
    import gc
    import weakref
    from wanvideo_vae import comfy_nodes
    vae = wv.native_wan_vae(_small_vae(1))
    vae.decode(torch.randn(1, 16, 2, 5, 7))
    gone, decode, cached = weakref.ref(vae), vae.decode, len(comfy_nodes._decoders._cache)
    gc.collect()
    gc.disable()
    try:
        del vae
        assert gone() is None and len(comfy_nodes._decoders._cache) == cached - 1
    finally:
        gc.enable()
    with pytest.raises(ReferenceError, match="this native decode's AutoencoderKLWan no longer exists"):
        decode(torch.randn(1, 16, 2, 5, 7))


def test_latents_that_ask_for_a_gradient_are_refused():
    """The native decode's frames carry no gradient: latents that require one, with gradients on, are refused
    (the frames came back detached, silently); under torch.no_grad() they decode. (The Wan repository's VAE:
    test_comfy.)"""
    torch = pytest.importorskip("torch")
    vae = wv.native_wan_vae(_small_vae(1))
    z = torch.randn(1, 16, 2, 5, 7, requires_grad=True)
    with pytest.raises(ValueError, match=r"^the latents require a gradient, and this decoder computes none"):
        vae.decode(z)
    with torch.no_grad():
        assert vae.decode(z).sample.shape == (1, 3, 5, 40, 56)


def test_a_bf16_diffusers_vae_gets_bf16_frames():
    """In the VAE's dtype, as diffusers' decode returns them: ours computed in float32 from the bf16 weights
    (the CPU backend), rounded to bf16 at the end; diffusers' own bf16 decode rounds at every layer, so the
    reference is its float32 decode of the same (bf16) weights."""
    torch = pytest.importorskip("torch")
    vae = _small_vae(2).to(torch.bfloat16)
    z = torch.randn(1, 16, 2, 6, 8)
    ours = wv.native_wan_vae(vae).decode(z.to(torch.bfloat16)).sample
    assert ours.dtype == torch.bfloat16
    reference = vae.float().decode(z.to(torch.bfloat16).float()).sample
    assert (ours.float() - reference).abs().max() <= BF16_OUT + TOL


@pytest.mark.parametrize("key", ["decoder.upsamples.0.upsamples.0.residual.2.weight",
                                 "model.decoder.upsamples.2.upsamples.1.residual.0.gamma",
                                 "decoder.up_blocks.2.upsampler.resample.1.bias"])
def test_the_wan22_layout_is_told_in_either_naming(key):
    from helpers import random_weights
    with pytest.raises(wv.WanVAEError, match=r"^these weights have the Wan 2.2 VAE's layout"):
        wv.Decoder(dict(random_weights(8, 4), **{key: np.zeros(3, np.float32)}))


def test_the_wan22_vae_of_diffusers_is_refused():
    """diffusers' AutoencoderKLWan in the Wan 2.2 VAE's configuration (z_dim 48, 16x): another decoder,
    refused by name when it is wrapped, and by Decoder."""
    vae = _diffusers().AutoencoderKLWan(base_dim=16, decoder_base_dim=16, z_dim=48, is_residual=True, in_channels=12,
                                        out_channels=12, patch_size=2, scale_factor_spatial=16)
    with pytest.raises(ValueError, match=r"^this AutoencoderKLWan has the Wan 2.2 VAE's layout .* the native decoder "
                                         r"decodes the Wan 2.1 VAE only: keep its own decode"):
        wv.native_wan_vae(vae)
    with pytest.raises(wv.WanVAEError, match=r"^these weights have the Wan 2.2 VAE's layout"):
        wv.Decoder(vae.state_dict())


def _tiny_pipeline():
    """diffusers' WanPipeline with a tiny random transformer and the small VAE, and a call's arguments
    (embeddings in place of the text encoder)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers", reason="diffusers' Wan pipelines need transformers")
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    torch.manual_seed(3)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8,
                                        in_channels=16, out_channels=16, text_dim=16, freq_dim=16, ffn_dim=16,
                                        num_layers=1, rope_max_seq_len=32).eval()
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=_small_vae(3),
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.set_progress_bar_config(disable=True)
    embeds = torch.randn(1, 8, 16)
    return pipe, dict(prompt_embeds=embeds, negative_prompt_embeds=embeds, height=48, width=64, num_frames=9,
                      num_inference_steps=2, guidance_scale=1.0, output_type="np")


def test_a_diffusers_wan_pipeline_decodes_natively(tmp_path):
    """diffusers' WanPipeline with `pipe.vae = native_wan_vae(pipe.vae)`: the same frames as with its own VAE,
    decoded by ours; the pipeline saves as before (the VAE is still diffusers')."""
    torch = pytest.importorskip("torch")
    from wanvideo_vae import comfy_nodes
    pipe, call = _tiny_pipeline()
    theirs = pipe(generator=torch.Generator().manual_seed(1), **call).frames
    pipe.vae = wv.native_wan_vae(pipe.vae)
    ours = pipe(generator=torch.Generator().manual_seed(1), **call).frames
    assert pipe.vae in comfy_nodes._decoders._cache
    assert ours.shape == theirs.shape == (1, 9, 48, 64, 3)
    assert np.abs(ours - theirs).max() <= TOL
    pipe.save_pretrained(str(tmp_path / "saved"))
    from diffusers import AutoencoderKLWan
    saved = AutoencoderKLWan.from_pretrained(str(tmp_path / "saved" / "vae"))
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), pipe.vae.state_dict().values()))
