"""Writes workflows/wanvideo_InfiniteTalk_native_exact.json: an InfiniteTalk (image + speech -> talking
video) workflow for ComfyUI-WanVideoWrapper that decodes with this pack. The WANVAE goes through
"WanVideo VAE: use native exact decode", so the sampler's own per-window decodes are native too, and
the final decode is the exact WanVideoNativeDecode with tiling on (tiles set memory, not the picture).

Nodes are declared with their input and output sockets in order; links are declared by socket name,
and slots, link ids and both ends of every link are filled in from them, so they stay consistent.

    python tools/make_example_workflow.py
"""
import json
import os

OPT = True  # optional socket

# id, type, (x, y), (w, h), inputs [(name, type[, optional])], outputs [(name, type)], widgets_values
NODES = [
    (1, "WanVideoVAELoader", (0, 0), (330, 82), [("compile_args", "WANCOMPILEARGS", OPT)], [("vae", "WANVAE")],
     ["Wan2_1_VAE_bf16.safetensors", "bf16"]),
    (2, "WanVideoNativeVAEPatch", (360, 0), (300, 30), [("vae", "WANVAE")], [("vae", "WANVAE")], []),
    (3, "MultiTalkModelLoader", (0, 130), (420, 60), [], [("model", "MULTITALKMODEL")],
     ["Wan2_1-InfiniteTalk_Single_fp16.safetensors"]),
    (4, "WanVideoLoraSelect", (0, 230), (420, 130), [("prev_lora", "WANVIDLORA", OPT), ("blocks", "SELECTEDBLOCKS", OPT)],
     [("lora", "WANVIDLORA")], ["lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors", 1.0, False, False]),
    (5, "WanVideoBlockSwap", (0, 400), (300, 200), [], [("block_swap_args", "BLOCKSWAPARGS")],
     [20, False, False, True, 0, 1, False]),
    (6, "WanVideoModelLoader", (450, 130), (480, 300),
     [("compile_args", "WANCOMPILEARGS", OPT), ("block_swap_args", "BLOCKSWAPARGS", OPT), ("lora", "WANVIDLORA", OPT),
      ("vram_management_args", "VRAM_MANAGEMENTARGS", OPT), ("vace_model", "VACEPATH", OPT),
      ("fantasytalking_model", "FANTASYTALKINGMODEL", OPT), ("multitalk_model", "MULTITALKMODEL", OPT),
      ("fantasyportrait_model", "FANTASYPORTRAITMODEL", OPT), ("extra_model", "VACEPATH", OPT)],
     [("model", "WANVIDEOMODEL")],
     ["wan2.1_i2v_480p_14B_fp8_e4m3fn.safetensors", "bf16", "fp8_e4m3fn", "offload_device", "sdpa"]),
    (7, "CLIPVisionLoader", (0, 650), (300, 60), [], [("CLIP_VISION", "CLIP_VISION")], ["clip_vision_h.safetensors"]),
    (8, "LoadImage", (0, 750), (300, 320), [], [("IMAGE", "IMAGE"), ("MASK", "MASK")], ["portrait.png", "image"]),
    (9, "ImageScale", (330, 750), (300, 130), [("image", "IMAGE")], [("IMAGE", "IMAGE")], ["lanczos", 832, 480, "center"]),
    (10, "WanVideoClipVisionEncode", (660, 650), (300, 260),
     [("clip_vision", "CLIP_VISION"), ("image_1", "IMAGE"), ("image_2", "IMAGE", OPT), ("negative_image", "IMAGE", OPT)],
     [("image_embeds", "WANVIDIMAGE_CLIPEMBEDS")], [1.0, 1.0, "center", "average", True, 0, 0.5]),
    (11, "LoadAudio", (0, 1110), (400, 140), [], [("AUDIO", "AUDIO")], ["speech.wav", None, None]),
    (12, "Wav2VecModelLoader", (0, 1290), (360, 110), [], [("wav2vec_model", "WAV2VECMODEL")],
     ["wav2vec2-chinese-base_fp16.safetensors", "fp16", "main_device"]),
    (13, "MultiTalkWav2VecEmbeds", (450, 1110), (300, 280),
     [("wav2vec_model", "WAV2VECMODEL"), ("audio_1", "AUDIO"), ("audio_2", "AUDIO", OPT), ("audio_3", "AUDIO", OPT),
      ("audio_4", "AUDIO", OPT), ("ref_target_masks", "MASK", OPT)],
     [("multitalk_embeds", "MULTITALK_EMBEDS"), ("audio", "AUDIO"), ("num_frames", "INT")],
     [True, 161, 25, 1.0, 1.0, "para"]),
    (14, "WanVideoImageToVideoMultiTalk", (1000, 650), (350, 270),
     [("vae", "WANVAE"), ("start_image", "IMAGE", OPT), ("clip_embeds", "WANVIDIMAGE_CLIPEMBEDS", OPT)],
     [("image_embeds", "WANVIDIMAGE_EMBEDS")], [832, 480, 81, 9, False, "disabled", False, "infinitetalk"]),
    (15, "WanVideoTextEncodeCached", (450, 1450), (470, 390), [("extender_args", "WANVIDEOPROMPTEXTENDER_ARGS", OPT)],
     [("text_embeds", "WANVIDEOTEXTEMBEDS"), ("negative_text_embeds", "WANVIDEOTEXTEMBEDS"), ("positive_prompt", "STRING")],
     ["umt5-xxl-enc-bf16.safetensors", "bf16", "a woman talks to the camera, natural head motion, soft light",
      "blurry, static, low quality, distorted face, extra fingers, subtitles, watermark", "disabled", False, "gpu"]),
    (16, "WanVideoSampler", (1400, 130), (320, 1000),
     [("model", "WANVIDEOMODEL"), ("image_embeds", "WANVIDIMAGE_EMBEDS"), ("text_embeds", "WANVIDEOTEXTEMBEDS", OPT),
      ("samples", "LATENT", OPT), ("feta_args", "FETAARGS", OPT), ("context_options", "WANVIDCONTEXT", OPT),
      ("cache_args", "CACHEARGS", OPT), ("flowedit_args", "FLOWEDITARGS", OPT), ("slg_args", "SLGARGS", OPT),
      ("loop_args", "LOOPARGS", OPT), ("experimental_args", "EXPERIMENTALARGS", OPT), ("sigmas", "SIGMAS", OPT),
      ("unianimate_poses", "UNIANIMATE_POSE", OPT), ("fantasytalking_embeds", "FANTASYTALKING_EMBEDS", OPT),
      ("uni3c_embeds", "UNI3C_EMBEDS", OPT), ("multitalk_embeds", "MULTITALK_EMBEDS", OPT),
      ("freeinit_args", "FREEINITARGS", OPT)],
     [("samples", "LATENT"), ("denoised_samples", "LATENT")],
     [6, 1.0, 11.0, 42, "fixed", True, "dpm++_sde", 0, 1.0, False, "comfy", 0, -1, False]),
    (17, "WanVideoNativeDecode", (1760, 130), (320, 200), [("vae", "WANVAE"), ("samples", "LATENT")],
     [("images", "IMAGE")], [True, 272, 272, 144, 128, "default"]),
    (18, "VHS_VideoCombine", (2120, 130), (420, 600),
     [("images", "IMAGE"), ("audio", "AUDIO", OPT), ("meta_batch", "VHS_BatchManager", OPT), ("vae", "VAE", OPT)],
     [("Filenames", "VHS_FILENAMES")],
     {"frame_rate": 25, "loop_count": 0, "filename_prefix": "InfiniteTalk_native_exact", "format": "video/h264-mp4",
      "pix_fmt": "yuv420p", "crf": 19, "save_metadata": True, "trim_to_audio": False, "pingpong": False,
      "save_output": True}),
    (19, "MarkdownNote", (360, -260), (560, 220), [], [],
     ["**Native exact decode.** `WanVideo VAE: use native exact decode` wraps the WANVAE so every decode of it "
      "runs the native decoder, including the ones the InfiniteTalk sampler makes for each window. "
      "`WanVideo Decode (native, exact)` takes WanVideoDecode's inputs; with tiling on, the tile size sets "
      "memory and speed only: the frames equal an untiled decode, with no seams.\n\n"
      "Install: clone wanvideo_vae into `ComfyUI/custom_nodes` and run `python -m pip install .` in it."]),
]

