// CPU kernels for sum aggregation, per-edge dot products and edge softmax over a CSR-ordered graph, called from JAX
// through the XLA FFI (see jgrad/ops/_native.py, which compiles this file on first use).
//
// A CSR side of a graph is (row_ptr, cols, edge_ids): the slots row_ptr[r] .. row_ptr[r+1]-1 hold
// the neighbours cols[k] of row r and the id edge_ids[k] of the edge behind each slot.
//
// Node rows have M = H * F values: H heads of F features each, head h at columns h*F .. h*F+F-1
// (a (N, H, F) array in row-major order). Edge data has one value per edge and head, (E, H); H = 1
// is the single-weight case ((E,) edge data, any row width). H is read from the edge buffer's shape
// (w, or the result of the edge dot), and must divide M.
//
//   jgrad_csr_sum:      out[r, h, :] = sum_k w[edge_ids[k], h] * u[cols[k], h, :]   (w of size 0: no weights)
//   jgrad_csr_edge_dot: out[edge_ids[k], h] = <v[r, h, :], u[cols[k], h, :]>;  edges in no slot get 0
//   jgrad_csr_sum_dot:  both at once over one side, sharing each gathered row g[cols[k]]:
//                       out[r, h, :] = sum_k w[edge_ids[k], h] * g[cols[k], h, :],
//                       dots[edge_ids[k], h] = <u[r, h, :], g[cols[k], h, :]>
//                       (the backward of a weighted sum: the node and edge cotangents in one pass)
//
// Every head is done in the same walk over the CSR: each gathered row is read once for all heads.
//
// Edge softmax over the rows (receivers), per head, for edge data of shape (E,) or (E, H); a mask of
// shape (E,) (size 0: every edge live) marks the live edges, the others get 0:
//
//   jgrad_csr_softmax:          shift[r, h] = max over live slots k of row r of logits[edge_ids[k], h]
//                               (0 where that maximum is not finite), out[e, h] = exp(logits[e, h] -
//                               shift[r, h]) / sum over live slots of that, 0 where the sum is 0
//   jgrad_csr_softmax_backward: out[e, h] = a[e, h] * (g[e, h] - sum over live slots k of row r of
//                               a[edge_ids[k], h] * g[edge_ids[k], h]), 0 for edges that are not live
//
// A row's logits are gathered once into a per-thread buffer (taking the maximum on the way), whose
// exponentials and sums are computed 16 values at a time by VectorExp (plain arithmetic, so the loop
// vectorises), then scaled and scattered back. A NaN logit makes its row's values NaN, as on the plain
// path. Edges in no slot get 0.
//
// Each output row is owned by one thread and accumulated in place, so there are no atomics and no
// (E, M) intermediate. Rows are cut into chunks of equal slot count (hubs do not unbalance them) that
// the calling thread and helpers on XLA's intra-op thread pool work through.
// float32 and float64 are supported; the index arrays are int32.

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <string>
#include <cstdint>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <limits>
#include <thread>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

int ThreadBudget() {
  static const int budget = [] {
    if (const char* env = std::getenv("JGRAD_NUM_THREADS")) {
      int value = std::atoi(env);
      if (value > 0) return value;
    }
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
    return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  }();
  return budget;
}

