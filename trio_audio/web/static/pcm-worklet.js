// AudioWorklet: the microphone's float samples (at the context's rate) to 16 kHz mono 16-bit
// PCM frames of `frameSamples` samples, posted to the page with the frame's RMS and peak.
// Resampling is linear interpolation after a one-pole low-pass below the new Nyquist.

const TARGET_RATE = 16000;

class PcmFrames extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.frameSamples = opts.frameSamples || 1600; // 100 ms
    this.step = sampleRate / TARGET_RATE; // input samples per output sample
    this.pos = 0; // position of the next output sample, in input samples from prev
    this.prev = 0; // the last (filtered) input sample of the previous block
    this.lp = 0;
    // One-pole low-pass at about 7 kHz (a no-op at 16 kHz input).
    const cutoff = Math.min(7000, sampleRate / 2 - 1);
    this.alpha = this.step > 1 ? 1 - Math.exp((-2 * Math.PI * cutoff) / sampleRate) : 1;
    this.frame = new Int16Array(this.frameSamples);
    this.filled = 0;
    this.sumSq = 0;
    this.peak = 0;
    this.running = true;
    this.port.onmessage = (event) => {
      if (event.data === "stop") {
        this.flush();
        this.running = false;
      }
    };
  }

  push(value) {
    const clamped = Math.max(-1, Math.min(1, value));
    this.frame[this.filled++] = clamped < 0 ? clamped * 0x8000 : clamped * 0x7fff;
    this.sumSq += clamped * clamped;
    this.peak = Math.max(this.peak, Math.abs(clamped));
    if (this.filled === this.frameSamples) this.flush();
  }

  flush() {
    if (this.filled === 0) return;
    const pcm = this.frame.slice(0, this.filled);
    const rms = Math.sqrt(this.sumSq / this.filled);
    this.port.postMessage({ pcm: pcm.buffer, rms, peak: this.peak }, [pcm.buffer]);
    this.filled = 0;
    this.sumSq = 0;
    this.peak = 0;
  }

  process(inputs) {
    const input = inputs[0];
    if (!this.running) return false;
    if (!input || input.length === 0) return true;
    const channel = input[0];
    // Filter the block, then read it at steps of `this.step` (linear interpolation).
    const block = new Float32Array(channel.length);
    for (let i = 0; i < channel.length; i++) {
      this.lp += this.alpha * (channel[i] - this.lp);
      block[i] = this.lp;
    }
    // Sample positions are relative to `prev` at -1 and block[0] at 0.
    while (this.pos < block.length - 1 + 1e-9) {
      const i = Math.floor(this.pos);
      const frac = this.pos - i;
      const a = i < 0 ? this.prev : block[i];
      const b = i + 1 < block.length ? block[i + 1] : a;
      this.push(a + (b - a) * frac);
      this.pos += this.step;
    }
    this.pos -= block.length;
    this.prev = block[block.length - 1];
    return true;
  }
}

registerProcessor("pcm-frames", PcmFrames);
