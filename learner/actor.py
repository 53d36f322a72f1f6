"""The learner as a Ray actor: trajectories arrive as Arrow record batches, weights leave as a versioned
state dict through the object store."""

from __future__ import annotations

import torch

from actors.trajectory import from_batch
from cluster.config import LearnerConfig


class LearnerActor:
    """Wraps `learner.trainer.Learner` in its own process (use with `ray.remote`)."""

    def __init__(self, model_path: str, cfg: LearnerConfig, dataset_root: str, steps_per_update: int):
        from learner.trainer import Learner

        torch.manual_seed(0)
        self.learner = Learner(model_path, cfg, dataset_root, steps_per_update=steps_per_update)

    def train_step(self, batches: list) -> dict[str, float]:
        """`batches`: Arrow record batches of trajectories, or object refs to them (read zero-copy)."""
        import ray

        batches = [ray.get(b) if isinstance(b, ray.ObjectRef) else b for b in batches]
        trajectories = [t for b in batches for t in from_batch(b)]
        return self.learner.train_step(trajectories)

    def publish(self) -> tuple[int, dict[str, torch.Tensor]]:
        """(version, full state dict in HF names)."""
        return self.learner.version, self.learner.state_dict()

    def sequence_logprobs(self, token_ids: list[int]) -> torch.Tensor:
        """Per-token log-probs of a text-only sequence under the current policy, [T]."""
        from learner.logprobs import token_logprobs

        self.learner.engine.eval()
        with torch.no_grad():
            return token_logprobs(self.learner.engine, {"input_ids": torch.tensor([token_ids])})[0]