// Runs body(first_row, last_row) over [0, n_rows), cut into contiguous chunks of about equal slot
// counts. The calling thread works through the chunks and helper tasks on XLA's intra-op thread pool
// join in when they get a thread; the caller then waits only for chunks already taken, so a busy pool
// slows the call down but cannot deadlock it. Small problems stay on the calling thread.
template <typename Body>
void ParallelRows(ffi::ThreadPool& pool, const int32_t* row_ptr, int64_t n_rows, int64_t work, const Body& body) {
  constexpr int64_t kWorkPerThread = int64_t{1} << 16;
  const int64_t threads =
      std::min<int64_t>(ThreadBudget(), std::max<int64_t>(1, work / kWorkPerThread));
  if (threads <= 1 || n_rows < 2) {
    body(int64_t{0}, n_rows);
    return;
  }
  const int64_t n_chunks = std::min<int64_t>(n_rows, 8 * threads);
  const int64_t n_slots = row_ptr[n_rows];
  std::vector<int64_t> bounds(n_chunks + 1, n_rows);
  bounds[0] = 0;
  for (int64_t c = 1; c < n_chunks; ++c) {
    bounds[c] = std::lower_bound(row_ptr, row_ptr + n_rows + 1, n_slots * c / n_chunks) - row_ptr;
    bounds[c] = std::max(bounds[c], bounds[c - 1]);
  }
  struct Progress {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto progress = std::make_shared<Progress>();
  auto work_through = [progress, n_chunks, &bounds, &body] {
    for (int64_t c; (c = progress->next.fetch_add(1)) < n_chunks;) {
      body(bounds[c], bounds[c + 1]);
      progress->done.fetch_add(1, std::memory_order_release);
    }
  };
  // A helper that starts after every chunk is taken touches only `progress` (kept alive by its copy).
  for (int64_t t = 1; t < threads; ++t) pool.Schedule(decltype(work_through)(work_through));
  work_through();
  while (progress->done.load(std::memory_order_acquire) < n_chunks) std::this_thread::yield();
}

template <typename T>
inline void PrefetchRow(const T* row, int64_t m) {
  const char* bytes = reinterpret_cast<const char*>(row);
  for (int64_t offset = 0; offset < m * static_cast<int64_t>(sizeof(T)); offset += 64) {
    __builtin_prefetch(bytes + offset, 0, 0);
  }
}

constexpr int64_t kPrefetchDistance = 6;

// Calls body(f) with the per-head width f as a compile-time constant (std::integral_constant) for the
// common widths of several heads, so that one head's features are one vector (FixedWidth below);
// otherwise (one head, other widths) with f as a runtime value.
template <typename Body>
void WithHeadWidth(int64_t heads, int64_t f, const Body& body) {
  if (heads > 1) {
    switch (f) {
      case 8: return body(std::integral_constant<int64_t, 8>{});
      case 16: return body(std::integral_constant<int64_t, 16>{});
      case 32: return body(std::integral_constant<int64_t, 32>{});
      case 64: return body(std::integral_constant<int64_t, 64>{});
      default: break;
    }
  }
  body(f);
}

// One head's kF features as a GCC vector (lowered to the machine's vector registers). Plain loops with a
// compile-time width get vectorised across the heads instead (with permutes), which is slower.
template <typename T, int64_t kF>
struct FixedWidth {
  typedef T Vec __attribute__((vector_size(kF * sizeof(T))));

  // By reference: passing wide vectors by value depends on the target's vector ABI.
  static void Load(Vec& v, const T* p) { std::memcpy(&v, p, sizeof(Vec)); }
  static void Store(T* p, const Vec& v) { std::memcpy(p, &v, sizeof(Vec)); }
};

// The sum of the kN values at p, by halving (kN a power of two).
template <typename T, int64_t kN>
inline T SumLanes(const T* p) {
  if constexpr (kN <= 2) {
    return kN == 2 ? p[0] + p[1] : p[0];
  } else {
    using Half = FixedWidth<T, kN / 2>;
    typename Half::Vec low, high;
    Half::Load(low, p);
    Half::Load(high, p + kN / 2);
    low += high;
    T folded[kN / 2];
    Half::Store(folded, low);
    return SumLanes<T, kN / 2>(folded);
  }
}

// acc[h*f + j] += w[h] * row[h*f + j] for every head h < heads and feature j < f.
template <typename T>
inline void AddScaled(T* __restrict__ acc, const T* __restrict__ row, const T* __restrict__ w, int64_t heads,
                      int64_t f) {
  for (int64_t h = 0; h < heads; ++h) {
    const T scale = w[h];
    T* __restrict__ a = acc + h * f;
    const T* __restrict__ x = row + h * f;
    for (int64_t j = 0; j < f; ++j) a[j] += scale * x[j];
  }
}

template <typename T, int64_t kF>
inline void AddScaled(T* __restrict__ acc, const T* __restrict__ row, const T* __restrict__ w, int64_t heads,
                      std::integral_constant<int64_t, kF>) {
  using V = FixedWidth<T, kF>;
  for (int64_t h = 0; h < heads; ++h) {
    typename V::Vec a, x;
    V::Load(a, acc + h * kF);
    V::Load(x, row + h * kF);
    a += w[h] * x;
    V::Store(acc + h * kF, a);
  }
}

template <typename T>
void CsrSum(ffi::ThreadPool& pool, const int32_t* row_ptr, const int32_t* cols, const int32_t* edge_ids, const T* u,
            const T* w, bool weighted, int64_t n_rows, int64_t m, int64_t heads, T* out) {
  WithHeadWidth(heads, m / heads, [&](auto f) {
    ParallelRows(pool, row_ptr, n_rows, static_cast<int64_t>(row_ptr[n_rows]) * m, [&](int64_t first, int64_t last) {
      for (int64_t r = first; r < last; ++r) {
        T* __restrict__ acc = out + r * m;
        std::fill(acc, acc + m, T(0));
        const int64_t begin = row_ptr[r], end = row_ptr[r + 1];
        for (int64_t k = begin; k < end; ++k) {
          if (k + kPrefetchDistance < end) PrefetchRow(u + static_cast<int64_t>(cols[k + kPrefetchDistance]) * m, m);
          const T* __restrict__ row = u + static_cast<int64_t>(cols[k]) * m;
          if (weighted) {
            AddScaled(acc, row, w + static_cast<int64_t>(edge_ids[k]) * heads, heads, f);
          } else {
            for (int64_t j = 0; j < m; ++j) acc[j] += row[j];
          }
        }
      }
    });
  });
}

template <typename T>
inline T Dot(const T* __restrict__ a, const T* __restrict__ b, int64_t m) {
  constexpr int kLanes = 8;
  T lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= m; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] += a[j + l] * b[j + l];
  }
  T total = 0;
  for (; j < m; ++j) total += a[j] * b[j];
  for (int l = 0; l < kLanes; ++l) total += lanes[l];
  return total;
}

// dots[h] = <own[h*f ..], row[h*f ..]> for every head h < heads.
template <typename T>
inline void HeadDots(const T* own, const T* row, int64_t heads, int64_t f, T* dots) {
  for (int64_t h = 0; h < heads; ++h) dots[h] = Dot(own + h * f, row + h * f, f);
}

