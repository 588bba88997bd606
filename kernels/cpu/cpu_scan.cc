// The selective scan (Mamba's S6 recurrence) for XLA's CPU backend, called through the
// XLA FFI by kernels/cpu_scan.py, which compiles this file on first use.
//
// Per batch b, channel d and state n, over time t (or backwards in time with `reverse`):
//
//   h_t = exp(delta_t * A) * h_{t-1} + delta_t * u_t * B_t,     y_t = <h_t, C_t>
//
// Tensors are row-major and channels-last: u, delta, y (B, L, D); B, C (B, L, N); A (D, N).
// The forward kernel may also start from a state h0 (B, D, N) and return the last one, so that a
// sequence read in pieces (a live stream, a long recording) carries its state from piece to piece.
// The training kernels leave the delta bias, softplus, D skip and gate to XLA. For inference two
// more kernels fuse them (XLA's CPU code for such chains of transcendentals is several times
// slower than the scan itself): ConvSilu, the depthwise causal conv and its SiLU; and
// ScanInference, both directions of a block with their delta bias and softplus, D skip, sum,
// scale and gate, written once.
//
// A block is kLanes channels, one vector (GCC vector extensions). A pass walks time over a
// block with K of its states in registers, so the (B, L, D, N) state tensor is never written
// to memory; K is what the target's register file holds (the target section below), and a
// block's passes add their readouts up. A pass computes the decays exp(delta_t A) of kTile
// steps (a polynomial 2^x) before it walks them, so that the exponential's constants and the
// walk's states do not share the registers. The backward pass recomputes a pass's states and
// decays into a scratch of (L + 1) x 2K vectors, then walks time in reverse, summing each
// step's dB and dC terms across lanes in registers; a block's passes run one after the other
// while its rows are in cache. Work items are shared with the threads of XLA's intra-op pool.

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// ---- The target: the one place that knows the instruction set. ----
// kLanes float32 channels per vector. A forward pass walks kForwardStates states of a block
// with 4 partial sums of their readout and the step's temporaries in registers; a
// backward pass holds an adjoint and a dA accumulator per state (2 * kBackwardStates), the
// pending lane sums of dB and dC and about 8 temporaries. scripts/kernel_asm_report.py
// counts what spills.
#if defined(__AVX512F__)
#include <immintrin.h>
constexpr char kIsa[] = "avx512";  // 32 zmm registers
constexpr int kLanes = 16, kForwardStates = 16, kBackwardStates = 8;
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
constexpr char kIsa[] = "avx2";  // 16 ymm registers
constexpr int kLanes = 8, kForwardStates = 8, kBackwardStates = 4;
#elif defined(__ARM_NEON) && defined(__aarch64__)
#include <arm_neon.h>
constexpr char kIsa[] = "neon";  // 32 q registers; B and C rows are loaded into them too
constexpr int kLanes = 4, kForwardStates = 16, kBackwardStates = 4;
#else
constexpr char kIsa[] = "generic";  // e.g. x86-64's SSE2: 16 xmm registers, no FMA
constexpr int kLanes = 4, kForwardStates = 8, kBackwardStates = 2;
#endif

typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline vf Splat(float x) { return vf{} + x; }

// 2^r for |r| <= 1/2 to 1.6e-7 relative: a degree-5 minimax polynomial.
inline vf Exp2Fraction(vf r) {
  vf p = Splat(1.326472731e-03f);
  p = p * r + 9.671512991e-03f;
  p = p * r + 5.550733581e-02f;
  p = p * r + 2.402224243e-01f;
  p = p * r + 6.931470037e-01f;
  return p * r + 1.0f;
}

// 2^x for x in [-126, 126]: 2^k 2^r with k = round(x), 2^k built in the exponent bits.
inline vf Exp2InRange(vf x) {
  // Adding 1.5 * 2^23 rounds x to an integer; the + 127 leaves k + 127, the exponent field
  // of 2^k, in the low mantissa bits, which the shift moves into place.
  const vf shifter = Splat(12582912.0f + 127.0f);
  const vf t = x + shifter;
  vi bits;
  std::memcpy(&bits, &t, sizeof(bits));
  bits <<= 23;
  vf scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return Exp2Fraction(x - (t - shifter)) * scale;
}

// The sums of adjacent lanes of a, then of b, in lane order (GCC's or Clang's shuffles).
template <std::size_t... I>
inline vf AdjacentSums(vf a, vf b, std::index_sequence<I...>) {
#if defined(__clang__)
  return __builtin_shufflevector(a, b, (2 * I)...) + __builtin_shufflevector(a, b, (2 * I + 1)...);
#else
  return __builtin_shuffle(a, b, vi{(2 * I)...}) + __builtin_shuffle(a, b, vi{(2 * I + 1)...});
#endif
}

