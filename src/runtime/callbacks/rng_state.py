"""Random states saved in every checkpoint, so that a resumed run draws what an uninterrupted one would."""

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback


class RNGState(Callback):
    """Saves the python, numpy and torch random states in every checkpoint and restores them on
    resume, so the epochs after a resume shuffle and sample exactly as an uninterrupted run would."""

    def state_dict(self) -> dict[str, Any]:
        # Tensors and plain tuples only, so checkpoints still load with torch's weights_only=True.
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)
        state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(state_dict["python"])
        kind, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