template <typename T, int64_t kF>
inline void HeadDots(const T* own, const T* row, int64_t heads, std::integral_constant<int64_t, kF>, T* dots) {
  using V = FixedWidth<T, kF>;
  for (int64_t h = 0; h < heads; ++h) {
    typename V::Vec a, x;
    V::Load(a, own + h * kF);
    V::Load(x, row + h * kF);
    a *= x;
    T products[kF];
    V::Store(products, a);
    dots[h] = SumLanes<T, kF>(products);
  }
}

template <typename T>
void CsrEdgeDot(ffi::ThreadPool& pool, const int32_t* row_ptr, const int32_t* cols, const int32_t* edge_ids,
                const T* u, const T* v, int64_t n_rows, int64_t m, int64_t heads, int64_t n_edges, T* out) {
  std::fill(out, out + n_edges * heads, T(0));
  WithHeadWidth(heads, m / heads, [&](auto f) {
    ParallelRows(pool, row_ptr, n_rows, static_cast<int64_t>(row_ptr[n_rows]) * m, [&](int64_t first, int64_t last) {
      for (int64_t r = first; r < last; ++r) {
        const T* own = v + r * m;
        const int64_t begin = row_ptr[r], end = row_ptr[r + 1];
        for (int64_t k = begin; k < end; ++k) {
          if (k + kPrefetchDistance < end) PrefetchRow(u + static_cast<int64_t>(cols[k + kPrefetchDistance]) * m, m);
          const T* row = u + static_cast<int64_t>(cols[k]) * m;
          HeadDots(own, row, heads, f, out + static_cast<int64_t>(edge_ids[k]) * heads);
        }
      }
    });
  });
}

template <typename T>
void CsrSumDot(ffi::ThreadPool& pool, const int32_t* row_ptr, const int32_t* cols, const int32_t* edge_ids,
               const T* g, const T* u, const T* w, int64_t n_rows, int64_t m, int64_t heads, int64_t n_edges,
               T* out, T* dots) {
  std::fill(dots, dots + n_edges * heads, T(0));
  WithHeadWidth(heads, m / heads, [&](auto f) {
    ParallelRows(pool, row_ptr, n_rows, static_cast<int64_t>(row_ptr[n_rows]) * m, [&](int64_t first, int64_t last) {
      for (int64_t r = first; r < last; ++r) {
        T* __restrict__ acc = out + r * m;
        const T* own = u + r * m;
        std::fill(acc, acc + m, T(0));
        const int64_t begin = row_ptr[r], end = row_ptr[r + 1];
        for (int64_t k = begin; k < end; ++k) {
          if (k + kPrefetchDistance < end) PrefetchRow(g + static_cast<int64_t>(cols[k + kPrefetchDistance]) * m, m);
          const T* __restrict__ row = g + static_cast<int64_t>(cols[k]) * m;
          const int64_t edge = static_cast<int64_t>(edge_ids[k]) * heads;
          HeadDots(own, row, heads, f, dots + edge);
          AddScaled(acc, row, w + edge, heads, f);
        }
      }
    });
  });
}

// Calls body(heads) with the number of heads as a compile-time constant (std::integral_constant) for
// 1, 2, 4 and 8 heads, so that the per-head loops unroll; otherwise with heads as a runtime value.
template <typename Body>
void WithHeads(int64_t heads, const Body& body) {
  switch (heads) {
    case 1: return body(std::integral_constant<int64_t, 1>{});
    case 2: return body(std::integral_constant<int64_t, 2>{});
    case 4: return body(std::integral_constant<int64_t, 4>{});
    case 8: return body(std::integral_constant<int64_t, 8>{});
    default: return body(heads);
  }
}

// Per-row scratch of the softmax kernels: 2 * heads values on the stack for up to kStackHeads heads.
template <typename T>
struct RowScratch {
  static constexpr int64_t kStackHeads = 16;
  T stack[2 * kStackHeads];
  std::vector<T> heap;
  explicit RowScratch(int64_t heads) {
    if (heads > kStackHeads) heap.resize(2 * heads);
  }
  T* data() { return heap.empty() ? stack : heap.data(); }
};

template <typename T>
inline void PrefetchEdge(const T* base, int64_t edge, int64_t heads) {
  __builtin_prefetch(base + edge * heads, 0, 0);
}

// exp(x) for float32 and float64 written with plain arithmetic, so that a loop of them vectorises (the
// library's exp is a scalar call, which made the softmax kernel several times slower than XLA's
// vectorised exponential). Cody-Waite reduction x = n ln2 + r with |r| <= ln2 / 2, then exp(r) by the
// Cephes approximations (a polynomial in float32, a rational function in float64; within about 1 ulp),
// and 2^n applied as two factors so that results down in the subnormal range and up to the largest
// finite value come out right. x below the underflow bound (-inf included) gives 0, above the
// overflow bound +inf, NaN gives NaN.
template <typename T>
struct ExpTraits;