# (source id, output name, target id, input name)
LINKS = [
    (1, "vae", 2, "vae"), (2, "vae", 14, "vae"), (2, "vae", 17, "vae"),
    (3, "model", 6, "multitalk_model"), (4, "lora", 6, "lora"), (5, "block_swap_args", 6, "block_swap_args"),
    (7, "CLIP_VISION", 10, "clip_vision"), (8, "IMAGE", 9, "image"), (9, "IMAGE", 10, "image_1"),
    (9, "IMAGE", 14, "start_image"), (10, "image_embeds", 14, "clip_embeds"),
    (12, "wav2vec_model", 13, "wav2vec_model"), (11, "AUDIO", 13, "audio_1"),
    (6, "model", 16, "model"), (14, "image_embeds", 16, "image_embeds"), (15, "text_embeds", 16, "text_embeds"),
    (13, "multitalk_embeds", 16, "multitalk_embeds"), (16, "samples", 17, "samples"),
    (17, "images", 18, "images"), (13, "audio", 18, "audio"),
]

PACKS = {"WanVideoNativeDecode": "wanvideo-vae", "WanVideoNativeVAEPatch": "wanvideo-vae",
         "VHS_VideoCombine": "comfyui-videohelpersuite", "ImageScale": "comfy-core", "LoadImage": "comfy-core",
         "LoadAudio": "comfy-core", "CLIPVisionLoader": "comfy-core", "MarkdownNote": "comfy-core"}


