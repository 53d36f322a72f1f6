"""Token-level rollouts: play G episodes per prompt against vLLM and turn each into a scored `Trajectory`.

Multi-turn (docs/algorithm.md §2, §5): each episode's next turn is queued as soon as its last turn ends (no lock-step
barrier). A turn stops at `</tool_call>` or `</answer>` (kept) or at EOS. Token ids are kept exactly as
generated, never re-tokenised from text: vLLM gets prompts with one `<|image_pad|>` per image and expands
them itself; its returned `prompt_token_ids` (expanded) are the training ids, and each turn's prompt must
extend the previous one (checked, not assumed). Trained tokens (loss mask 1), as in the released code:
every generated token, the `<|im_end|>` appended to close each assistant turn that stopped on a stop
string, and the forced answer prefix (`train_forced_prefix`). Masked: system/user/observation text, image
tokens, the `<|im_start|>assistant\n` template. The response budget counts everything after the first
prompt (generated, observation, crop image tokens, forced prefix, closing `<|im_end|>`); it is checked
before every turn is sent, so it is never overshot. A turn cut by the per-turn limit or the budget ends
the episode with no gradient at all, and it scores as an empty response (the released trainer decodes
only up to the last trained token).

Single-turn (official single-turn sampling): one response of up to `response_budget` tokens, no stop
strings, EOS trained, a response cut at the length limit still trained.

Behaviour log-probs are vLLM's for sampled tokens and NaN for tokens the environment forced (the closing
`<|im_end|>`, the forced prefix): no policy sampled those.

Seeds: `play(..., draw=k)` gives every turn its own seed, `turn_seed(seed, draw, episode, turn)`, so an
episode's samples depend only on the weights, the prompt and (draw, its place in the batch, turn), not on
what the engine did before. Training passes the ledger ticket as the draw, so a resumed run samples exactly
what the run it continues would have. Without a draw, the engine's own seeded stream is used (its state
depends on every earlier request).
"""

from __future__ import annotations

import math
import re
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

import rewards
from actors.engine import turn_grammar
from actors.trajectory import ImageRef, Trajectory
from actors.zoom import STOP_STRINGS, ZoomEpisode, ZoomSettings
from data_gen.geometry import FORCED_ANSWER_PREFIX, crop_point, observation_text
from data_gen.prompts import get_prompt
from data_gen.rows import PromptRow, gold_for_model
from rewards.advantages import group_advantages

# A random or young policy samples vision placeholders, which would ask vLLM for images that do not exist:
# sampling never emits them (`bad_words`, a 5-token mask, O(1) per request unlike an allowed-ids list; the
# released code sets a -100 logit bias on the image token for the same reason). Behaviour logprobs stay
# vLLM's raw ones over the full vocabulary, which is what the learner computes.
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
END_OF_TURN = "<|im_end|>"


def response_text(tok, token_ids: list[int], prompt_len: int, truncated: bool) -> str:
    """What the rewards read: the released trainer decodes the response up to its last trained token with
    special tokens skipped; an episode with no trained token (cut by a token limit) is the empty response."""
    return "" if truncated else tok.decode(token_ids[prompt_len:], skip_special_tokens=True)


def transcript(tok, token_ids: list[int], prompt_len: int) -> str:
    """The response as text with its chat markup (observation turns included), each image's run of
    `<|image_pad|>` tokens shown as one."""
    return re.sub(r"(<\|image_pad\|>)+", "<|image_pad|>", tok.decode(token_ids[prompt_len:], skip_special_tokens=False))


def split_turns(transcript_text: str) -> list[str]:
    """The assistant turns of a `transcript`, in order (the first prompt ends with the first turn's header)."""
    return [c.split(END_OF_TURN)[0] for c in transcript_text.split("<|im_start|>assistant\n")]


def assistant_turns(tok, token_ids: list[int], prompt_len: int) -> list[str]:
    return split_turns(transcript(tok, token_ids, prompt_len))


def score_response(tok, token_ids: list[int], prompt_len: int, truncated: bool, row: PromptRow,
                   size: tuple[int, int], mode: str) -> rewards.Score:
    """The episode's score against the row's gold in the frame of the image the model saw (`size`)."""
    return rewards.score(response_text(tok, token_ids, prompt_len, truncated), gold_for_model(row, size),
                         task=row.task, mode=mode, image_size=size)


INT32 = (-2**31, 2**31 - 1)