template <>
struct ExpTraits<float> {
  using Bits = int32_t;
  static constexpr float kLow = -104.0f, kHigh = 89.0f, kMagic = 12582912.0f;  // 1.5 * 2^23
  static constexpr float kLn2High = 0.693359375f, kLn2Low = -2.12194440e-4f;
  static constexpr int kMantissa = 23, kBias = 127;
  __attribute__((always_inline)) static float Reduced(float r) {  // exp(r) for |r| <= ln2 / 2
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    return p * r * r + r + 1.0f;
  }
};

template <>
struct ExpTraits<double> {
  using Bits = int64_t;
  static constexpr double kLow = -746.0, kHigh = 710.0, kMagic = 6755399441055744.0;  // 1.5 * 2^52
  static constexpr double kLn2High = 6.93145751953125e-1, kLn2Low = 1.42860682030941723212e-6;
  static constexpr int kMantissa = 52, kBias = 1023;
  __attribute__((always_inline)) static double Reduced(double r) {
    const double rr = r * r;
    const double p =
        r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr + 9.99999999999999999910e-1);
    const double q = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr +
                      2.27265548208155028766e-1) * rr + 2.00000000000000000009e0;
    return 1.0 + 2.0 * p / (q - p);
  }
};

template <typename T>
__attribute__((always_inline)) inline T VectorExp(T x) {
  using E = ExpTraits<T>;
  using Bits = typename E::Bits;
  T c = x > E::kLow ? x : E::kLow;  // NaN -> kLow (fixed at the end)
  c = c < E::kHigh ? c : E::kHigh;
  const T t = c * T(1.44269504088896340736) + E::kMagic;  // round(c / ln2) in the low bits of t
  const T n = t - E::kMagic;
  const int32_t k = static_cast<int32_t>(__builtin_bit_cast(Bits, t) - __builtin_bit_cast(Bits, E::kMagic));
  const T r = (c - n * E::kLn2High) - n * E::kLn2Low;
  const int32_t k1 = k >> 1, k2 = k - k1;
  const T scale1 = __builtin_bit_cast(T, static_cast<Bits>(static_cast<Bits>(k1 + E::kBias) << E::kMantissa));
  const T scale2 = __builtin_bit_cast(T, static_cast<Bits>(static_cast<Bits>(k2 + E::kBias) << E::kMantissa));
  const T y = E::Reduced(r) * scale1 * scale2;
  return x != x ? x : (x < E::kLow ? T(0) : y);
}

// VectorExp runs over whole blocks of this many values (the padding of a row's block is not read), so
// that the loop has no scalar remainder.
constexpr int64_t kExpBlock = 16;

// The number of heads as a compile-time constant when WithHeads passed one of 2, 4 or 8 (per-edge work
// is then one vector of heads values), else 0 (per-edge loops over the heads).
template <typename Heads>
constexpr int64_t kVectorHeads = 0;
template <int64_t kHeads>
constexpr int64_t kVectorHeads<std::integral_constant<int64_t, kHeads>> = kHeads > 1 ? kHeads : 0;

