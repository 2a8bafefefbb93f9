"""The decoding rules of the fast engine (swcm.fast_generation): which of generate()'s settings it
honours, with generate()'s defaults, and how they act on a step's scores (minimum and maximum
length, end of sequence, repeated n-grams) and on beam search's stopping test."""

from __future__ import annotations

import copy

import torch
from transformers import GenerationConfig

# generate()'s defaults for the settings the fast loop reads (GenerationConfig's in transformers 4).
_DEFAULTS = {"max_length": 20, "min_length": 0, "num_beams": 1, "num_return_sequences": 1, "no_repeat_ngram_size": 0,
             "length_penalty": 1.0, "early_stopping": False}

# generate() settings the fast loop does not implement, with the value that leaves them off.
_UNSUPPORTED = {
    "do_sample": False, "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0,
    "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "sequence_bias": None, "suppress_tokens": None,
    "begin_suppress_tokens": None, "exponential_decay_length_penalty": None, "guidance_scale": None,
    "renormalize_logits": False, "remove_invalid_values": False, "max_time": None, "stop_strings": None,
    "return_dict_in_generate": False, "num_beam_groups": 1, "diversity_penalty": 0.0, "penalty_alpha": None,
    "prompt_lookup_num_tokens": None,
}



def _may_improve(running_scores, finished_scores, is_finished, length: int, rules: "_DecodingRules") -> torch.Tensor:
    """Whether the best running beam could still beat the worst finished one
    (GenerationMixin._check_early_stop_heuristic)."""
    if rules.early_stopping == "never" and rules.length_penalty > 0.0:
        best_length = rules.max_length - 1
    else:
        best_length = length - 1
    best_running = running_scores[:, :1] / (best_length ** rules.length_penalty)
    worst_finished = torch.where(is_finished, torch.min(finished_scores, dim=1, keepdim=True)[0], -1.0e9)
    return torch.any(best_running > worst_finished, dim=-1, keepdim=True)


class _DecodingRules:
    """generate()'s settings resolved as generate() resolves them (lengths, special tokens), and
    its logits processors for greedy and beam search, vectorised."""

    def __init__(self, generation_config: GenerationConfig, kwargs: dict, max_positions: int, device: torch.device):
        config = copy.deepcopy(generation_config)
        unused = config.update(**kwargs)
        if unused:
            raise TypeError(f"generate() got arguments the fast engine does not take: {', '.join(sorted(unused))}")
        on = [name for name, off in _UNSUPPORTED.items() if getattr(config, name, off) not in (off, None)]
        if on:
            raise ValueError(f"the fast engine decodes greedily or by beam search, without {', '.join(on)}; "
                             "use the transformers engine for these")
        def setting(name: str):  # transformers 5 leaves unset fields None and fills in these defaults
            value = getattr(config, name, None)
            return _DEFAULTS[name] if value is None else value

        self.num_beams = setting("num_beams")
        self.num_return_sequences = setting("num_return_sequences")
        if self.num_return_sequences > self.num_beams:
            raise ValueError(f"num_return_sequences ({self.num_return_sequences}) must be at most num_beams ({self.num_beams})")
        eos = config.eos_token_id
        self.eos = torch.tensor([] if eos is None else [eos] if isinstance(eos, int) else list(eos), dtype=torch.long,
                                device=device)
        self.pad = config.pad_token_id if config.pad_token_id is not None else (int(self.eos[0]) if len(self.eos) else 0)
        # The fill of beam search's sequence buffers, written as generate() writes it.
        self.beam_fill = (config.pad_token_id or int(self.eos[0])) if len(self.eos) else -1
        self.start = config.decoder_start_token_id if config.decoder_start_token_id is not None else config.bos_token_id
        if config.max_new_tokens is not None:
            self.max_length = config.max_new_tokens + 1
        elif config.max_length is not None:
            self.max_length = config.max_length
        else:  # generate()'s default: 20 new tokens
            self.max_length = _DEFAULTS["max_length"] + 1
        if self.max_length > max_positions:
            raise ValueError(f"decoder length {self.max_length} exceeds the position table ({max_positions}); "
                             "shorten max_new_tokens")
        self.min_length = config.min_new_tokens + 1 if config.min_new_tokens is not None else setting("min_length")
        self.no_repeat_ngram_size = setting("no_repeat_ngram_size")
        self.forced_bos = config.forced_bos_token_id
        self.forced_eos = config.forced_eos_token_id
        self.length_penalty = setting("length_penalty")
        self.early_stopping = setting("early_stopping")

    def attention_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The source mask generate() derives when none is given."""
        if self.pad is not None and bool((input_ids == self.pad).any()) and not bool(torch.isin(self.eos, self.pad).any()):
            return input_ids.ne(self.pad).long()
        return torch.ones_like(input_ids)

    def process(self, scores: torch.Tensor, sequences: torch.Tensor) -> torch.Tensor:
        """The logits processors generate() applies, in its order, to the scores of the next
        token after `sequences` ([rows, length so far])."""
        length = sequences.shape[1]
        if self.no_repeat_ngram_size:
            _ban_repeated_ngrams(scores, sequences, self.no_repeat_ngram_size)
        if length < self.min_length and len(self.eos):
            scores[:, self.eos] = -float("inf")
        if self.forced_bos is not None and length == 1:
            scores.fill_(-float("inf"))
            scores[:, self.forced_bos] = 0
        if self.forced_eos is not None and length == self.max_length - 1:
            scores.fill_(-float("inf"))
            scores[:, self.forced_eos] = 0
        return scores


def _ban_repeated_ngrams(scores: torch.Tensor, sequences: torch.Tensor, n: int) -> None:
    """Set to −inf, in place, every token that would repeat an n-gram of its row: the tokens that
    followed an earlier occurrence of the row's last n − 1 tokens (NoRepeatNGramLogitsProcessor)."""
    length = sequences.shape[1]
    if length < n:
        return
    windows = sequences.unfold(1, n, 1)  # [rows, length - n + 1, n]
    matches = (windows[:, :, :-1] == sequences[:, length - n + 1 :, None].transpose(1, 2)).all(dim=-1)
    rows, starts = matches.nonzero(as_tuple=True)
    scores[rows, windows[rows, starts, -1]] = -float("inf")