inline vf AdjacentSums(vf a, vf b) { return AdjacentSums(a, b, std::make_index_sequence<kLanes>{}); }

// Exp2(x): 2^x; where x is clamped to [-126, 126], 2^x of a very negative x is 1e-38, not 0.
// Pair(a, b, rank): two vectors of 2^rank lane sums each become one of 2^(rank + 1), the
// sums of adjacent lanes of a, then of b (the order LaneSums keeps).
#if defined(__AVX512F__)
inline vf Exp2(vf x) {  // scalef multiplies by 2^k, going to 0 and infinity as exp does
  const vf k = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_scalef_ps(Exp2Fraction(x - k), k);
}
inline vf Pair(vf a, vf b, int) { return AdjacentSums(a, b); }
#elif defined(__AVX2__) && defined(__FMA__)
inline vf Exp2(vf x) { return Exp2InRange(_mm256_min_ps(_mm256_max_ps(x, Splat(-126.0f)), Splat(126.0f))); }
inline vf Pair(vf a, vf b, int rank) {  // within each 128-bit half (vhaddps), then across them
  if (rank < 2) return _mm256_hadd_ps(a, b);
  return _mm256_permute2f128_ps(a, b, 0x20) + _mm256_permute2f128_ps(a, b, 0x31);
}
#elif defined(__ARM_NEON) && defined(__aarch64__)
inline vf Exp2(vf x) { return Exp2InRange(vminq_f32(vmaxq_f32(x, Splat(-126.0f)), Splat(126.0f))); }
inline vf Pair(vf a, vf b, int) { return vpaddq_f32(a, b); }
#else
inline vf Exp2(vf x) {
  x = x < Splat(-126.0f) ? Splat(-126.0f) : x;
  return Exp2InRange(x > Splat(126.0f) ? Splat(126.0f) : x);
}
inline vf Pair(vf a, vf b, int) { return AdjacentSums(a, b); }
#endif
// ---- End of the target. ----

constexpr float kLog2e = 1.44269504088896341f, kLn2 = 0.693147180559945309f;

inline vf Load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void Store(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }

// Calls f(std::integral_constant<int, k>{}) for k = 0 .. K - 1, unrolled by the compiler: with
// constant indices, arrays of vectors (a pass's states) are registers.
template <typename F, int... k>
inline void Unrolled(const F& f, std::integer_sequence<int, k...>) {
  (f(std::integral_constant<int, k>{}), ...);
}

template <int K, typename F>
inline void Unrolled(const F& f) {
  Unrolled(f, std::make_integer_sequence<int, K>{});
}

// Adds the lane sums of the vectors Add<0>, Add<1>, ... are given to out[0], out[1], ...
// without leaving the registers: like a binary counter, the i-th vector is paired (Pair)
// with the pending ones of the ranks of i's trailing one bits, and every kLanes vectors
// become one of their kLanes sums, added to `out`. Finish<n>() after n vectors pads the last
// group with zeros, so `out` needs room for whole vectors.
class LaneSums {
 public:
  explicit LaneSums(float* out) : out_(out) {}

  template <int i, int rank = 0>
  void Add(vf x) {
    if constexpr (rank == kRanks)
      Store(out_ + i / kLanes * kLanes, Load(out_ + i / kLanes * kLanes) + x);
    else if constexpr ((i >> rank) & 1)
      Add<i, rank + 1>(Pair(pending_[rank], x, rank));
    else
      pending_[rank] = x;
  }

  template <int n>
  void Finish() {
    if constexpr (n % kLanes) {
      Add<n>(vf{});
      Finish<n + 1>();
    }
  }

 private:
  static constexpr int kRanks = __builtin_ctz(kLanes);
  vf pending_[kRanks];
  float* out_;
};

struct Shape {
  int64_t batch, length, dim, state;
  int64_t blocks() const { return (dim + kLanes - 1) / kLanes; }
};

struct Tensors {
  const float *u, *delta, *B, *C, *dy;
  float *y, *du, *ddelta, *dA, *dB, *dC;  // dA: (B, N, blocks * kLanes) per batch row; dB, dC: (G, B, L, N) per group
  const vf* A2;  // A * log2(e) as (blocks, N) vectors of kLanes channels (TransposeA)
};

// A (D, N) * log2(e) as (blocks, N) vectors of kLanes channels, zeros past D: the passes
// exponentiate in base 2 and read a block's A as whole vectors.
std::vector<vf> TransposeA(const Shape& s, const float* A) {
  std::vector<vf> A2(s.blocks() * s.state, vf{});
  float* lanes = reinterpret_cast<float*>(A2.data());  // (blocks, N, kLanes)
  for (int64_t d = 0; d < s.dim; ++d)
    for (int64_t n = 0; n < s.state; ++n) lanes[(d / kLanes * s.state + n) * kLanes + d % kLanes] = A[d * s.state + n] * kLog2e;
  return A2;
}