template <typename T>
void CsrSoftmax(ffi::ThreadPool& pool, const int32_t* row_ptr, const int32_t* edge_ids, const bool* mask,
                const T* logits, int64_t n_rows, int64_t n_heads, int64_t n_edges, T* out) {
  if (static_cast<int64_t>(row_ptr[n_rows]) != n_edges) std::fill(out, out + n_edges * n_heads, T(0));
  WithHeads(n_heads, [&](auto heads_constant) {
    const int64_t heads = heads_constant;
    constexpr int64_t kH = kVectorHeads<decltype(heads_constant)>;
    ParallelRows(pool, row_ptr, n_rows, static_cast<int64_t>(row_ptr[n_rows]) * heads * 4,
                 [&](int64_t first, int64_t last) {
      RowScratch<T> scratch(heads);
      T* __restrict__ shift = scratch.data();
      T* __restrict__ total = shift + heads;
      std::vector<T> row_values;  // the row's logits, then exponentials, in slot order: (degree, heads)
      for (int64_t r = first; r < last; ++r) {
        const int64_t begin = row_ptr[r], end = row_ptr[r + 1], size = (end - begin) * heads;
        const int64_t padded = (size + kExpBlock - 1) / kExpBlock * kExpBlock;  // whole blocks for VectorExp
        if (static_cast<int64_t>(row_values.size()) < padded) row_values.resize(padded);
        T* __restrict__ values = row_values.data();
        // Gather, padding edges read as -inf (they neither move the maximum nor add to the sum), and
        // take the maximum of each head. A NaN logit is passed over here (the maximum only shifts the
        // exponentials); its exponential is NaN, so it makes the sum and every value of its row NaN.
        for (int64_t h = 0; h < heads; ++h) shift[h] = -std::numeric_limits<T>::infinity();
        if constexpr (kH > 0) {  // each edge's heads as one vector
          using V = typename FixedWidth<T, kH>::Vec;
          V maximum, minus_inf;
          FixedWidth<T, kH>::Load(maximum, shift);
          minus_inf = maximum;
          for (int64_t k = begin; k < end; ++k) {
            if (k + kPrefetchDistance < end) PrefetchEdge(logits, edge_ids[k + kPrefetchDistance], heads);
            const int64_t e = edge_ids[k];
            V x;
            FixedWidth<T, kH>::Load(x, logits + e * kH);
            if (mask && !mask[e]) x = minus_inf;
            FixedWidth<T, kH>::Store(values + (k - begin) * kH, x);
            maximum = maximum < x ? x : maximum;
          }
          FixedWidth<T, kH>::Store(shift, maximum);
        } else {
          for (int64_t k = begin; k < end; ++k) {
            if (k + kPrefetchDistance < end) PrefetchEdge(logits, edge_ids[k + kPrefetchDistance], heads);
            const int64_t e = edge_ids[k];
            const T* x = logits + e * heads;
            T* v = values + (k - begin) * heads;
            const bool live = !mask || mask[e];
            for (int64_t h = 0; h < heads; ++h) v[h] = live ? x[h] : -std::numeric_limits<T>::infinity();
            for (int64_t h = 0; h < heads; ++h) shift[h] = shift[h] < v[h] ? v[h] : shift[h];
          }
        }
        for (int64_t h = 0; h < heads; ++h) {
          shift[h] = std::isfinite(shift[h]) ? shift[h] : T(0);
          total[h] = T(0);
        }
        for (int64_t j = size; j < padded; ++j) values[j] = -std::numeric_limits<T>::infinity();  // exp: 0
        if (kExpBlock % heads == 0) {  // the heads tile a block: shift, exponentials and sums in one pass
          T pattern[kExpBlock], lanes[kExpBlock];
          for (int64_t j = 0; j < kExpBlock; ++j) {
            pattern[j] = shift[j % heads];
            lanes[j] = T(0);
          }
          for (int64_t b = 0; b < padded; b += kExpBlock) {
            for (int64_t j = 0; j < kExpBlock; ++j) {
              const T y = VectorExp(values[b + j] - pattern[j]);
              values[b + j] = y;
              lanes[j] += y;
            }
          }
          for (int64_t j = 0; j < kExpBlock; ++j) total[j % heads] += lanes[j];
        } else {
          for (int64_t j = 0; j < size; j += heads) {
            for (int64_t h = 0; h < heads; ++h) values[j + h] -= shift[h];
          }
          for (int64_t b = 0; b < padded; b += kExpBlock) {
            for (int64_t j = b; j < b + kExpBlock; ++j) values[j] = VectorExp(values[j]);
          }
          for (int64_t j = 0; j < size; j += heads) {
            for (int64_t h = 0; h < heads; ++h) total[h] += values[j + h];
          }
        }
        // From here total holds the reciprocal of the sum. The sum is at least 1 (the maximum contributes
        // exp(0)) unless every live logit of the head is -inf: then it is 0, and so are the values. A NaN
        // sum makes every value of the head NaN; an infinite one (a +inf logit) gives 0, and NaN to the
        // +inf logit, as exps / sum does on the plain path.
        for (int64_t h = 0; h < heads; ++h) total[h] = total[h] != T(0) ? T(1) / total[h] : T(0);
        if constexpr (kH > 0) {
          using V = typename FixedWidth<T, kH>::Vec;
          V scale, y, zero = {};
          FixedWidth<T, kH>::Load(scale, total);
          for (int64_t k = begin; k < end; ++k) {
            const int64_t e = edge_ids[k];
            FixedWidth<T, kH>::Load(y, values + (k - begin) * kH);
            y *= scale;
            if (mask && !mask[e]) y = zero;
            FixedWidth<T, kH>::Store(out + e * kH, y);
          }
        } else {
          for (int64_t k = begin; k < end; ++k) {
            const int64_t e = edge_ids[k];
            const T* v = values + (k - begin) * heads;
            T* y = out + e * heads;
            const bool live = !mask || mask[e];
            for (int64_t h = 0; h < heads; ++h) y[h] = live ? v[h] * total[h] : T(0);
          }
        }
      }
    });
  });
}

template <typename T>
void CsrSoftmaxBackward(ffi::ThreadPool& pool, const int32_t* row_ptr, const int32_t* edge_ids, const bool* mask,
                        const T* a, const T* g, int64_t n_rows, int64_t n_heads, int64_t n_edges, T* out) {
  if (static_cast<int64_t>(row_ptr[n_rows]) != n_edges) std::fill(out, out + n_edges * n_heads, T(0));
  WithHeads(n_heads, [&](auto heads_constant) {
    const int64_t heads = heads_constant;
    constexpr int64_t kH = kVectorHeads<decltype(heads_constant)>;
    ParallelRows(pool, row_ptr, n_rows, static_cast<int64_t>(row_ptr[n_rows]) * heads * 2,
                 [&](int64_t first, int64_t last) {
      RowScratch<T> scratch(heads);
      T* total = scratch.data();
      for (int64_t r = first; r < last; ++r) {
        const int64_t begin = row_ptr[r], end = row_ptr[r + 1];
        if constexpr (kH > 0) {  // each edge's heads as one vector
          using V = typename FixedWidth<T, kH>::Vec;
          V sum = {}, x, y;
          for (int64_t k = begin; k < end; ++k) {
            if (k + kPrefetchDistance < end) {
              PrefetchEdge(a, edge_ids[k + kPrefetchDistance], heads);
              PrefetchEdge(g, edge_ids[k + kPrefetchDistance], heads);
            }
            const int64_t e = edge_ids[k];
            if (mask && !mask[e]) continue;
            FixedWidth<T, kH>::Load(x, a + e * kH);
            FixedWidth<T, kH>::Load(y, g + e * kH);
            sum += x * y;
          }
          const V zero = {};
          for (int64_t k = begin; k < end; ++k) {
            const int64_t e = edge_ids[k];
            FixedWidth<T, kH>::Load(x, a + e * kH);
            FixedWidth<T, kH>::Load(y, g + e * kH);
            x *= y - sum;
            if (mask && !mask[e]) x = zero;
            FixedWidth<T, kH>::Store(out + e * kH, x);
          }
          continue;
        }
        for (int64_t h = 0; h < heads; ++h) total[h] = T(0);
        for (int64_t k = begin; k < end; ++k) {
          if (k + kPrefetchDistance < end) {
            PrefetchEdge(a, edge_ids[k + kPrefetchDistance], heads);
            PrefetchEdge(g, edge_ids[k + kPrefetchDistance], heads);
          }
          const int64_t e = edge_ids[k];
          if (mask && !mask[e]) continue;
          for (int64_t h = 0; h < heads; ++h) total[h] += a[e * heads + h] * g[e * heads + h];
        }
        for (int64_t k = begin; k < end; ++k) {
          const int64_t e = edge_ids[k];
          T* y = out + e * heads;
          if (mask && !mask[e]) {
            for (int64_t h = 0; h < heads; ++h) y[h] = T(0);
            continue;
          }
          for (int64_t h = 0; h < heads; ++h) y[h] = a[e * heads + h] * (g[e * heads + h] - total[h]);
        }
      }
    });
  });
}

