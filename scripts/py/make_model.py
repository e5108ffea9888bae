"""Writes a randomly initialised ViT-B/32 CLIP in Hugging Face layout with the real CLIP BPE vocabulary, for the
end-to-end embedding check.   python make_model.py OUT_DIR BPE_GZ"""
import os
import sys

import torch
from transformers import CLIPConfig, CLIPModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clip_vocab import write  # noqa: E402

out, bpe = sys.argv[1], sys.argv[2]
write(bpe, out)
torch.manual_seed(0)
CLIPModel(CLIPConfig()).save_pretrained(out, safe_serialization=True)