// One block of channels of one batch row over time, as the passes read and write it: element
// (t, lane) of u, delta, dy, y, du and ddelta at [t * stride + lane], of B and C at [t * N + n].
// A short last block of a row (width < kLanes) is a padded copy (stride kLanes, zeros past
// width), so that every load and store in the passes is a whole vector.
struct Block {
  const float *u, *delta, *dy, *B, *C;
  float *y, *du, *ddelta;
  const vf* A2;  // N vectors
  float* dA;     // (N, kLanes) at a row stride of blocks * kLanes
  int64_t stride;
  int width;
  std::vector<float> padded;  // a short block's u, delta, dy, y, du, ddelta: (L, kLanes) each

  // A whole block whose u, delta and y are (L, kLanes) scratch rows.
  Block(const float* u_, const float* delta_, float* y_, const float* B_, const float* C_, const vf* A2_)
      : u(u_), delta(delta_), dy(nullptr), B(B_), C(C_), y(y_), du(nullptr), ddelta(nullptr), A2(A2_), dA(nullptr),
        stride(kLanes), width(kLanes) {}

  Block(const Shape& s, const Tensors& x, int64_t b, int64_t index) {
    const int64_t d0 = index * kLanes, at = b * s.length * s.dim + d0, L = s.length;
    width = static_cast<int>(std::min<int64_t>(kLanes, s.dim - d0));
    B = x.B + b * L * s.state;
    C = x.C + b * L * s.state;
    A2 = x.A2 + index * s.state;
    dA = x.dA ? x.dA + b * s.state * s.blocks() * kLanes + d0 : nullptr;
    auto offset = [at](auto* p) { return p ? p + at : nullptr; };
    u = offset(x.u), delta = offset(x.delta), dy = offset(x.dy), y = offset(x.y), du = offset(x.du),
    ddelta = offset(x.ddelta), stride = s.dim;
    if (width == kLanes) return;
    padded.assign(6 * L * kLanes, 0.0f);
    const float* from[] = {u, delta, dy};
    for (int i = 0; i < 3; ++i)
      if (from[i])
        for (int64_t t = 0; t < L; ++t) std::copy_n(from[i] + t * stride, width, &padded[(i * L + t) * kLanes]);
    u = &padded[0], delta = &padded[L * kLanes], dy = &padded[2 * L * kLanes];
    y = &padded[3 * L * kLanes], du = &padded[4 * L * kLanes], ddelta = &padded[5 * L * kLanes];
    stride = kLanes;
  }

  // Copies a short block's outputs back: y (forward) or du and ddelta (backward).
  void Finish(const Shape& s, const Tensors& x, int64_t b, int64_t index) const {
    if (width == kLanes) return;
    const int64_t at = b * s.length * s.dim + index * kLanes;
    const std::pair<const float*, float*> outputs[] = {{y, x.y}, {du, x.du}, {ddelta, x.ddelta}};
    for (auto [from, to] : outputs)
      if (to)
        for (int64_t t = 0; t < s.length; ++t) std::copy_n(from + t * kLanes, width, to + at + t * s.dim);
  }
};

// Calls pass(std::integral_constant<int, K>{}, s0) over the states [s0, n): groups of kMax,
// then of halves for the rest, so that every pass has a compile-time K and keeps its states
// in registers.
template <int kMax, typename F>
void ForEachPass(int64_t n, const F& pass, int s0 = 0) {
  for (; n - s0 >= kMax; s0 += kMax) pass(std::integral_constant<int, kMax>{}, s0);
  if constexpr (kMax > 1)
    if (s0 < n) ForEachPass<kMax / 2>(n, pass, s0);
}