int64_t Rows(const ffi::AnyBuffer& buffer) { return buffer.dimensions().size() ? buffer.dimensions()[0] : 1; }

int64_t RowWidth(const ffi::AnyBuffer& buffer) {
  const int64_t rows = Rows(buffer);
  return rows ? static_cast<int64_t>(buffer.element_count()) / rows : 0;
}

ffi::Error Invalid(const char* kernel, const char* problem) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, std::string(kernel) + ": " + problem);
}

// The number of heads H of an edge buffer of shape (E,) (H = 1) or (E, H), checked to divide the row
// width m of the node buffers.
ffi::Error ReadHeads(const char* kernel, const ffi::AnyBuffer& edges, int64_t m, int64_t& heads) {
  if (edges.dimensions().size() > 2) return Invalid(kernel, "edge data must have shape (E,) or (E, H)");
  heads = edges.dimensions().size() == 2 ? edges.dimensions()[1] : 1;
  if (heads < 1 || m % heads != 0) {
    return Invalid(kernel, "the heads H of the edge data must divide the row width of the node data");
  }
  return ffi::Error::Success();
}

// The CSR index arrays, checked to be int32 with one offset per row plus one.
struct CsrIndices {
  const int32_t* row_ptr;
  const int32_t* cols;
  const int32_t* edge_ids;
};

ffi::Error ReadIndices(const char* kernel, const ffi::AnyBuffer& row_ptr, const ffi::AnyBuffer& cols,
                       const ffi::AnyBuffer& edge_ids, int64_t n_rows, CsrIndices& indices) {
  for (const auto* buffer : {&row_ptr, &cols, &edge_ids}) {
    if (buffer->element_type() != ffi::DataType::S32) return Invalid(kernel, "index arrays must be int32");
  }
  if (static_cast<int64_t>(row_ptr.element_count()) != n_rows + 1) {
    return Invalid(kernel, "row_ptr must have one entry per output row plus one");
  }
  indices = {row_ptr.typed_data<int32_t>(), cols.typed_data<int32_t>(), edge_ids.typed_data<int32_t>()};
  return ffi::Error::Success();
}

// Calls run(T{}) with T = float or double for the buffers' common dtype.
template <typename Run>
ffi::Error ForFloatType(const char* kernel, const std::vector<ffi::DataType>& types, const Run& run) {
  const ffi::DataType type = types.front();
  for (ffi::DataType other : types) {
    if (other != type) return Invalid(kernel, "all float operands and results must share one dtype");
  }
  if (type == ffi::DataType::F32) {
    run(float{});
  } else if (type == ffi::DataType::F64) {
    run(double{});
  } else {
    return Invalid(kernel, "dtype must be float32 or float64");
  }
  return ffi::Error::Success();
}

ffi::Error CsrSumImpl(ffi::ThreadPool pool, ffi::AnyBuffer row_ptr, ffi::AnyBuffer cols, ffi::AnyBuffer edge_ids,
                      ffi::AnyBuffer u, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> out) {
  constexpr const char* kKernel = "jgrad_csr_sum";
  const int64_t n_rows = Rows(*out), m = RowWidth(*out);
  const bool weighted = w.element_count() > 0;
  CsrIndices csr;
  if (auto error = ReadIndices(kKernel, row_ptr, cols, edge_ids, n_rows, csr); error.failure()) return error;
  if (RowWidth(u) != m) return Invalid(kKernel, "u and out must have the same row width");
  int64_t heads = 1;
  if (weighted) {
    if (auto error = ReadHeads(kKernel, w, m, heads); error.failure()) return error;
  }
  std::vector<ffi::DataType> types = {u.element_type(), out->element_type()};
  if (weighted) types.push_back(w.element_type());
  return ForFloatType(kKernel, types, [&](auto zero) {
    using T = decltype(zero);
    CsrSum(pool, csr.row_ptr, csr.cols, csr.edge_ids, u.typed_data<T>(), weighted ? w.typed_data<T>() : nullptr,
           weighted, n_rows, m, heads, out->typed_data<T>());
  });
}