def build():
    nodes = {}
    for order, (nid, ntype, pos, size, inputs, outputs, widgets) in enumerate(NODES):
        nodes[nid] = {
            "id": nid, "type": ntype, "pos": list(pos), "size": list(size), "flags": {}, "order": order, "mode": 0,
            "inputs": [{"name": i[0], "type": i[1], "link": None, **({"shape": 7} if len(i) > 2 else {})}
                       for i in inputs],
            "outputs": [{"name": o[0], "type": o[1], "links": []} for o in outputs],
            "properties": {"cnr_id": PACKS.get(ntype, "ComfyUI-WanVideoWrapper"), "Node name for S&R": ntype},
            "widgets_values": widgets,
        }
    links = []
    for link_id, (src, out_name, dst, in_name) in enumerate(LINKS, start=1):
        outs, ins = nodes[src]["outputs"], nodes[dst]["inputs"]
        s = next(k for k, o in enumerate(outs) if o["name"] == out_name)
        d = next(k for k, i in enumerate(ins) if i["name"] == in_name)
        assert outs[s]["type"] == ins[d]["type"], (src, out_name, dst, in_name)
        outs[s]["links"].append(link_id)
        outs[s]["slot_index"] = s
        ins[d]["link"] = link_id
        links.append([link_id, src, s, dst, d, outs[s]["type"]])
    return {
        "id": "3f0b6f7e-2c4d-4a7b-9e52-6d1a8c0e5b21",
        "revision": 0, "last_node_id": max(nodes), "last_link_id": len(links),
        "nodes": list(nodes.values()), "links": links, "groups": [], "config": {},
        "extra": {"ds": {"scale": 0.6, "offset": [100, 400]}}, "version": 0.4,
    }


def main():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "workflows",
                        "wanvideo_InfiniteTalk_native_exact.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(build(), f, indent=1)
        f.write("\n")
    print(os.path.normpath(path))


if __name__ == "__main__":
    main()
