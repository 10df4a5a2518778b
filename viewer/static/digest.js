// SHA-256 and SM3 (GB/T 32905-2016) of a file, computed in the browser: a person can check a downloaded
// recording against the custody record without trusting the server that sent it. No dependencies, nothing fetched.

// -- the common Merkle-Damgard frame ---------------------------------------------------------------------

// Both hashes take 64-byte blocks, big-endian words, and the same padding (0x80, zeros, 64-bit bit length),
// so only the compression function differs.
class BlockHash {
  constructor(state) {
    this.state = Int32Array.from(state);
    this.buffer = new Uint8Array(64); // the tail of the input that does not yet fill a block
    this.buffered = 0;
    this.length = 0; // bytes so far; a Number is exact up to 2^53, far past any file
    this.digest = null;
  }

  update(data) {
    if (this.digest !== null) throw new Error("update() after hex()");
    let position = 0;
    const end = data.length;
    this.length += end;
    if (this.buffered > 0) {
      const take = Math.min(64 - this.buffered, end);
      this.buffer.set(data.subarray(0, take), this.buffered);
      this.buffered += take;
      position = take;
      if (this.buffered < 64) return this;
      this.blocks(this.buffer, 0, 64);
      this.buffered = 0;
    }
    // Whole blocks are read straight from the caller's array: no copy per block.
    const whole = position + ((end - position) & ~63);
    if (whole > position) this.blocks(data, position, whole);
    if (whole < end) {
      this.buffer.set(data.subarray(whole, end), 0);
      this.buffered = end - whole;
    }
    return this;
  }

  hex() {
    if (this.digest === null) {
      const bytes = this.length;
      const tail = this.buffer;
      tail[this.buffered] = 0x80;
      tail.fill(0, this.buffered + 1);
      if (this.buffered >= 56) {
        this.blocks(tail, 0, 64);
        tail.fill(0);
      }
      // The bit length, split so that no step overflows 2^53.
      const high = Math.floor(bytes / 0x20000000);
      const low = (bytes % 0x20000000) * 8;
      const view = new DataView(tail.buffer);
      view.setUint32(56, high);
      view.setUint32(60, low);
      this.blocks(tail, 0, 64);
      this.digest = Array.from(this.state, (word) => (word >>> 0).toString(16).padStart(8, "0")).join("");
    }
    return this.digest;
  }
}

// -- SM3 -------------------------------------------------------------------------------------------------------

const SM3_IV = [0x7380166f, 0x4914b2b9, 0x172442d7, 0xda8a0600, 0xa96f30bc, 0x163138aa, 0xe38dee4d, 0xb0fb0e4e];

// T_j rotated left by j (mod 32), computed once rather than in every round.
const SM3_T = new Int32Array(64);
for (let j = 0; j < 64; j++) {
  const t = j < 16 ? 0x79cc4519 : 0x7a879d8a;
  const r = j % 32;
  SM3_T[j] = r === 0 ? t : (t << r) | (t >>> (32 - r));
}

export class Sm3 extends BlockHash {
  constructor() {
    super(SM3_IV);
    this.w = new Int32Array(68);
  }

  blocks(data, position, end) {
    const state = this.state;
    const w = this.w;
    const T = SM3_T;
    let v0 = state[0], v1 = state[1], v2 = state[2], v3 = state[3];
    let v4 = state[4], v5 = state[5], v6 = state[6], v7 = state[7];
    for (; position < end; position += 64) {
      for (let j = 0, i = position; j < 16; j++, i += 4) {
        w[j] = (data[i] << 24) | (data[i + 1] << 16) | (data[i + 2] << 8) | data[i + 3];
      }
      for (let j = 16; j < 68; j++) {
        const x = w[j - 16] ^ w[j - 9] ^ ((w[j - 3] << 15) | (w[j - 3] >>> 17));
        const y = w[j - 13];
        w[j] = x ^ ((x << 15) | (x >>> 17)) ^ ((x << 23) | (x >>> 9)) ^ ((y << 7) | (y >>> 25)) ^ w[j - 6];
      }
      let a = v0, b = v1, c = v2, d = v3, e = v4, f = v5, g = v6, h = v7;
      // Rounds 0-15 and 16-63 differ only in FF and GG: two loops keep the branch out of the hot path.
      for (let j = 0; j < 16; j++) {
        const a12 = (a << 12) | (a >>> 20);
        const s = (a12 + e + T[j]) | 0;
        const ss1 = (s << 7) | (s >>> 25);
        const tt1 = ((a ^ b ^ c) + d + (ss1 ^ a12) + (w[j] ^ w[j + 4])) | 0;
        const tt2 = ((e ^ f ^ g) + h + ss1 + w[j]) | 0;
        d = c;
        c = (b << 9) | (b >>> 23);
        b = a;
        a = tt1;
        h = g;
        g = (f << 19) | (f >>> 13);
        f = e;
        e = tt2 ^ ((tt2 << 9) | (tt2 >>> 23)) ^ ((tt2 << 17) | (tt2 >>> 15));
      }
      for (let j = 16; j < 64; j++) {
        const a12 = (a << 12) | (a >>> 20);
        const s = (a12 + e + T[j]) | 0;
        const ss1 = (s << 7) | (s >>> 25);
        const tt1 = (((a & b) | (a & c) | (b & c)) + d + (ss1 ^ a12) + (w[j] ^ w[j + 4])) | 0;
        const tt2 = (((e & f) | (~e & g)) + h + ss1 + w[j]) | 0;
        d = c;
        c = (b << 9) | (b >>> 23);
        b = a;
        a = tt1;
        h = g;
        g = (f << 19) | (f >>> 13);
        f = e;
        e = tt2 ^ ((tt2 << 9) | (tt2 >>> 23)) ^ ((tt2 << 17) | (tt2 >>> 15));
      }
      // SM3 chains by XOR, not by addition as SHA-2 does.
      v0 ^= a; v1 ^= b; v2 ^= c; v3 ^= d; v4 ^= e; v5 ^= f; v6 ^= g; v7 ^= h;
    }
    state[0] = v0; state[1] = v1; state[2] = v2; state[3] = v3;
    state[4] = v4; state[5] = v5; state[6] = v6; state[7] = v7;
  }
}