ffi::Error CsrEdgeDotImpl(ffi::ThreadPool pool, ffi::AnyBuffer row_ptr, ffi::AnyBuffer cols, ffi::AnyBuffer edge_ids,
                          ffi::AnyBuffer u, ffi::AnyBuffer v, ffi::Result<ffi::AnyBuffer> out) {
  constexpr const char* kKernel = "jgrad_csr_edge_dot";
  const int64_t n_rows = Rows(v), m = RowWidth(v), n_edges = Rows(*out);
  CsrIndices csr;
  if (auto error = ReadIndices(kKernel, row_ptr, cols, edge_ids, n_rows, csr); error.failure()) return error;
  if (RowWidth(u) != m) return Invalid(kKernel, "u and v must have the same row width");
  int64_t heads = 1;
  if (auto error = ReadHeads(kKernel, *out, m, heads); error.failure()) return error;
  return ForFloatType(kKernel, {u.element_type(), v.element_type(), out->element_type()}, [&](auto zero) {
    using T = decltype(zero);
    CsrEdgeDot(pool, csr.row_ptr, csr.cols, csr.edge_ids, u.typed_data<T>(), v.typed_data<T>(), n_rows, m, heads,
               n_edges, out->typed_data<T>());
  });
}

ffi::Error CsrSumDotImpl(ffi::ThreadPool pool, ffi::AnyBuffer row_ptr, ffi::AnyBuffer cols, ffi::AnyBuffer edge_ids,
                         ffi::AnyBuffer g, ffi::AnyBuffer u, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> out,
                         ffi::Result<ffi::AnyBuffer> dots) {
  constexpr const char* kKernel = "jgrad_csr_sum_dot";
  const int64_t n_rows = Rows(*out), m = RowWidth(*out), n_edges = Rows(*dots);
  CsrIndices csr;
  if (auto error = ReadIndices(kKernel, row_ptr, cols, edge_ids, n_rows, csr); error.failure()) return error;
  if (RowWidth(g) != m || RowWidth(u) != m || Rows(u) != n_rows) {
    return Invalid(kKernel, "g, u and out must have the same row width, and u one row per output row");
  }
  if (w.element_count() != dots->element_count() || Rows(w) != n_edges) {
    return Invalid(kKernel, "w and dots must have one entry per edge and head");
  }
  int64_t heads = 1;
  if (auto error = ReadHeads(kKernel, *dots, m, heads); error.failure()) return error;
  const std::vector<ffi::DataType> types = {g.element_type(), u.element_type(), w.element_type(),
                                            out->element_type(), dots->element_type()};
  return ForFloatType(kKernel, types, [&](auto zero) {
    using T = decltype(zero);
    CsrSumDot(pool, csr.row_ptr, csr.cols, csr.edge_ids, g.typed_data<T>(), u.typed_data<T>(), w.typed_data<T>(),
              n_rows, m, heads, n_edges, out->typed_data<T>(), dots->typed_data<T>());
  });
}

// The CSR rows (row_ptr, edge_ids), the mask and the edge buffers of a softmax kernel, checked: int32
// indices, a bool mask of E entries or none, edge buffers of one shape (E,) or (E, H).
struct SoftmaxOperands {
  const int32_t* row_ptr;
  const int32_t* edge_ids;
  const bool* mask;
  int64_t n_rows, n_edges, heads;
};

ffi::Error ReadSoftmax(const char* kernel, const ffi::AnyBuffer& row_ptr, const ffi::AnyBuffer& edge_ids,
                       const ffi::AnyBuffer& mask, const std::vector<const ffi::AnyBuffer*>& edges,
                       SoftmaxOperands& operands) {
  if (row_ptr.element_type() != ffi::DataType::S32 || edge_ids.element_type() != ffi::DataType::S32) {
    return Invalid(kernel, "index arrays must be int32");
  }
  if (row_ptr.element_count() < 1) return Invalid(kernel, "row_ptr must have one entry per row plus one");
  const auto dims = edges.front()->dimensions();
  if (dims.size() < 1 || dims.size() > 2) return Invalid(kernel, "edge data must have shape (E,) or (E, H)");
  for (const auto* buffer : edges) {
    const auto other = buffer->dimensions();
    if (other.size() != dims.size() || !std::equal(other.begin(), other.end(), dims.begin())) {
      return Invalid(kernel, "all edge buffers must have one shape");
    }
  }
  operands.n_edges = dims[0];
  operands.heads = dims.size() == 2 ? dims[1] : 1;
  if (static_cast<int64_t>(edge_ids.element_count()) > operands.n_edges) {
    return Invalid(kernel, "edge_ids must have at most one slot per edge");
  }
  const int64_t mask_size = mask.element_count();
  if (mask_size != 0 && (mask.element_type() != ffi::DataType::PRED || mask_size != operands.n_edges)) {
    return Invalid(kernel, "the mask must be bool with one entry per edge, or empty");
  }
  operands.row_ptr = row_ptr.typed_data<int32_t>();
  operands.edge_ids = edge_ids.typed_data<int32_t>();
  operands.mask = mask_size ? mask.typed_data<bool>() : nullptr;
  operands.n_rows = static_cast<int64_t>(row_ptr.element_count()) - 1;
  return ffi::Error::Success();
}

