"""PyTorch eager reference for the image-tower throughput check: a randomly initialised transformers CLIP
vision tower (+ projection), bf16, on CUDA, same batch and iteration counts as `flyt embed-bench`."""
import argparse, json, time
import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

p = argparse.ArgumentParser()
p.add_argument("--arch", choices=["b32", "l14"], default="b32")
p.add_argument("--batch", type=int, default=256)
p.add_argument("--iters", type=int, default=10)
a = p.parse_args()
cfg = CLIPVisionConfig() if a.arch == "b32" else CLIPVisionConfig(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14,
    projection_dim=768)
if a.arch == "b32":
    cfg.projection_dim = 512
m = CLIPVisionModelWithProjection(cfg).cuda().to(torch.bfloat16).eval()
x = torch.randn(a.batch, 3, 224, 224, device="cuda", dtype=torch.bfloat16)
with torch.no_grad():
    for _ in range(3):
        m(pixel_values=x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(a.iters):
        m(pixel_values=x)
    torch.cuda.synchronize()
    s = time.perf_counter() - t
print(json.dumps({"arch": a.arch, "batch": a.batch, "img_per_s": a.batch * a.iters / s, "impl": "torch eager",
                  "attn": m.config._attn_implementation, "torch": torch.__version__}))