// -- SHA-256 ---------------------------------------------------------------------------------------------------

const SHA256_IV = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

const SHA256_K = Int32Array.from([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

// The JS SHA-256 serves files too large to hand to Web Crypto in one piece (it has no incremental API),
// and pages without Web Crypto (plain http from another host is not a secure context).
export class Sha256 extends BlockHash {
  constructor() {
    super(SHA256_IV);
    this.w = new Int32Array(64);
  }

  blocks(data, position, end) {
    const state = this.state;
    const w = this.w;
    const K = SHA256_K;
    let v0 = state[0], v1 = state[1], v2 = state[2], v3 = state[3];
    let v4 = state[4], v5 = state[5], v6 = state[6], v7 = state[7];
    for (; position < end; position += 64) {
      for (let j = 0, i = position; j < 16; j++, i += 4) {
        w[j] = (data[i] << 24) | (data[i + 1] << 16) | (data[i + 2] << 8) | data[i + 3];
      }
      for (let j = 16; j < 64; j++) {
        const x = w[j - 15];
        const y = w[j - 2];
        const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
        const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
        w[j] = (w[j - 16] + s0 + w[j - 7] + s1) | 0;
      }
      let a = v0, b = v1, c = v2, d = v3, e = v4, f = v5, g = v6, h = v7;
      for (let j = 0; j < 64; j++) {
        const sum1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
        const t1 = (h + sum1 + ((e & f) ^ (~e & g)) + K[j] + w[j]) | 0;
        const sum0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
        const t2 = (sum0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
        h = g;
        g = f;
        f = e;
        e = (d + t1) | 0;
        d = c;
        c = b;
        b = a;
        a = (t1 + t2) | 0;
      }
      v0 = (v0 + a) | 0; v1 = (v1 + b) | 0; v2 = (v2 + c) | 0; v3 = (v3 + d) | 0;
      v4 = (v4 + e) | 0; v5 = (v5 + f) | 0; v6 = (v6 + g) | 0; v7 = (v7 + h) | 0;
    }
    state[0] = v0; state[1] = v1; state[2] = v2; state[3] = v3;
    state[4] = v4; state[5] = v5; state[6] = v6; state[7] = v7;
  }
}

// -- a File or Blob --------------------------------------------------------------------------------------------

function toHex(buffer) {
  return Array.from(new Uint8Array(buffer), (byte) => byte.toString(16).padStart(2, "0")).join("");
}

// Give the page a turn (input, drawing, other tasks) between chunks. A message, not setTimeout: a background tab
// throttles timers to one a second, which would stall a long file.
function pause() {
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = () => {
      channel.port1.close();
      resolve();
    };
    channel.port2.postMessage(null);
  });
}

// { sha256, sm3, size } of a Blob or File. Up to webCryptoLimit bytes it is read whole and SHA-256 comes from
// Web Crypto (native, many times faster); above it, or without Web Crypto, it is read chunk by chunk into the
// JS classes so memory stays flat for a multi-GB recording. onProgress(doneBytes, totalBytes) follows each
// chunk, strictly increasing, and its last call (totalBytes, totalBytes) means both digests are done.
export async function digestBlob(blob, { onProgress, chunkBytes = 8 * 1024 * 1024,
  webCryptoLimit = 256 * 1024 * 1024 } = {}) {
  const size = blob.size;
  const step = Math.max(1, Math.floor(chunkBytes));
  const report = (done) => {
    if (onProgress) onProgress(done, size);
  };
  const sm3 = new Sm3();

  if (size <= webCryptoLimit && globalThis.crypto?.subtle) {
    const bytes = new Uint8Array(await blob.arrayBuffer());
    // Started first: Web Crypto works off the main thread while SM3 runs here.
    const native = crypto.subtle.digest("SHA-256", bytes).then(toHex, () => null);
    for (let offset = 0; offset < size; offset += step) {
      sm3.update(bytes.subarray(offset, Math.min(offset + step, size)));
      if (offset + step < size) {
        report(offset + step);
        await pause();
      }
    }
    // A browser that refuses the digest (too large for it, say) still gets an answer, from the JS class.
    const sha256 = (await native) ?? new Sha256().update(bytes).hex();
    report(size);
    return { sha256, sm3: sm3.hex(), size };
  }

  const sha = new Sha256();
  // The next chunk is read while this one is hashed; at most two chunks are held at once.
  let next = size > 0 ? blob.slice(0, Math.min(step, size)).arrayBuffer() : null;
  for (let offset = 0; offset < size; offset += step) {
    const chunk = new Uint8Array(await next);
    const after = offset + step;
    next = after < size ? blob.slice(after, Math.min(after + step, size)).arrayBuffer() : null;
    sha.update(chunk);
    sm3.update(chunk);
    if (after < size) {
      report(after);
      await pause();
    }
  }
  report(size);
  return { sha256: sha.hex(), sm3: sm3.hex(), size };
}