ffi::Error CsrSoftmaxImpl(ffi::ThreadPool pool, ffi::AnyBuffer row_ptr, ffi::AnyBuffer edge_ids, ffi::AnyBuffer mask,
                          ffi::AnyBuffer logits, ffi::Result<ffi::AnyBuffer> out) {
  constexpr const char* kKernel = "jgrad_csr_softmax";
  SoftmaxOperands op;
  if (auto error = ReadSoftmax(kKernel, row_ptr, edge_ids, mask, {&logits, &(*out)}, op); error.failure()) {
    return error;
  }
  return ForFloatType(kKernel, {logits.element_type(), out->element_type()}, [&](auto zero) {
    using T = decltype(zero);
    CsrSoftmax(pool, op.row_ptr, op.edge_ids, op.mask, logits.typed_data<T>(), op.n_rows, op.heads, op.n_edges,
               out->typed_data<T>());
  });
}

ffi::Error CsrSoftmaxBackwardImpl(ffi::ThreadPool pool, ffi::AnyBuffer row_ptr, ffi::AnyBuffer edge_ids,
                                  ffi::AnyBuffer mask, ffi::AnyBuffer a, ffi::AnyBuffer g,
                                  ffi::Result<ffi::AnyBuffer> out) {
  constexpr const char* kKernel = "jgrad_csr_softmax_backward";
  SoftmaxOperands op;
  if (auto error = ReadSoftmax(kKernel, row_ptr, edge_ids, mask, {&a, &g, &(*out)}, op); error.failure()) {
    return error;
  }
  return ForFloatType(kKernel, {a.element_type(), g.element_type(), out->element_type()}, [&](auto zero) {
    using T = decltype(zero);
    CsrSoftmaxBackward(pool, op.row_ptr, op.edge_ids, op.mask, a.typed_data<T>(), g.typed_data<T>(), op.n_rows,
                       op.heads, op.n_edges, out->typed_data<T>());
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JgradCsrSum, CsrSumImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // row_ptr (R + 1,)
                                  .Arg<ffi::AnyBuffer>()  // cols (S,)
                                  .Arg<ffi::AnyBuffer>()  // edge_ids (S,)
                                  .Arg<ffi::AnyBuffer>()  // u (N, M), M = H * F
                                  .Arg<ffi::AnyBuffer>()  // w (E,), (E, H) or (0,)
                                  .Ret<ffi::AnyBuffer>());  // out (R, M)

XLA_FFI_DEFINE_HANDLER_SYMBOL(JgradCsrEdgeDot, CsrEdgeDotImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // row_ptr (R + 1,)
                                  .Arg<ffi::AnyBuffer>()  // cols (S,)
                                  .Arg<ffi::AnyBuffer>()  // edge_ids (S,)
                                  .Arg<ffi::AnyBuffer>()  // u (N, M), M = H * F
                                  .Arg<ffi::AnyBuffer>()  // v (R, M)
                                  .Ret<ffi::AnyBuffer>());  // out (E,) or (E, H)

XLA_FFI_DEFINE_HANDLER_SYMBOL(JgradCsrSumDot, CsrSumDotImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // row_ptr (R + 1,)
                                  .Arg<ffi::AnyBuffer>()  // cols (S,)
                                  .Arg<ffi::AnyBuffer>()  // edge_ids (S,)
                                  .Arg<ffi::AnyBuffer>()  // g (N, M), gathered; M = H * F
                                  .Arg<ffi::AnyBuffer>()  // u (R, M), one row per output row
                                  .Arg<ffi::AnyBuffer>()  // w (E,) or (E, H)
                                  .Ret<ffi::AnyBuffer>()  // out (R, M)
                                  .Ret<ffi::AnyBuffer>());  // dots (E,) or (E, H)

XLA_FFI_DEFINE_HANDLER_SYMBOL(JgradCsrSoftmax, CsrSoftmaxImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // row_ptr (R + 1,)
                                  .Arg<ffi::AnyBuffer>()  // edge_ids (S,)
                                  .Arg<ffi::AnyBuffer>()  // mask (E,) bool, or (0,)
                                  .Arg<ffi::AnyBuffer>()  // logits (E,) or (E, H)
                                  .Ret<ffi::AnyBuffer>());  // out, the shape of logits

XLA_FFI_DEFINE_HANDLER_SYMBOL(JgradCsrSoftmaxBackward, CsrSoftmaxBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // row_ptr (R + 1,)
                                  .Arg<ffi::AnyBuffer>()  // edge_ids (S,)
                                  .Arg<ffi::AnyBuffer>()  // mask (E,) bool, or (0,)
                                  .Arg<ffi::AnyBuffer>()  // a, the softmax (E,) or (E, H)
                                  .Arg<ffi::AnyBuffer>()  // g, its cotangent, the shape of a
                                  .Ret<ffi::AnyBuffer>());  // out, the shape of a