// Runs `fn(item)` for items 0 .. count - 1 on the caller and the pool's threads. Threads
// claim items from a shared counter, and the caller waits only for claimed items, so a
// task that starts late (or never) cannot stall it.
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t count, const F& fn) {
  struct Progress {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto progress = std::make_shared<Progress>();
  auto work = [progress, count, &fn] {
    for (int64_t i; (i = progress->next.fetch_add(1)) < count;) {
      fn(i);
      progress->done.fetch_add(1);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), count) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule(decltype(work)(work));
  work();
  while (progress->done.load() < count) std::this_thread::yield();
}

constexpr int kTile = 16;  // steps whose decays a forward pass computes before it walks them
constexpr int kReadouts = 4;  // partial readouts: one chain of K dependent adds would set the pace

// The step-th time in processing order.
inline int64_t Time(const Shape& s, int64_t step, bool reverse) { return reverse ? s.length - 1 - step : step; }

// Decays, Walk and BackwardPass hold the loops over time. They are not inlined: each gets the
// whole register file, and its own function in scripts/kernel_asm_report.py's counts.

// exp(delta_t A) of the states [s0, s0 + K) of a block at the steps [start, end): K vectors
// per step, `stride` vectors apart.
template <int K>
__attribute__((noinline)) void Decays(const Shape& s, const Block& block, int s0, bool reverse, int64_t start,
                                      int64_t end, vf* decay, int64_t stride) {
  for (int k = 0; k < K; ++k) {
    const vf a = block.A2[s0 + k];
    for (int64_t step = start; step < end; ++step)
      decay[(step - start) * stride + k] = Exp2(Load(block.delta + Time(s, step, reverse) * block.stride) * a);
  }
}

// Walks the states [s0, s0 + K) of a block over the steps [start, end) from h_{start - 1} in
// `state` (K vectors, left holding h_{end - 1}), with the decays of Decays: adds their share
// of <h_t, C_t> to y (stores it, when `first`); with kSave, stores h_t K vectors before each
// step's decays instead.
template <int K, bool kSave>
__attribute__((noinline)) void Walk(const Shape& s, const Block& block, int s0, bool reverse, bool first,
                                    int64_t start, int64_t end, vf* decay, int64_t stride, vf* state) {
  vf h[K];
  Unrolled<K>([&](auto k) { h[k] = state[k]; });
  for (int64_t step = start; step < end; ++step) {
    const int64_t t = Time(s, step, reverse), at = t * block.stride;
    const vf dtu = Load(block.delta + at) * Load(block.u + at);
    const float* Bt = block.B + t * s.state + s0;
    const float* Ct = block.C + t * s.state + s0;
    vf* a = decay + (step - start) * stride;
    vf out[kReadouts] = {};
    Unrolled<K>([&](auto k) {
      h[k] = a[k] * h[k] + dtu * Bt[k];
      if constexpr (kSave)
        a[k - K] = h[k];
      else
        out[k % kReadouts] += h[k] * Ct[k];
    });
    if constexpr (!kSave) {
      vf y = out[0];
      for (int i = 1; i < kReadouts; ++i) y += out[i];
      Store(block.y + at, first ? y : y + Load(block.y + at));
    }
  }
  Unrolled<K>([&](auto k) { state[k] = h[k]; });
}

// The states [s0, s0 + K) of a block over time (backwards with `reverse`), kTile steps at a
// time, from h0 (K vectors; zeros when null), leaving the last state in h_last (K vectors, may
// be h0; when not null). Adds their share of <h_t, C_t> to y (stores it, when `first`); with
// kSave, keeps h_t and exp(delta_t A) of every step in `saved` instead: 2K vectors per step in
// processing order, after a first step whose h is the initial one (h_{-1}).
// `scratch`: (kTile + 1) * K vectors.
template <int K, bool kSave>
void ForwardPass(const Shape& s, const Block& block, int s0, bool reverse, bool first, vf* saved, vf* scratch,
                 const vf* h0 = nullptr, vf* h_last = nullptr) {
  vf* state = scratch;
  if (h0)
    std::copy(h0, h0 + K, state);
  else
    std::fill(state, state + K, vf{});
  if constexpr (kSave) std::copy(state, state + K, saved);
  for (int64_t start = 0; start < s.length; start += kTile) {
    const int64_t end = std::min(s.length, start + kTile), stride = kSave ? 2 * K : K;
    vf* decay = kSave ? saved + 2 * K * (start + 1) + K : scratch + K;
    Decays<K>(s, block, s0, reverse, start, end, decay, stride);
    Walk<K, kSave>(s, block, s0, reverse, first, start, end, decay, stride, state);
  }
  if (h_last) std::copy(state, state + K, h_last);
}

// The reverse walk over the states [s0, s0 + K) of a block, from what ForwardPass<K, true>
// saved (h_{t-1}, then h_t and exp(delta_t A) of each step t): adds their share of
// dLoss/du and dLoss/ddelta to du and ddelta (stores it, when `first`), stores their dA, and
// adds the block's dB and dC to dBC ((L, N, 2) in time order, and kLanes floats to spare).
template <int K>
__attribute__((noinline)) void BackwardPass(const Shape& s, const Block& block, int s0, bool reverse, bool first,
                                            const vf* saved, float* dBC) {
  const vf* A2 = block.A2 + s0;
  vf g[K], dA[K];
  Unrolled<K>([&](auto k) { g[k] = dA[k] = vf{}; });
  for (int64_t step = s.length - 1; step >= 0; --step) {
    const int64_t t = Time(s, step, reverse), at = t * block.stride;
    const vf dt = Load(block.delta + at), dyt = Load(block.dy + at), dtu = dt * Load(block.u + at);
    const float* Bt = block.B + t * s.state + s0;
    const float* Ct = block.C + t * s.state + s0;
    const vf* h = saved + 2 * K * (step + 1);
    const vf *decay = h + K, *h_prev = h - 2 * K;
    LaneSums sums(dBC + (t * s.state + s0) * 2);
    vf ddtu = {}, ddt = {};
    Unrolled<K>([&](auto k) {
      const vf gn = g[k] + dyt * Ct[k];  // dLoss/dh_t
      sums.Add<2 * decltype(k)::value>(gn * dtu);  // dB
      sums.Add<2 * decltype(k)::value + 1>(h[k] * dyt);  // dC
      ddtu += gn * Bt[k];
      const vf w = gn * (decay[k] * h_prev[k]);  // dLoss/d(delta_t A)
      ddt += w * A2[k];
      dA[k] += w * dt;
      g[k] = decay[k] * gn;
    });
    sums.Finish<2 * K>();
    // u again rather than a register held through the states; A2 carries a factor log2(e).
    const vf du = ddtu * dt, ddelta = ddt * kLn2 + ddtu * Load(block.u + at);
    Store(block.du + at, first ? du : du + Load(block.du + at));
    Store(block.ddelta + at, first ? ddelta : ddelta + Load(block.ddelta + at));
  }
  Unrolled<K>([&](auto k) { Store(block.dA + (s0 + k) * s.blocks() * kLanes, dA[k]); });
}

// The backward pass over the blocks [first, last) of batch row b: a block's passes one after
// the other, while its rows are in cache; dB and dC are summed over the group in (L, N, 2).
void BackwardGroup(const Shape& s, const Tensors& x, int64_t b, int64_t group, int64_t first, int64_t last,
                   bool reverse) {
  const int64_t L = s.length, N = s.state;
  std::vector<vf> saved(2 * kBackwardStates * (L + 1)), scratch((kTile + 1) * kBackwardStates);
  std::vector<float> dBC(2 * L * N + kLanes);
  for (int64_t index = first; index < last; ++index) {
    const Block block(s, x, b, index);
    ForEachPass<kBackwardStates>(N, [&](auto states, int s0) {
      constexpr int K = decltype(states)::value;
      ForwardPass<K, true>(s, block, s0, reverse, false, saved.data(), scratch.data());
      BackwardPass<K>(s, block, s0, reverse, s0 == 0, saved.data(), dBC.data());
    });
    block.Finish(s, x, b, index);
  }
  float* dB = x.dB + (group * s.batch + b) * L * N;
  float* dC = x.dC + (group * s.batch + b) * L * N;
  for (int64_t i = 0; i < L * N; ++i) dB[i] = dBC[2 * i], dC[i] = dBC[2 * i + 1];
}

ffi::ErrorOr<Shape> CheckShapes(ffi::Buffer<ffi::F32>& u, ffi::Buffer<ffi::F32>& delta, ffi::Buffer<ffi::F32>& A,
                                ffi::Buffer<ffi::F32>& B, ffi::Buffer<ffi::F32>& C) {
  auto du = u.dimensions(), da = A.dimensions(), db = B.dimensions(), dc = C.dimensions();
  if (du.size() != 3 || da.size() != 2 || db.size() != 3 || dc.size() != 3)
    return ffi::Unexpected(ffi::Error::InvalidArgument("selective scan: u, delta (B, L, D), A (D, N), B, C (B, L, N) expected"));
  Shape s{du[0], du[1], du[2], da[1]};
  auto same = [](auto x, std::initializer_list<int64_t> y) { return std::equal(x.begin(), x.end(), y.begin(), y.end()); };
  if (!same(delta.dimensions(), {s.batch, s.length, s.dim}) || da[0] != s.dim ||
      !same(db, {s.batch, s.length, s.state}) || !same(dc, {s.batch, s.length, s.state}))
    return ffi::Unexpected(ffi::Error::InvalidArgument("selective scan: inconsistent shapes of u, delta, A, B, C"));
  if (s.state < 1) return ffi::Unexpected(ffi::Error::InvalidArgument("selective scan: N must be at least 1"));
  return s;
}

// The (B, D, N) state of one block of channels of batch row b as N vectors of kLanes channels,
// zeros past the row's width; and back.
void GatherState(const Shape& s, const float* h, int64_t b, int64_t index, int width, vf* out) {
  float* lanes = reinterpret_cast<float*>(out);  // (N, kLanes)
  std::fill(lanes, lanes + s.state * kLanes, 0.0f);
  const float* row = h + (b * s.dim + index * kLanes) * s.state;
  for (int lane = 0; lane < width; ++lane)
    for (int64_t n = 0; n < s.state; ++n) lanes[n * kLanes + lane] = row[lane * s.state + n];
}

void ScatterState(const Shape& s, const vf* state, int64_t b, int64_t index, int width, float* h) {
  const float* lanes = reinterpret_cast<const float*>(state);
  float* row = h + (b * s.dim + index * kLanes) * s.state;
  for (int lane = 0; lane < width; ++lane)
    for (int64_t n = 0; n < s.state; ++n) row[lane * s.state + n] = lanes[n * kLanes + lane];
}

// The readout y; optionally from an initial state h0 (B, D, N) (zeros without it) and returning the
// last state h_last (B, D, N): a sequence read in pieces, each from the state the previous one ended in.
ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> u, ffi::Buffer<ffi::F32> delta, ffi::Buffer<ffi::F32> A,
                   ffi::Buffer<ffi::F32> B, ffi::Buffer<ffi::F32> C, std::optional<ffi::Buffer<ffi::F32>> h0,
                   ffi::ResultBuffer<ffi::F32> y, std::optional<ffi::ResultBuffer<ffi::F32>> h_last, int32_t reverse) {
  auto shape = CheckShapes(u, delta, A, B, C);
  if (shape.has_error()) return shape.error();
  const Shape s = shape.value();
  const int64_t state_size = s.batch * s.dim * s.state;
  if ((h0 && static_cast<int64_t>(h0->element_count()) != state_size) ||
      (h_last && static_cast<int64_t>((*h_last)->element_count()) != state_size))
    return ffi::Error::InvalidArgument("selective scan: the states h0 and h_last are (B, D, N)");
  const float* initial = h0 ? h0->typed_data() : nullptr;
  float* last = h_last ? (*h_last)->typed_data() : nullptr;
  const std::vector<vf> A2 = TransposeA(s, A.typed_data());
  const Tensors x{u.typed_data(), delta.typed_data(), B.typed_data(), C.typed_data(), nullptr, y->typed_data(),
                  nullptr, nullptr, nullptr, nullptr, nullptr, A2.data()};
  ParallelFor(pool, s.batch * s.blocks(), [&](int64_t item) {
    const int64_t b = item / s.blocks(), index = item % s.blocks();
    const Block block(s, x, b, index);
    std::vector<vf> scratch((kTile + 1) * kForwardStates), state(initial || last ? s.state : 0);
    if (initial) GatherState(s, initial, b, index, block.width, state.data());
    ForEachPass<kForwardStates>(s.state, [&](auto states, int s0) {
      ForwardPass<decltype(states)::value, false>(s, block, s0, reverse, s0 == 0, nullptr, scratch.data(),
                                                  initial ? state.data() + s0 : nullptr,
                                                  last ? state.data() + s0 : nullptr);
    });
    if (last) ScatterState(s, state.data(), b, index, block.width, last);
    block.Finish(s, x, b, index);
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> u, ffi::Buffer<ffi::F32> delta, ffi::Buffer<ffi::F32> A,
                    ffi::Buffer<ffi::F32> B, ffi::Buffer<ffi::F32> C, ffi::Buffer<ffi::F32> dy,
                    ffi::ResultBuffer<ffi::F32> du, ffi::ResultBuffer<ffi::F32> ddelta, ffi::ResultBuffer<ffi::F32> dA,
                    ffi::ResultBuffer<ffi::F32> dB, ffi::ResultBuffer<ffi::F32> dC, int32_t reverse) {
  auto shape = CheckShapes(u, delta, A, B, C);
  if (shape.has_error()) return shape.error();
  const Shape s = shape.value();
  const int64_t groups = dB->dimensions()[0];  // channel groups per batch row, chosen by the caller
  const std::vector<vf> A2 = TransposeA(s, A.typed_data());
  const Tensors x{u.typed_data(),  delta.typed_data(), B.typed_data(),  C.typed_data(), dy.typed_data(),
                  nullptr,         du->typed_data(),   ddelta->typed_data(), dA->typed_data(), dB->typed_data(),
                  dC->typed_data(), A2.data()};
  const int64_t per_group = (s.blocks() + groups - 1) / groups;
  ParallelFor(pool, s.batch * groups, [&](int64_t item) {
    const int64_t b = item / groups, group = item % groups;
    const int64_t first = std::min(group * per_group, s.blocks()), last = std::min(first + per_group, s.blocks());
    BackwardGroup(s, x, b, group, first, last, reverse);
  });
  return ffi::Error::Success();
}


// ---- Inference: fused kernels without a gradient of their own. ----

// log(1 + e) for e in [0, 1] to 2e-9: 2 atanh(s) with s = e / (2 + e) <= 1/3, eight odd terms.
inline vf Log1pUnit(vf e) {
  const vf s = e / (e + 2.0f), s2 = s * s;
  vf p = Splat(1.0f / 15);
  for (float c : {1.0f / 13, 1.0f / 11, 1.0f / 9, 1.0f / 7, 1.0f / 5, 1.0f / 3, 1.0f}) p = p * s2 + c;
  return 2.0f * s * p;
}

inline vf Max(vf a, vf b) { return a > b ? a : b; }
inline vf Abs(vf a) { return a < 0.0f ? -a : a; }

// softplus(x) = max(x, 0) + log1p(exp(-|x|)), as jax.nn.softplus.
inline vf Softplus(vf x) { return Max(x, vf{}) + Log1pUnit(Exp2(-Abs(x) * kLog2e)); }

// silu(x) = x / (1 + exp(-x)).
inline vf Silu(vf x) { return x / (Exp2(-x * kLog2e) + 1.0f); }

// Loads channels [d0, d0 + width) of a row, zeros past width.
inline vf LoadPart(const float* p, int width) {
  if (width == kLanes) return Load(p);
  vf v{};
  std::memcpy(&v, p, width * sizeof(float));
  return v;
}

inline void StorePart(float* p, vf v, int width) {
  if (width == kLanes)
    Store(p, v);
  else
    std::memcpy(p, &v, width * sizeof(float));
}

// u = silu(conv(x) + bias), x the channels [0, D) of rows of `stride` floats (in_proj's x half):
// output t sees x[t - K + 1 .. t] (with `reverse`, x[t .. t + K - 1], taps in reverse order).
ffi::Error ConvSilu(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> bias,
                    ffi::ResultBuffer<ffi::F32> u, int32_t reverse) {
  const auto dx = x.dimensions(), dw = w.dimensions(), du = u->dimensions();
  if (dx.size() != 3 || dw.size() != 2 || du.size() != 3 || static_cast<int64_t>(bias.element_count()) != dw[1] ||
      du[2] != dw[1] ||
      dx[2] < du[2] || dx[0] != du[0] || dx[1] != du[1])
    return ffi::Error::InvalidArgument(("conv: x (B, L, >= D), w (K, D), bias (D,) -> u (B, L, D) expected"));
  const int64_t batch = du[0], L = du[1], D = du[2], stride = dx[2], K = dw[0], blocks = (D + kLanes - 1) / kLanes;
  const float *xs = x.typed_data(), *ws = w.typed_data(), *bs = bias.typed_data();
  float* us = u->typed_data();
  ParallelFor(pool, batch * blocks, [&](int64_t item) {
    const int64_t b = item / blocks, d0 = item % blocks * kLanes;
    const int width = static_cast<int>(std::min<int64_t>(kLanes, D - d0));
    std::vector<vf> taps(K);
    for (int64_t k = 0; k < K; ++k) taps[k] = LoadPart(ws + k * D + d0, width);
    const vf b0 = LoadPart(bs + d0, width);
    const float* row = xs + b * L * stride + d0;
    for (int64_t t = 0; t < L; ++t) {
      vf acc = b0;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t from = reverse ? t + K - 1 - k : t - K + 1 + k;
        if (from >= 0 && from < L) acc += taps[k] * LoadPart(row + from * stride, width);
      }
      StorePart(us + (b * L + t) * D + d0, Silu(acc), width);
    }
  });
  return ffi::Error::Success();
}

// One direction's inputs: u, delta before its bias and softplus (B, L, D), A (D, N), B, C (B, L, N), D and
// the delta bias (D,).
struct Direction {
  const float *u, *delta, *B, *C, *skip, *bias;
  std::vector<vf> A2;
};

// scale * sum over the directions of (<h_t, C_t> + D u_t), times silu(z): the first direction forward in
// time, the second backward; z is the channels [z_offset, z_offset + D) of rows of z_stride floats.
ffi::Error ScanInference(ffi::ThreadPool pool, ffi::RemainingArgs args, ffi::ResultBuffer<ffi::F32> y,
                         int32_t directions, float scale, int64_t z_offset) {
  if (directions < 1 || directions > 2 || args.size() != 6 * 2 + 3)
    return ffi::Error::InvalidArgument(("scan inference: 2 x (u, delta, A, B, C, D, bias) and z expected"));
  auto arg = [&](size_t i) { return args.get<ffi::Buffer<ffi::F32>>(i).value(); };
  const auto dy = y->dimensions();
  const auto dA = arg(2).dimensions(), dz = arg(14).dimensions();
  if (dy.size() != 3 || dA.size() != 2 || dz.size() != 3 || dz[2] < z_offset + dy[2])
    return ffi::Error::InvalidArgument(("scan inference: y (B, L, D), A (D, N), z (B, L, >= 2D) expected"));
  const Shape s{dy[0], dy[1], dy[2], dA[1]};
  const int64_t z_stride = dz[2];
  Direction dir[2];
  for (int k = 0; k < directions; ++k) {
    const size_t at = k == 0 ? 0 : 7;
    auto u = arg(at), delta = arg(at + 1), A = arg(at + 2), B = arg(at + 3), C = arg(at + 4), skip = arg(at + 5),
         bias = arg(at + 6);
    const auto count = [](const ffi::Buffer<ffi::F32>& x) { return static_cast<int64_t>(x.element_count()); };
    if (count(u) != s.batch * s.length * s.dim || count(delta) != count(u) || count(A) != s.dim * s.state ||
        count(B) != s.batch * s.length * s.state || count(C) != count(B) || count(skip) != s.dim || count(bias) != s.dim)
      return ffi::Error::InvalidArgument(("scan inference: inconsistent shapes"));
    dir[k] = {u.typed_data(), delta.typed_data(), B.typed_data(), C.typed_data(), skip.typed_data(),
              bias.typed_data(), TransposeA(s, A.typed_data())};
  }
  const float* z = arg(14).typed_data() + z_offset;
  float* out = y->typed_data();
  const int64_t L = s.length, N = s.state;
  ParallelFor(pool, s.batch * s.blocks(), [&](int64_t item) {
    const int64_t b = item / s.blocks(), index = item % s.blocks(), d0 = index * kLanes;
    const int width = static_cast<int>(std::min<int64_t>(kLanes, s.dim - d0));
    // Per direction (L, kLanes) rows of u, softplus(delta + bias) and the readout, each written before
    // it is read (so not zeroed); the sum in acc.
    const std::unique_ptr<vf[]> rows(new vf[3 * L * 2]), acc(new vf[L]), scratch(new vf[(kTile + 1) * kForwardStates]);
    for (int k = 0; k < directions; ++k) {
      const Direction& d = dir[k];
      const bool shared = k == 1 && d.u == dir[0].u && d.delta == dir[0].delta && d.bias == dir[0].bias;
      vf *u = &rows[(3 * k) * L], *delta = &rows[(3 * k + 1) * L], *readout = &rows[(3 * k + 2) * L];
      if (shared) {
        u = &rows[0], delta = &rows[L];
      } else {
        const vf bias = LoadPart(d.bias + d0, width);
        const int64_t at = b * L * s.dim + d0;
        for (int64_t t = 0; t < L; ++t) {
          u[t] = LoadPart(d.u + at + t * s.dim, width);
          delta[t] = Softplus(LoadPart(d.delta + at + t * s.dim, width) + bias);
        }
      }
      const Block block(reinterpret_cast<const float*>(u), reinterpret_cast<const float*>(delta),
                        reinterpret_cast<float*>(readout), d.B + b * L * N, d.C + b * L * N, d.A2.data() + index * N);
      ForEachPass<kForwardStates>(N, [&](auto states, int s0) {
        ForwardPass<decltype(states)::value, false>(s, block, s0, k == 1, s0 == 0, nullptr, scratch.get());
      });
      const vf skip = LoadPart(d.skip + d0, width);
      for (int64_t t = 0; t < L; ++t) acc[t] = (k == 0 ? vf{} : acc[t]) + readout[t] + skip * u[t];
    }
    const float* zrow = z + b * L * z_stride + d0;
    float* yrow = out + b * L * s.dim + d0;
    for (int64_t t = 0; t < L; ++t)
      StorePart(yrow + t * s.dim, acc[t] * scale * Silu(LoadPart(zrow + t * z_stride, width)), width);
  });
  return ffi::Error::Success();
}

}  // namespace

