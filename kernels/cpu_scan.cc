// The selective scan (Mamba's S6 recurrence) for XLA's CPU backend, called through the
// XLA FFI by kernels/cpu_scan.py, which compiles this file on first use.
//
// Per batch b, channel d and state n, over time t (or backwards in time with `reverse`):
//
//   h_t = exp(delta_t * A) * h_{t-1} + delta_t * u_t * B_t,     y_t = <h_t, C_t>
//
// Tensors are row-major and channels-last: u, delta, y (B, L, D); B, C (B, L, N); A (D, N).
// The delta bias, softplus, D skip and gate are elementwise and stay in XLA.
//
// A work item holds one batch row and a group of 16-channel blocks. Sixteen channels are
// one vector (GCC vector extensions: AVX-512 where the CPU has it, split otherwise), and
// the N states of a block stay in registers while time advances, so the (B, L, D, N)
// state tensor is never written to memory. The backward pass recomputes a block's states
// into a scratch of L * N vectors (66 KB at L = 65, N = 16), then walks time in reverse.
// Work items are shared with the threads of XLA's intra-op pool.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kLanes = 16;  // channels per vector
constexpr int kMaxState = 64;  // the largest N supported (Mamba uses 16)

typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline vf Splat(float x) { return vf{} + x; }

// The first `n` lanes from `p`, zeros in the rest.
// (A fixed-size copy is one vector load; only the last block of a row takes the other.)
inline vf Load(const float* p, int n) {
  vf v = {};
  if (n == kLanes)
    std::memcpy(&v, p, sizeof(v));
  else
    std::memcpy(&v, p, n * sizeof(float));
  return v;
}

inline void Store(float* p, vf v, int n) {
  if (n == kLanes)
    std::memcpy(p, &v, sizeof(v));
  else
    std::memcpy(p, &v, n * sizeof(float));
}

inline float Sum(vf v) {
  float s = 0.0f;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}

