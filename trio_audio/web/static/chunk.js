// A chunk's pictures: its waveform (from its stored bytes, decoded here) and its spectrum.

import { bandColor } from "./ui.js";

export function drawBars(canvas, values, lo, hi) {
  const g = canvas.getContext("2d");
  g.fillStyle = "#0b0d12";
  g.fillRect(0, 0, canvas.width, canvas.height);
  const w = canvas.width / values.length;
  values.forEach((v, i) => {
    const t = Math.max(0, Math.min(1, (v - lo) / (hi - lo)));
    g.fillStyle = bandColor(lo + t * (hi - lo));
    g.fillRect(i * w + 1, canvas.height * (1 - t), w - 2, canvas.height * t);
  });
}

export function drawWaveform(canvas, samples) {
  const g = canvas.getContext("2d");
  const { width, height } = canvas;
  g.fillStyle = "#0b0d12";
  g.fillRect(0, 0, width, height);
  g.fillStyle = "#5ec4ff";
  const per = Math.max(1, Math.floor(samples.length / width));
  for (let x = 0; x < width; x++) {
    let lo = 0;
    let hi = 0;
    for (let i = x * per; i < Math.min(samples.length, (x + 1) * per); i++) {
      lo = Math.min(lo, samples[i]);
      hi = Math.max(hi, samples[i]);
    }
    g.fillRect(x, (height / 2) * (1 - hi), 1, Math.max(1, (height / 2) * (hi - lo)));
  }
}

// Raw PCM as stored (no container) -> float samples of channel 0, for the waveform and a WAV.
function rawSamples(buffer, audio) {
  const view = new DataView(buffer);
  const channels = audio.channels || 1;
  const sizes = { pcm_s16le: 2, pcm_s16be: 2, pcm_s24le: 3, pcm_s32le: 4, pcm_f32le: 4, pcm_u8: 1 };
  const size = sizes[audio.encoding];
  if (!size) return null;
  const frames = Math.floor(buffer.byteLength / (size * channels));
  const out = new Float32Array(frames);
  for (let i = 0; i < frames; i++) {
    const at = i * size * channels;
    switch (audio.encoding) {
      case "pcm_s16le": out[i] = view.getInt16(at, true) / 32768; break;
      case "pcm_s16be": out[i] = view.getInt16(at, false) / 32768; break;
      case "pcm_s24le": out[i] = ((view.getUint8(at) | (view.getUint8(at + 1) << 8) | (view.getInt8(at + 2) << 16))) / 8388608; break;
      case "pcm_s32le": out[i] = view.getInt32(at, true) / 2147483648; break;
      case "pcm_f32le": out[i] = view.getFloat32(at, true); break;
      default: out[i] = (view.getUint8(at) - 128) / 128;
    }
  }
  return out;
}

// The chunk's samples (channel 0) from its stored bytes; null if this browser cannot decode them.
export async function chunkSamples(bytes, audio) {
  if (audio.container === "raw") return rawSamples(bytes, audio);
  try {
    const ctx = new OfflineAudioContext(1, 1, audio.sample_rate || 16000);
    return (await ctx.decodeAudioData(bytes.slice(0))).getChannelData(0);
  } catch {
    return null;
  }
}
