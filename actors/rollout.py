"""Token-level rollouts: play G multi-turn zoom episodes per prompt against vLLM, all episodes of a batch in
lock-step (one `generate` call per turn), and turn each into a scored `Trajectory`.

Token ids are kept exactly as generated, never re-tokenised from text. vLLM gets prompts with one
`<|image_pad|>` per image and expands them itself; the ids it returns (`prompt_token_ids`, expanded) are
the training ids. Each turn's prompt extends the previous turn's prompt + generation, so the generated
spans keep their positions; this is checked, not assumed. Observation, template and forced-prefix tokens
get loss_mask 0; an episode that ran out of tokens (not ended by a stop string or EOS) is masked whole
(SPEC §5).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import torch
from PIL import Image

import rewards
from actors.engine import turn_grammar
from actors.prompts import get_prompt
from actors.trajectory import ImageRef, Trajectory
from actors.zoom import STOP_STRINGS, ZoomEpisode, ZoomSettings, observation_text
from data_gen.rows import PromptRow, gold_for_model
from learner.grpo import group_advantages

# A random or young policy samples vision placeholders, which would ask vLLM for images that do not exist:
# sampling never emits them (`bad_words`, a 5-token mask, O(1) per request unlike an allowed-ids list).
# Behaviour logprobs stay vLLM's raw ones over the full vocabulary, which is what the learner computes.
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def image_tokens(image: Image.Image, factor: int = 28) -> int:
    """LLM tokens of a smart-resized image: (h/14 * w/14) patches, merged 2x2 -> (h/28) * (w/28)."""
    return (image.height // factor) * (image.width // factor)


@dataclass
class _Episode:
    row: PromptRow
    env: ZoomEpisode
    group_id: str
    ids: list[int]  # what vLLM is sent: one <|image_pad|> per image
    images: list[Image.Image]
    prompt_len: int = 0  # expanded length of the first prompt
    expanded: list[int] = field(default_factory=list)  # expanded prompt + generation so far
    spans: list[tuple[int, int]] = field(default_factory=list)  # (start, length) of generated tokens
    logprobs: list[float] = field(default_factory=list)  # of the generated tokens, in order
    prefix: str = ""  # forced-answer prefix the next turn starts with
    finish: str = ""  # vLLM finish reason of the last turn
    truncated: bool = False


class Rollout:
    """Plays episodes for one engine. `tokenizer` is the model's; `processor` renders the first prompt."""

    def __init__(self, llm, processor, settings: ZoomSettings, *, group_size: int, prompt: str = "plain",
                 mode: str = "multi_turn", temperature: float = 1.0, top_p: float = 0.99,
                 max_tokens_per_turn: int = 1024, response_budget: int = 2048, max_model_len: int = 8192,
                 guided: bool = False, min_zooms: int = 0):
        if group_size < 2:
            raise ValueError(f"group_size must be >= 2 (group advantages need a spread), got {group_size}")
        self.llm, self.processor, self.tok = llm, processor, processor.tokenizer
        self.settings, self.group_size, self.prompt, self.mode = settings, group_size, get_prompt(prompt), mode
        self.temperature, self.top_p = temperature, top_p
        self.max_tokens_per_turn, self.response_budget, self.max_model_len = (
            max_tokens_per_turn, response_budget, max_model_len)
        self.guided, self.min_zooms = guided, min_zooms
        self.trace: list | None = None  # set to a list to record every (prompt, params) sent (benchmarks)
        before, after = observation_text(settings.dot)
        obs = f"<|im_end|>\n<|im_start|>user\n{before}<|vision_start|><|image_pad|><|vision_end|>{after}" \
              f"<|im_end|>\n<|im_start|>assistant\n"
        self.obs_ids = self._encode(obs)

    def _encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def _params(self, ep: _Episode, budget_left: int):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        so = None
        if self.guided:
            g = turn_grammar(ep.row.task, ep.row.options, max(ep.env.image.size))
            regex = g.forced if ep.prefix else g.zoom if len(ep.env.boxes) < self.min_zooms else g.turn
            so = StructuredOutputsParams(regex=regex)
        return SamplingParams(temperature=self.temperature, top_p=self.top_p,
                              max_tokens=min(self.max_tokens_per_turn, budget_left), logprobs=0,
                              stop=list(STOP_STRINGS[:2]), include_stop_str_in_output=True,
                              bad_words=list(VISION_TOKENS), structured_outputs=so)

    def play(self, batch: list[tuple[PromptRow, Image.Image, str]], weight_version: int) -> list[Trajectory]:
        """batch: (row, full image as the model sees it, dataset-relative image source) per prompt.
        Returns G trajectories per prompt, scored, with group advantages."""
        episodes = []
        for row, image, source in batch:
            text = self.processor.apply_chat_template(self.prompt(row), add_generation_prompt=True, tokenize=False)
            ids = self._encode(text)
            gid = uuid.uuid4().hex
            for _ in range(self.group_size):
                episodes.append(_Episode(row, ZoomEpisode(image=image, settings=self.settings), gid, list(ids),
                                         [image]))
        # Continuous scheduling: an episode's next turn is queued the moment its last turn finishes, so
        # the engine's batch stays full (no lock-step barrier between turns of different episodes).
        pending: dict[str, _Episode] = {}
        self._enqueue(episodes, pending)
        engine = self.llm.llm_engine
        while pending:
            if not engine.has_unfinished_requests():
                raise RuntimeError(f"vLLM has no running requests but {len(pending)} episode turns are pending")
            for out in engine.step():
                if not getattr(out, "finished", False) or out.request_id not in pending:
                    continue
                ep = pending.pop(out.request_id)
                if self._advance(ep, out):
                    self._enqueue([ep], pending)
        return self._trajectories(episodes, batch, weight_version)

    def _enqueue(self, episodes: list[_Episode], pending: dict[str, _Episode]) -> None:
        prompts, params = [], []
        for ep in episodes:
            used = len(ep.expanded) - ep.prompt_len if ep.expanded else 0
            prompts.append({"prompt_token_ids": ep.ids, "multi_modal_data": {"image": list(ep.images)}})
            params.append(self._params(ep, self.response_budget - used))
        if self.trace is not None:
            self.trace.extend(zip(prompts, params))
        for rid, ep in zip(self.llm.enqueue(prompts, params, use_tqdm=False), episodes):
            # outputs carry the external id; vLLM returns the internal "<external>-<8 random chars>"
            pending[rid.rsplit("-", 1)[0]] = ep

    def _advance(self, ep: _Episode, out) -> bool:
        """Record one turn; returns whether the episode goes on."""
        c = out.outputs[0]
        prompt = list(out.prompt_token_ids)
        if ep.expanded and prompt[: len(ep.expanded)] != ep.expanded:
            raise RuntimeError(f"episode of prompt {ep.row.prompt_id}: vLLM's expanded prompt does not extend "
                               "the previous turn; generated spans would move")
        if not ep.expanded:
            ep.prompt_len = len(prompt)
        gen = list(c.token_ids)
        ep.spans.append((len(prompt), len(gen)))
        ep.logprobs.extend(lp[t].logprob for lp, t in zip(c.logprobs, gen))
        ep.expanded = prompt + gen
        ep.ids = ep.ids + gen
        ep.finish = c.finish_reason or ""
        step = ep.env.step(ep.prefix + c.text)
        if ep.finish != "stop":  # cut by the token budget: no EOS / stop string, no gradient (SPEC §5)
            ep.truncated = True
            return False
        if step.done:
            return False
        prefix_ids = self._encode(step.force_prefix) if step.force_prefix else []
        # the next prompt grows by the observation (its one placeholder becomes the crop's image tokens)
        # and the forced prefix; an episode with no room left to answer is cut (and masked)
        growth = len(self.obs_ids) - 1 + image_tokens(step.crop) + len(prefix_ids)
        if len(ep.expanded) - ep.prompt_len + growth >= self.response_budget or \
                len(ep.expanded) + growth >= self.max_model_len:
            ep.truncated = True
            return False
        ep.ids = ep.ids + self.obs_ids + prefix_ids
        ep.images.append(step.crop)
        ep.prefix = step.force_prefix
        return True

    def _trajectories(self, episodes: list[_Episode], batch, version: int) -> list[Trajectory]:
        sources = {row.prompt_id: src for row, _, src in batch}
        scores = []
        for ep in episodes:
            size = ep.env.image.size
            scores.append(rewards.score(ep.env.text(), gold_for_model(ep.row, size), task=ep.row.task,
                                        mode=self.mode, image_size=size))
        rw = torch.tensor([s.overall for s in scores], dtype=torch.float64)
        gids = {g: i for i, g in enumerate(dict.fromkeys(ep.group_id for ep in episodes))}
        adv = group_advantages(rw, torch.tensor([gids[ep.group_id] for ep in episodes])).tolist()
        out = []
        for ep, s, a in zip(episodes, scores, adv):
            n = len(ep.expanded)
            mask, lps = [0] * n, [0.0] * n
            k = 0
            for start, length in ep.spans:
                lps[start:start + length] = ep.logprobs[k:k + length]
                if not ep.truncated:
                    mask[start:start + length] = [1] * length
                k += length
            w, h = ep.env.image.size
            src = sources[ep.row.prompt_id]
            refs = [ImageRef(src, w, h)] + [
                ImageRef(src, w, h, point=p, half_size=self.settings.half_size, out_size=self.settings.out_size,
                         dot=self.settings.dot) for p in ep.env.points]
            out.append(Trajectory(
                episode_id=uuid.uuid4().hex, group_id=ep.group_id, prompt_id=ep.row.prompt_id,
                weight_version=version, token_ids=ep.expanded, loss_mask=mask, logprobs=lps,
                prompt_len=ep.prompt_len, reward=s.overall, reward_format=s.format, reward_accuracy=s.accuracy,
                reward_coordinate=s.coordinate, reward_diversity=s.diversity, advantage=a,
                num_turns=len(ep.spans), points=list(ep.env.points), images=refs,
                end=("truncated" if ep.truncated else ep.env.end.value if ep.env.end else "")))
        return out
