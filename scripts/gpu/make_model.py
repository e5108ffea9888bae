"""Writes a randomly initialised ViT-B/32 CLIP in Hugging Face layout, with the real CLIP BPE vocabulary
(from open_clip's bpe_simple_vocab_16e6.txt.gz), for the end-to-end embedding check."""
import gzip, json, os, sys
import torch
from transformers import CLIPConfig, CLIPModel

out, bpe = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
lines = gzip.open(bpe).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
merges = [tuple(l.split()) for l in lines]
bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
cs, n = bs[:], 0
for b in range(256):
    if b not in bs:
        bs.append(b); cs.append(256 + n); n += 1
chars = [chr(c) for c in cs]
vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
json.dump({t: i for i, t in enumerate(vocab)}, open(out + "/vocab.json", "w"))
open(out + "/merges.txt", "w").write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
torch.manual_seed(0)
CLIPModel(CLIPConfig()).save_pretrained(out, safe_serialization=True)