// What the library was built for, read by cpu_scan.py: the instruction set and the float32
// channels per vector (the backward's channel groups are counted in blocks of them).
extern "C" const char* AumScanIsa() { return kIsa; }
extern "C" int AumScanLanes() { return kLanes; }

using F32 = ffi::Buffer<ffi::F32>;

// The thread pool and the inputs both kernels take: u, delta, A, B, C.
auto BindScanInputs() { return ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>(); }

XLA_FFI_DEFINE_HANDLER_SYMBOL(AumScanForward, Forward,
                              BindScanInputs()
                                  .OptionalArg<F32>()  // h0 (B, D, N): the initial state, zeros without it
                                  .Ret<F32>()  // y
                                  .OptionalRet<F32>()  // h_last (B, D, N): the last state
                                  .Attr<int32_t>("reverse"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(AumScanBackward, Backward,
                              BindScanInputs()
                                  .Arg<F32>()  // dy
                                  .Ret<F32>()  // du
                                  .Ret<F32>()  // ddelta
                                  .Ret<F32>()  // dA partials (B, N, blocks * kLanes)
                                  .Ret<F32>()  // dB partials (G, B, L, N)
                                  .Ret<F32>()  // dC partials (G, B, L, N)
                                  .Attr<int32_t>("reverse"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(AumConvSilu, ConvSilu,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>()  // x (B, L, >= D): in_proj's output, the x half first
                                  .Arg<F32>()  // conv weight (K, D)
                                  .Arg<F32>()  // conv bias (D,)
                                  .Ret<F32>()  // u (B, L, D)
                                  .Attr<int32_t>("reverse"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(AumScanInference, ScanInference,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .RemainingArgs()  // 2 x (u, delta, A, B, C, D, bias), z
                                  .Ret<F32>()  // y (B, L, D)
                                  .Attr<int32_t>("directions")
                                  .Attr<float>("scale")
                                  .Attr<int64_t>("z_offset"));