def turn_seed(seed: int, draw: int, episode: int, turn: int) -> int:
    """The sampling seed of one turn: a hash of its coordinates (numpy SeedSequence, stable across
    processes and Python versions, unlike `hash`), distinct per episode so a group's members differ."""
    return int(np.random.SeedSequence([seed, draw, episode, turn]).generate_state(1)[0] & 0x7FFFFFFF)


def storable(point: tuple[int, int]) -> tuple[int, int]:
    """A point the model wrote, fit for the trajectory record (int64 in Arrow): a policy may write any
    integer (the rewards read it as written); beyond the int32 range it is saturated. Seen in a real run:
    a 25-digit think-step coordinate crashed the record."""
    return min(max(point[0], INT32[0]), INT32[1]), min(max(point[1], INT32[0]), INT32[1])


def image_tokens(image: Image.Image, factor: int = 28) -> int:
    """LLM tokens of a smart-resized image: (h/14 * w/14) patches, merged 2x2 -> (h/28) * (w/28)."""
    return (image.height // factor) * (image.width // factor)


@dataclass
class _Episode:
    row: PromptRow
    env: ZoomEpisode
    group_id: str
    index: int  # place in the batch (prompt-major, G per prompt): part of each turn's seed
    ids: list[int]  # what vLLM is sent next: one <|image_pad|> per image
    images: list[Image.Image]  # the images vLLM has been (or is about to be) sent, in order
    zooms: list[tuple[int, int]] = field(default_factory=list)  # the points of the crops in `images`
    prompt_len: int = 0  # expanded length of the first prompt
    expanded: list[int] = field(default_factory=list)  # expanded prompt + everything after it so far
    trained: list[tuple[int, int, bool]] = field(default_factory=list)  # (start, length, sampled) spans
    logprobs: list[float] = field(default_factory=list)  # of the sampled tokens, in order
    expect_len: int = 0  # expanded length the next prompt must have (0: not known yet)
    prefix: str = ""  # forced-answer prefix the next turn starts with
    finish: str = ""  # vLLM finish reason of the last turn
    truncated: bool = False  # cut by a token limit: no gradient
    end: str = ""  # how the episode ended
    seconds: float = 0.0  # from the start of `Rollout.play` to the episode's end

    @property
    def turns(self) -> int:
        """Turns sampled so far."""
        return sum(1 for _, _, sampled in self.trained if sampled)

    @property
    def used(self) -> int:
        """Budget used so far: tokens after the first prompt, expanded."""
        return len(self.expanded) - self.prompt_len


class Rollout:
    """Plays episodes for one engine. `tokenizer` is the model's; `processor` renders the first prompt."""

    def __init__(self, llm, processor, settings: ZoomSettings, *, group_size: int, prompt: str = "plain",
                 mode: str = "multi_turn", temperature: float = 1.0, top_p: float = 0.99,
                 max_tokens_per_turn: int = 1024, response_budget: int = 2048, max_model_len: int = 8192,
                 guided: bool = False, min_zooms: int = 0, train_forced_prefix: bool = True,
                 system_prompt: str | None = None, seed: int = 0, forced_answer_temperature: float | None = None):
        if group_size < 1:  # 1: evaluation (advantages 0); training needs >= 2 (cluster.train checks)
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.llm, self.processor, self.tok = llm, processor, processor.tokenizer
        self.settings, self.group_size, self.prompt, self.mode = settings, group_size, get_prompt(prompt), mode
        self.multi_turn = rewards.is_multi_turn(mode)
        self.system_prompt = system_prompt
        self.temperature, self.top_p = temperature, top_p
        # the turn after the forced answer prefix (None: `temperature`; the released eval: 0, greedy)
        self.forced_answer_temperature = forced_answer_temperature
        self.max_tokens_per_turn, self.response_budget, self.max_model_len = (
            max_tokens_per_turn, response_budget, max_model_len)
        self.guided, self.min_zooms, self.train_forced_prefix = guided, min_zooms, train_forced_prefix
        self.seed, self._draw = seed, None  # per-turn seeds come from (seed, draw, episode, turn) in `play`
        self.trace: list | None = None  # a list records every (episode index, prompt, params) sent (benchmarks)
        before, after = observation_text(settings.dot)
        # the user turn of an observation, after the `<|im_end|>` that closes the assistant turn
        self.obs_ids = self._encode(f"\n<|im_start|>user\n{before}<|vision_start|><|image_pad|><|vision_end|>"
                                    f"{after}<|im_end|>\n<|im_start|>assistant\n")
        self.end_id = self.tok.convert_tokens_to_ids(END_OF_TURN)
        self.prefix_ids = self._encode(FORCED_ANSWER_PREFIX)

    def _encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def messages(self, row: PromptRow) -> list[dict]:
        """The first turn's chat messages: the registered prompt, its system message replaced by
        `system_prompt` when one is given (e.g. read from the file the SFT data used)."""
        msgs = self.prompt(row)
        if self.system_prompt is not None:
            msgs = [{"role": "system", "content": self.system_prompt}] + [m for m in msgs if m["role"] != "system"]
        return msgs

    def _params(self, ep: _Episode, max_tokens: int, seed: int | None = None):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        so = None
        if self.guided:
            g = turn_grammar(ep.row.task, ep.row.options, max(ep.env.image.size), multi_turn=self.multi_turn)
            regex = g.forced if ep.prefix else g.zoom if len(ep.env.boxes) < self.min_zooms else g.turn
            so = StructuredOutputsParams(regex=regex)
        stop = list(STOP_STRINGS[:2]) if self.multi_turn else None  # EOS stops both modes
        temperature = (self.forced_answer_temperature if ep.prefix and self.forced_answer_temperature is not None
                       else self.temperature)
        return SamplingParams(temperature=temperature, top_p=self.top_p, max_tokens=max_tokens, logprobs=0,
                              stop=stop, include_stop_str_in_output=True, bad_words=list(VISION_TOKENS),
                              structured_outputs=so, seed=seed)

    def play(self, batch: list[tuple[PromptRow, Image.Image, str]], weight_version: int,
             draw: int | None = None) -> list[Trajectory]:
        """batch: (row, full image as the model sees it, dataset-relative image source) per prompt.
        Returns G trajectories per prompt, scored, with group advantages. `draw`: seeds every turn from
        (seed, draw, episode, turn) (module docstring); None: the engine's stream."""
        self._draw = draw
        episodes = []
        for row, image, _source in batch:
            text = self.processor.apply_chat_template(self.messages(row), add_generation_prompt=True, tokenize=False)
            ids = self._encode(text)
            gid = uuid.uuid4().hex
            for _ in range(self.group_size):
                episodes.append(_Episode(row, ZoomEpisode(image=image, settings=self.settings), gid, len(episodes),
                                         list(ids), [image]))
        # Continuous scheduling: an episode's next turn is queued the moment its last turn finishes, so
        # the engine's batch stays full (no lock-step barrier between turns of different episodes).
        pending: dict[str, _Episode] = {}
        t0 = time.perf_counter()
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
                else:
                    ep.seconds = time.perf_counter() - t0
        return self._trajectories(episodes, batch, weight_version)

    def _max_tokens(self, ep: _Episode) -> int:
        """Tokens the next turn may generate: what is left of the budget once the prompt about to be sent
        (observation, crop tokens and forced prefix included) is counted; multi-turn keeps one token for the
        closing `<|im_end|>`. Nothing may pass the engine's context either."""
        if not self.multi_turn:
            return min(self.response_budget, self.max_model_len - len(ep.ids))
        next_prompt = ep.expect_len or len(ep.ids)  # expanded length, known exactly after the first turn
        used = next_prompt - ep.prompt_len if ep.expanded else 0
        return min(self.max_tokens_per_turn, self.response_budget - used - 1, self.max_model_len - next_prompt - 1)

    def _enqueue(self, episodes: list[_Episode], pending: dict[str, _Episode]) -> None:
        prompts, params = [], []
        for ep in episodes:
            prompts.append({"prompt_token_ids": ep.ids, "multi_modal_data": {"image": list(ep.images)}})
            seed = None if self._draw is None else turn_seed(self.seed, self._draw, ep.index, ep.turns)
            params.append(self._params(ep, self._max_tokens(ep), seed))
        if self.trace is not None:
            self.trace.extend(zip([ep.index for ep in episodes], prompts, params))
        for rid, ep in zip(self.llm.enqueue(prompts, params, use_tqdm=False), episodes):
            # outputs carry the external id; vLLM returns the internal "<external>-<8 random chars>"
            pending[rid.rsplit("-", 1)[0]] = ep

    def _advance(self, ep: _Episode, out) -> bool:
        """Record one turn; returns whether the episode goes on."""
        c = out.outputs[0]
        prompt = list(out.prompt_token_ids)
        moved = ep.expanded and prompt[: len(ep.expanded)] != ep.expanded
        if moved or (ep.expect_len and len(prompt) != ep.expect_len):
            raise RuntimeError(f"episode of prompt {ep.row.prompt_id}: vLLM's expanded prompt does not extend "
                               "the previous turn as expected; generated spans would move")
        if not ep.expanded:
            ep.prompt_len = len(prompt)
        elif ep.prefix and self.train_forced_prefix:  # the forced prefix ends the prompt just sent
            ep.trained.append((len(prompt) - len(self.prefix_ids), len(self.prefix_ids), False))
        gen = list(c.token_ids)
        ep.trained.append((len(prompt), len(gen), True))
        ep.logprobs.extend(lp[t].logprob for lp, t in zip(c.logprobs, gen))
        ep.expanded = prompt + gen
        ep.ids = ep.ids + gen
        ep.finish = c.finish_reason or ""
        if not self.multi_turn:  # one response; EOS and length cuts are trained alike
            ep.end = "answer" if ep.finish == "stop" else "length"
            return False
        step = ep.env.step(ep.prefix + c.text)
        if ep.finish != "stop":  # cut by a token limit: no EOS / stop string, no gradient (docs/algorithm.md §5)
            ep.truncated, ep.end = True, "truncated"
            return False
        if not gen or gen[-1] != self.end_id:  # stopped on a stop string: close the turn as the chat
            ep.trained.append((len(ep.expanded), 1, False))  # template does, with a trained <|im_end|>
            ep.expanded = ep.expanded + [self.end_id]
            ep.ids = ep.ids + [self.end_id]
        if step.done:
            ep.end = step.end.value
            return False
        prefix = self.prefix_ids if step.force_prefix else []
        # the next prompt grows by the observation (its one placeholder becomes the crop's image tokens)
        # and the forced prefix; an episode without room for one more token and its <|im_end|> is cut
        growth = len(self.obs_ids) - 1 + image_tokens(step.crop) + len(prefix)
        if self.response_budget - (ep.used + growth) < 2 or self.max_model_len - (len(ep.expanded) + growth) < 2:
            ep.truncated, ep.end = True, "truncated"
            return False
        ep.ids = ep.ids + self.obs_ids + prefix
        ep.expect_len = len(ep.expanded) + growth
        ep.images.append(step.crop)
        ep.zooms.append(step.point)
        ep.prefix = step.force_prefix
        return True

    def _score(self, ep: _Episode) -> rewards.Score:
        return score_response(self.tok, ep.expanded, ep.prompt_len, ep.truncated, ep.row, ep.env.image.size,
                              self.mode)

    def _trajectories(self, episodes: list[_Episode], batch, version: int) -> list[Trajectory]:
        sources = {row.prompt_id: src for row, _, src in batch}
        scores = [self._score(ep) for ep in episodes]
        rw = torch.tensor([s.overall for s in scores], dtype=torch.float64)
        gids = {g: i for i, g in enumerate(dict.fromkeys(ep.group_id for ep in episodes))}
        adv = (group_advantages(rw, torch.tensor([gids[ep.group_id] for ep in episodes])).tolist()
               if self.group_size > 1 else [0.0] * len(episodes))
        out = []
        for ep, s, a in zip(episodes, scores, adv):
            n = len(ep.expanded)
            mask, lps = [0] * n, [0.0] * n
            k = 0
            for start, length, sampled in ep.trained:
                if sampled:
                    lps[start:start + length] = ep.logprobs[k:k + length]
                    k += length
                else:
                    lps[start:start + length] = [math.nan] * length
                if not ep.truncated:
                    mask[start:start + length] = [1] * length
            w, h = ep.env.image.size
            src = sources[ep.row.prompt_id]
            # exactly the images vLLM was sent (`zooms` grows only when a crop is sent, never for one the
            # budget cut), so the learner rebuilds as many images as the tokens hold
            # a crop's point as `crop` takes it (`crop_point`: the written point unless its box is empty, then
            # clamped): the same pixels, and a number the record can hold however large the written one was
            o = self.settings.half_size
            refs = [ImageRef(src, w, h)] + [
                ImageRef(src, w, h, point=crop_point(p, (w, h), o), half_size=o, out_size=self.settings.out_size,
                         dot=self.settings.dot) for p in ep.zooms]
            out.append(Trajectory(
                episode_id=uuid.uuid4().hex, group_id=ep.group_id, prompt_id=ep.row.prompt_id,
                weight_version=version, token_ids=ep.expanded, loss_mask=mask, logprobs=lps,
                prompt_len=ep.prompt_len, reward=s.overall, reward_format=s.format, reward_accuracy=s.accuracy,
                reward_coordinate=s.coordinate, reward_diversity=s.diversity, advantage=a,
                num_turns=ep.turns,
                points=[storable(p) for p in (ep.zooms if self.multi_turn else s.points)], images=refs,
                end=ep.end, seconds=ep.seconds))
        return out