// exp(x) to about 1 ulp: x = k ln2 + r with |r| <= ln2 / 2, a degree-7 polynomial for
// exp(r) (Cephes' expf coefficients), and 2^k built in the exponent bits. Arguments are
// clamped to [-87.3, 88.3], so exp of a very negative x is 1e-38 rather than 0.
inline vf Exp(vf x) {
  x = x < Splat(-87.3f) ? Splat(-87.3f) : x;
  x = x > Splat(88.3f) ? Splat(88.3f) : x;
  const vf round = Splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  vf k = (x * 1.44269504088896341f + round) - round;
  vf r = x - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  vf p = Splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  vi bits = (__builtin_convertvector(k, vi) + 127) << 23;
  vf scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

struct Shape {
  int64_t batch, length, dim, state;
  int64_t blocks() const { return (dim + kLanes - 1) / kLanes; }
};

struct Inputs {
  const float *u, *delta, *A, *B, *C;
};

// A[d0 : d0 + width, n] as one vector per n.
inline void LoadA(const Shape& s, const float* A, int64_t d0, int width, vf* At) {
  for (int n = 0; n < s.state; ++n) {
    At[n] = vf{};
    for (int i = 0; i < width; ++i) At[n][i] = A[(d0 + i) * s.state + n];
  }
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

// The forward pass over one block; with `states`, also stores h after each step (in
// processing order) as L * N vectors.
template <int kState>
void ForwardBlock(const Shape& s, const Inputs& in, int64_t b, int64_t d0, bool reverse, float* y, vf* states) {
  const int N = kState ? kState : s.state;
  const int width = static_cast<int>(std::min<int64_t>(kLanes, s.dim - d0));
  vf At[kMaxState], h[kMaxState];
  LoadA(s, in.A, d0, width, At);
  for (int n = 0; n < N; ++n) h[n] = vf{};
  for (int64_t step = 0; step < s.length; ++step) {
    const int64_t row = b * s.length + (reverse ? s.length - 1 - step : step);
    const vf dt = Load(in.delta + row * s.dim + d0, width);
    const vf dtu = dt * Load(in.u + row * s.dim + d0, width);
    const float* Bt = in.B + row * N;
    const float* Ct = in.C + row * N;
    vf out = {};
    for (int n = 0; n < N; ++n) {
      h[n] = Exp(dt * At[n]) * h[n] + dtu * Bt[n];
      out += h[n] * Ct[n];
    }
    if (states != nullptr) std::copy(h, h + N, states + step * N);
    if (y != nullptr) Store(y + row * s.dim + d0, out, width);
  }
}

struct Grads {
  float *du, *ddelta, *dA, *dB, *dC;  // dA: (B, D, N) per batch row; dB, dC: (G, B, L, N) per group
};

// The backward pass over the blocks [first, last) of batch row b; dB and dC are summed over
// the group's channels in vector accumulators and reduced across lanes once at the end.
template <int kState>
void BackwardGroup(const Shape& s, const Inputs& in, const float* dy, const Grads& out, int64_t b, int64_t group,
                   int64_t first, int64_t last, bool reverse) {
  const int N = kState ? kState : s.state;
  const int64_t L = s.length;
  std::vector<vf> states(L * N), dB_acc(L * N, vf{}), dC_acc(L * N, vf{});
  vf At[kMaxState], g[kMaxState], dA[kMaxState];
  for (int64_t block = first; block < last; ++block) {
    const int64_t d0 = block * kLanes;
    const int width = static_cast<int>(std::min<int64_t>(kLanes, s.dim - d0));
    ForwardBlock<kState>(s, in, b, d0, reverse, nullptr, states.data());
    LoadA(s, in.A, d0, width, At);
    for (int n = 0; n < N; ++n) g[n] = dA[n] = vf{};
    for (int64_t step = L - 1; step >= 0; --step) {
      const int64_t row = b * L + (reverse ? L - 1 - step : step);
      const int64_t at = row * s.dim + d0;
      const vf dt = Load(in.delta + at, width), u = Load(in.u + at, width), dyt = Load(dy + at, width);
      const vf dtu = dt * u;
      const float* Bt = in.B + row * N;
      const float* Ct = in.C + row * N;
      const vf* h = states.data() + step * N;
      const vf* h_prev = step > 0 ? h - N : nullptr;
      vf* dB = dB_acc.data() + step * N;
      vf* dC = dC_acc.data() + step * N;
      vf ddtu = {}, ddt = {};
      for (int n = 0; n < N; ++n) {
        const vf gn = g[n] + dyt * Ct[n];  // dLoss/dh_t
        dC[n] += h[n] * dyt;
        dB[n] += gn * dtu;
        ddtu += gn * Bt[n];
        const vf decay = Exp(dt * At[n]);
        if (h_prev != nullptr) {
          const vf w = decay * gn * h_prev[n];  // dLoss/d(delta_t A) through the decay
          ddt += w * At[n];
          dA[n] += w * dt;
        }
        g[n] = decay * gn;
      }
      Store(out.du + at, ddtu * dt, width);
      Store(out.ddelta + at, ddt + ddtu * u, width);
    }
    for (int n = 0; n < N; ++n)
      for (int i = 0; i < width; ++i) out.dA[(b * s.dim + d0 + i) * N + n] = dA[n][i];
  }
  for (int64_t step = 0; step < L; ++step) {
    const int64_t row = b * L + (reverse ? L - 1 - step : step);
    float* dB = out.dB + (group * s.batch * L + row) * N;
    float* dC = out.dC + (group * s.batch * L + row) * N;
    for (int n = 0; n < N; ++n) {
      dB[n] = Sum(dB_acc[step * N + n]);
      dC[n] = Sum(dC_acc[step * N + n]);
    }
  }
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
  if (s.state < 1 || s.state > kMaxState)
    return ffi::Unexpected(ffi::Error::InvalidArgument("selective scan: N must be in [1, " + std::to_string(kMaxState) + "]"));
  return s;
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> u, ffi::Buffer<ffi::F32> delta, ffi::Buffer<ffi::F32> A,
                   ffi::Buffer<ffi::F32> B, ffi::Buffer<ffi::F32> C, ffi::ResultBuffer<ffi::F32> y, int32_t reverse) {
  auto shape = CheckShapes(u, delta, A, B, C);
  if (shape.has_error()) return shape.error();
  const Shape s = shape.value();
  const Inputs in{u.typed_data(), delta.typed_data(), A.typed_data(), B.typed_data(), C.typed_data()};
  float* out = y->typed_data();
  ParallelFor(pool, s.batch * s.blocks(), [&](int64_t item) {
    const int64_t b = item / s.blocks(), d0 = (item % s.blocks()) * kLanes;
    if (s.state == 16)
      ForwardBlock<16>(s, in, b, d0, reverse, out, nullptr);
    else
      ForwardBlock<0>(s, in, b, d0, reverse, out, nullptr);
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
  const Inputs in{u.typed_data(), delta.typed_data(), A.typed_data(), B.typed_data(), C.typed_data()};
  const Grads out{du->typed_data(), ddelta->typed_data(), dA->typed_data(), dB->typed_data(), dC->typed_data()};
  const int64_t per_group = (s.blocks() + groups - 1) / groups;
  ParallelFor(pool, s.batch * groups, [&](int64_t item) {
    const int64_t b = item / groups, group = item % groups;
    const int64_t first = std::min(group * per_group, s.blocks()), last = std::min(first + per_group, s.blocks());
    if (s.state == 16)
      BackwardGroup<16>(s, in, dy.typed_data(), out, b, group, first, last, reverse);
    else
      BackwardGroup<0>(s, in, dy.typed_data(), out, b, group, first, last, reverse);
  });
  return ffi::Error::Success();
}

}  // namespace

using F32 = ffi::Buffer<ffi::F32>;

// The thread pool and the inputs both kernels take: u, delta, A, B, C.
auto BindScanInputs() { return ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>(); }

XLA_FFI_DEFINE_HANDLER_SYMBOL(AumScanForward, Forward, BindScanInputs().Ret<F32>().Attr<int32_t>("reverse"));  // -> y

XLA_FFI_DEFINE_HANDLER_SYMBOL(AumScanBackward, Backward,
                              BindScanInputs()
                                  .Arg<F32>()  // dy
                                  .Ret<F32>()  // du
                                  .Ret<F32>()  // ddelta
                                  .Ret<F32>()  // dA partials (B, D, N)
                                  .Ret<F32>()  // dB partials (G, B, L, N)
                                  .Ret<F32>()  // dC partials (G, B, L, N)
                                  .Attr<int32_t>("reverse"));
