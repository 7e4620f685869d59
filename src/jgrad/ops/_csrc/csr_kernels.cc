// CPU kernels for sum aggregation and per-edge dot products over a CSR-ordered graph, called from JAX
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
//   jgrad_csr_max/min:  out[r, h, :] = max/min over live k of w[edge_ids[k], h] * u[cols[k], h, :], with
//                       the lowest edge id attaining it (arg) and how many slots do (count; CsrExtremum)
//   jgrad_csr_routed:   the backward of max/min at ties, "split" rule, on the reversed graph (CsrRouted)
//   jgrad_csr_attention: GAT's attention over each row's live slots, per head,
//                       alpha[e, h] = softmax_k(leaky_relu(src[cols[k], h] + dst[r, h])) (CsrAttention),
//                       optionally with a self loop per row, and its backward (CsrAttentionBackward);
//                       live (E,) marks the edges that take part, or (E + N,) the loops' too, after them
//
// Every head is done in the same walk over the CSR: each gathered row is read once for all heads.
//
// Each output row is owned by one thread and accumulated in place, so there are no atomics and no
// (E, M) intermediate. Rows are cut into chunks of equal slot count (hubs do not unbalance them) that
// the calling thread and helpers on XLA's intra-op thread pool work through. Large outputs are given
// transparent huge pages before they are written (AskForHugePages).
// float32 and float64 are supported; the index arrays are int32.

#include <sched.h>
#include <sys/mman.h>

#include <algorithm>
#include <initializer_list>
#include <cmath>
#include <atomic>
#include <memory>
#include <string>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

#if defined(__x86_64__) && defined(__GLIBC__)
// glibc's vector maths library (libmvec) has SIMD versions of exp; declaring them lets the compiler
// call them from vectorised loops without -ffast-math (which glibc's headers otherwise require).
// They are accurate to a few ulp and handle NaN and infinities like the scalar functions.
extern "C" {
__attribute__((simd("notinbranch"))) float expf(float) noexcept;
__attribute__((simd("notinbranch"))) double exp(double) noexcept;
}
#endif

namespace ffi = xla::ffi;

namespace {

// XLA hands the kernels output buffers carved from a temporary allocation that glibc maps fresh from
// the operating system on every call, so each 4 KB page of an output is faulted in and zeroed when the
// kernel first writes it (about 2 us a page here). Asking for transparent huge pages on the whole 2 MB
// pages inside a large output, before writing it, makes that one fault per 2 MB instead: 5-8% off GAT
// and SAGE layer steps and the GCN training step at 1e5 nodes (docs/performance.md). Only the kernels'
// own outputs are advised; the advice is a hint (no effect with transparent huge pages off, or on other
// systems).
constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kAdviseFrom = 4 * kHugePage;  // smaller outputs would gain a page or two at most

inline void AskForHugePages(std::initializer_list<ffi::AnyBuffer*> outputs) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  for (ffi::AnyBuffer* output : outputs) {
    if (output->size_bytes() < kAdviseFrom) continue;
    const uintptr_t start = reinterpret_cast<uintptr_t>(output->untyped_data());
    const uintptr_t begin = (start + kHugePage - 1) & ~(kHugePage - 1);
    const uintptr_t end = (start + output->size_bytes()) & ~(kHugePage - 1);
    if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
  }
#else
  (void)outputs;
#endif
}

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

// How many slots ahead the walks ask for their random reads. 32 measured best among 6, 10, 16, 24, 32, 48
// and 64 (48 and 64 within noise of it) for F = 8 and F = 64 sums, GCN, SAGE and GAT steps on a
// 1e5-node power-law graph (2-core AMD EPYC); 6 (the earlier value) was 20-30% slower on the reversed side.
constexpr int64_t kPrefetchDistance = 32;

// Asks for the data of the slot kPrefetchDistance ahead of slot k, if it is before last_slot (the end
// of the caller's chunk of rows, so the look-ahead runs on across row boundaries: most rows of a sparse
// graph have fewer slots than the distance): its gathered row of `rows` (m values) and, for each of
// `edge_data` that is not null, that edge's `heads` values there (random reads on the reversed side).
// Only data that is read: prefetching the edge outputs a walk writes (the dots of CsrSumDot) made the
// fused backward 1.7-2x slower, and the attention kernels gained nothing from any prefetch.
template <typename T, typename... EdgeData>
inline void PrefetchAhead(const int32_t* cols, const int32_t* edge_ids, int64_t k, int64_t last_slot,
                          const T* rows, int64_t m, int64_t heads, const EdgeData*... edge_data) {
  const int64_t ahead = k + kPrefetchDistance;
  if (ahead >= last_slot) return;
  PrefetchRow(rows + static_cast<int64_t>(cols[ahead]) * m, m);
  const int64_t edge = static_cast<int64_t>(edge_ids[ahead]) * heads;
  ((edge_data != nullptr ? __builtin_prefetch(edge_data + edge, 0, 0) : void()), ...);
}

// Calls body(std::integral_constant<int64_t, v>{}) for the v among kValues that equals value, so that
// loops over v unroll and vectorise; otherwise body(value) with the runtime value.
template <int64_t... kValues, typename Body>
void WithConstant(int64_t value, const Body& body) {
  const bool matched = ((value == kValues && (body(std::integral_constant<int64_t, kValues>{}), true)) || ...);
  if (!matched) body(value);
}

// The per-head width f as a compile-time constant for the common widths 8, 16, 32 and 64, one head or
// several, so that one head's features are one vector (FixedWidth below). (Fixed widths for one head
// measured 10-30% faster than the runtime loop at F = 8 and F = 64 on a graph of 1.7e6 edges.)
template <typename Body>
void WithHeadWidth(int64_t f, const Body& body) {
  WithConstant<8, 16, 32, 64>(f, body);
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

// The sum of the lanes of v, by halving in registers (kN a power of two): the upper half is added to
// the lower one until one lane is left (no round trip through memory, which stalls on store forwarding).
template <typename T, int64_t kN, std::size_t... kLow>
inline typename FixedWidth<T, kN / 2>::Vec FoldHalves(const typename FixedWidth<T, kN>::Vec& v,
                                                      std::index_sequence<kLow...>) {
  return __builtin_shufflevector(v, v, kLow...) + __builtin_shufflevector(v, v, (kLow + kN / 2)...);
}

template <typename T, int64_t kN>
inline T SumLanes(const typename FixedWidth<T, kN>::Vec& v) {
  if constexpr (kN == 1) {
    return v[0];
  } else {
    return SumLanes<T, kN / 2>(FoldHalves<T, kN>(v, std::make_index_sequence<kN / 2>{}));
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

// With loop_base >= 0 every row r also has a self loop, edge id loop_base + r, after its slots (a
// graph's loops kept out of its CSR, jgrad._src._plan.Side.self_loops); loop_base = -1: none.
template <typename T>
void CsrSum(ffi::ThreadPool& pool, const int32_t* row_ptr, const int32_t* cols, const int32_t* edge_ids, const T* u,
            const T* w, bool weighted, int64_t n_rows, int64_t m, int64_t heads, int64_t loop_base, T* out) {
  WithHeadWidth(m / heads, [&](auto f) {
    ParallelRows(pool, row_ptr, n_rows, static_cast<int64_t>(row_ptr[n_rows]) * m, [&](int64_t first, int64_t last) {
      const int64_t last_slot = row_ptr[last];
      for (int64_t r = first; r < last; ++r) {
        T* __restrict__ acc = out + r * m;
        std::fill(acc, acc + m, T(0));
        const int64_t begin = row_ptr[r], end = row_ptr[r + 1];
        for (int64_t k = begin; k < end; ++k) {
          PrefetchAhead(cols, edge_ids, k, last_slot, u, m, heads, weighted ? w : nullptr);
          const T* __restrict__ row = u + static_cast<int64_t>(cols[k]) * m;
          if (weighted) {
            AddScaled(acc, row, w + static_cast<int64_t>(edge_ids[k]) * heads, heads, f);
          } else {
            for (int64_t j = 0; j < m; ++j) acc[j] += row[j];
          }
        }
        if (loop_base >= 0) {
          const T* __restrict__ row = u + r * m;
          if (weighted) {
            AddScaled(acc, row, w + (loop_base + r) * heads, heads, f);
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
    dots[h] = SumLanes<T, kF>(a);
  }
}

template <typename T>
void CsrEdgeDot(ffi::ThreadPool& pool, const int32_t* row_ptr, const int32_t* cols, const int32_t* edge_ids,
                const T* u, const T* v, int64_t n_rows, int64_t m, int64_t heads, int64_t n_edges, int64_t loop_base,
                T* out) {
  std::fill(out, out + n_edges * heads, T(0));
  WithHeadWidth(m / heads, [&](auto f) {
    ParallelRows(pool, row_ptr, n_rows, static_cast<int64_t>(row_ptr[n_rows]) * m, [&](int64_t first, int64_t last) {
      const int64_t last_slot = row_ptr[last];
      for (int64_t r = first; r < last; ++r) {
        const T* own = v + r * m;
        const int64_t begin = row_ptr[r], end = row_ptr[r + 1];
        for (int64_t k = begin; k < end; ++k) {
          PrefetchAhead<T>(cols, edge_ids, k, last_slot, u, m, heads);
          const T* row = u + static_cast<int64_t>(cols[k]) * m;
          HeadDots(own, row, heads, f, out + static_cast<int64_t>(edge_ids[k]) * heads);
        }
        if (loop_base >= 0) HeadDots(own, u + r * m, heads, f, out + (loop_base + r) * heads);
      }
    });
  });
}

template <typename T>
void CsrSumDot(ffi::ThreadPool& pool, const int32_t* row_ptr, const int32_t* cols, const int32_t* edge_ids,
               const T* g, const T* u, const T* w, int64_t n_rows, int64_t m, int64_t heads, int64_t n_edges,
               int64_t loop_base, T* out, T* dots) {
  std::fill(dots, dots + n_edges * heads, T(0));
  WithHeadWidth(m / heads, [&](auto f) {
    ParallelRows(pool, row_ptr, n_rows, static_cast<int64_t>(row_ptr[n_rows]) * m, [&](int64_t first, int64_t last) {
      const int64_t last_slot = row_ptr[last];
      for (int64_t r = first; r < last; ++r) {
        T* __restrict__ acc = out + r * m;
        const T* own = u + r * m;
        std::fill(acc, acc + m, T(0));
        const int64_t begin = row_ptr[r], end = row_ptr[r + 1];
        for (int64_t k = begin; k < end; ++k) {
          PrefetchAhead(cols, edge_ids, k, last_slot, g, m, heads, w);
          const T* __restrict__ row = g + static_cast<int64_t>(cols[k]) * m;
          const int64_t edge = static_cast<int64_t>(edge_ids[k]) * heads;
          HeadDots(own, row, heads, f, dots + edge);
          AddScaled(acc, row, w + edge, heads, f);
        }
        if (loop_base >= 0) {
          const T* __restrict__ row = g + r * m;
          const int64_t edge = (loop_base + r) * heads;
          HeadDots(own, row, heads, f, dots + edge);
          AddScaled(acc, row, w + edge, heads, f);
        }
      }
    });
  });
}

// The extremum (max when kMax, else min) over each row's live slots: out[r, h, j] = extremum_k of
// w[edge_ids[k], h] * u[cols[k], h, j] (w = 1 without weights), arg[r, h, j] = the lowest edge id
// attaining it and count[r, h, j] = how many live slots attain it. Slots whose edge has live[edge] == 0
// are skipped; an entry with no live slot gets out 0, arg -1 and count 0. NaN wins (as in XLA's max and
// min) and gets arg -1 and count 0, since no message compares equal to it. The inner loop has no branches.
template <bool kMax, typename T>
void CsrExtremum(ffi::ThreadPool& pool, const int32_t* row_ptr, const int32_t* cols, const int32_t* edge_ids,
                 const T* u, const T* w, const bool* live, int64_t n_rows, int64_t m, int64_t heads, T* out,
                 int32_t* arg, int32_t* count) {
  constexpr T kStart = kMax ? -std::numeric_limits<T>::infinity() : std::numeric_limits<T>::infinity();
  constexpr int32_t kNoEdge = std::numeric_limits<int32_t>::max();
  WithHeadWidth(m / heads, [&](auto f) {
    ParallelRows(pool, row_ptr, n_rows, static_cast<int64_t>(row_ptr[n_rows]) * m, [&](int64_t first, int64_t last) {
      const int64_t last_slot = row_ptr[last];
      for (int64_t r = first; r < last; ++r) {
        T* __restrict__ best = out + r * m;
        int32_t* __restrict__ at = arg + r * m;
        int32_t* __restrict__ hits = count + r * m;
        std::fill(best, best + m, kStart);
        std::fill(at, at + m, kNoEdge);
        std::fill(hits, hits + m, int32_t{0});
        const int64_t begin = row_ptr[r], end = row_ptr[r + 1];
        for (int64_t k = begin; k < end; ++k) {
          PrefetchAhead(cols, edge_ids, k, last_slot, u, m, heads, w);
          const int32_t edge = edge_ids[k];
          if (live != nullptr && !live[edge]) continue;
          const T* __restrict__ row = u + static_cast<int64_t>(cols[k]) * m;
          for (int64_t h = 0; h < heads; ++h) {
            const T scale = w != nullptr ? w[static_cast<int64_t>(edge) * heads + h] : T(1);
            T* __restrict__ b = best + h * f;
            int32_t* __restrict__ a = at + h * f;
            int32_t* __restrict__ c = hits + h * f;
            const T* __restrict__ x = row + h * f;
            for (int64_t j = 0; j < f; ++j) {
              const T message = scale * x[j];  // times 1 without weights: exact
              const T current = b[j];
              const bool wins = (kMax ? message > current : message < current) || message != message;
              const bool equal = message == current;
              b[j] = wins ? message : current;
              a[j] = wins ? edge : (equal && edge < a[j] ? edge : a[j]);
              c[j] = wins ? 1 : c[j] + static_cast<int32_t>(equal);
            }
          }
        }
        for (int64_t j = 0; j < m; ++j) {
          if (hits[j] == 0) {
            best[j] = T(0);
            at[j] = -1;
          } else if (best[j] != best[j]) {
            at[j] = -1;
            hits[j] = 0;
          }
        }
      }
    });
  });
}

// The backward of max/min with the "split" tie rule, walked over the reversed graph (rows = senders u):
// every live edge e = (u -> r) whose message w[e, h] * u[u, h, j] equals top[r, h, j] gets the share
// share[r, h, j] (the output cotangent over the tie count):
//   du[u, h, j] = sum over such edges of w[e, h] * share[r, h, j]
//   dw[e, h]    = sum over j of u[u, h, j] * share[r, h, j] where the message ties   (only if dw is given)
template <typename T>
void CsrRouted(ffi::ThreadPool& pool, const int32_t* row_ptr, const int32_t* cols, const int32_t* edge_ids,
               const T* u, const T* w, const bool* live, const T* top, const T* share, int64_t n_rows, int64_t m,
               int64_t heads, int64_t n_edges, T* du, T* dw) {
  if (dw != nullptr) std::fill(dw, dw + n_edges * heads, T(0));
  WithHeadWidth(m / heads, [&](auto f) {
    ParallelRows(pool, row_ptr, n_rows, static_cast<int64_t>(row_ptr[n_rows]) * m, [&](int64_t first, int64_t last) {
      const int64_t last_slot = row_ptr[last];
      for (int64_t s = first; s < last; ++s) {
        T* __restrict__ acc = du + s * m;
        const T* __restrict__ own = u + s * m;
        std::fill(acc, acc + m, T(0));
        const int64_t begin = row_ptr[s], end = row_ptr[s + 1];
        for (int64_t k = begin; k < end; ++k) {
          PrefetchAhead(cols, edge_ids, k, last_slot, top, m, heads, w);
          PrefetchAhead<T>(cols, edge_ids, k, last_slot, share, m, heads);
          const int64_t edge = edge_ids[k];
          if (live != nullptr && !live[edge]) continue;
          const T* __restrict__ t = top + static_cast<int64_t>(cols[k]) * m;
          const T* __restrict__ g = share + static_cast<int64_t>(cols[k]) * m;
          for (int64_t h = 0; h < heads; ++h) {
            const T scale = w != nullptr ? w[edge * heads + h] : T(1);
            T dot = 0;
            for (int64_t j = 0; j < f; ++j) {
              const int64_t i = h * f + j;
              const T routed = scale * own[i] == t[i] ? g[i] : T(0);
              acc[i] += scale * routed;
              dot += own[i] * routed;
            }
            if (dw != nullptr) dw[edge * heads + h] = dot;
          }
        }
      }
    });
  });
}

// x[i] = exp(x[i]) for i < n, vectorised (see the libmvec note at the top).
inline void ExpInPlace(float* __restrict__ x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = expf(x[i]);
}

inline void ExpInPlace(double* __restrict__ x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = exp(x[i]);
}

// The head count as a compile-time constant for 1, 2, 4 and 8 heads, so that per-head loops unroll and
// per-head sums stay in registers (AttentionLanes below).
template <typename Body>
void WithHeadCount(int64_t heads, const Body& body) {
  WithConstant<1, 2, 4, 8>(heads, body);
}

// Per-head scratch of a row: kLocal values on the stack (registers, once loops unroll), more on the heap.
template <typename T>
class HeadScratch {
 public:
  explicit HeadScratch(int64_t heads) : heap_(heads > kLocal ? heads : 0) {}
  T* get() { return heap_.empty() ? local_ : heap_.data(); }

 private:
  static constexpr int64_t kLocal = 8;
  T local_[kLocal];
  std::vector<T> heap_;
};

// GAT's per-head attention arithmetic on one slot, for H heads: with a compile-time H, on one vector
// of H lanes (GCC vector extensions; the selects become blends: the scores' signs are unpredictable,
// and branches on them cost more than the arithmetic); otherwise one head at a time.
template <typename T, typename Heads>
struct AttentionLanes {
  // slot[h] = leaky_relu(other[h] + own[h]) (-inf if dead); shift[h] = max(shift[h], slot[h]).
  static void Logits(const T* other, const T* own, T slope, bool dead, T* slot, T* shift, int64_t heads) {
    for (int64_t h = 0; h < heads; ++h) {
      const T raw = other[h] + own[h];
      slot[h] = dead ? -std::numeric_limits<T>::infinity() : (raw >= T(0) ? raw : slope * raw);
      shift[h] = std::max(shift[h], slot[h]);
    }
  }

  // d[h] = alpha[h] * (g[h] - weighted[h]) * (raw >= 0 ? 1 : slope), raw = other[h] + own[h]; sum += d.
  static void Backward(const T* other, const T* own, const T* alpha, const T* g, const T* weighted, T slope, T* d,
                       T* sum, int64_t heads) {
    for (int64_t h = 0; h < heads; ++h) {
      const T raw = other[h] + own[h];
      d[h] = alpha[h] * (g[h] - weighted[h]) * (raw >= T(0) ? T(1) : slope);
      sum[h] += d[h];
    }
  }
};

template <typename T, int64_t kH>
struct AttentionLanes<T, std::integral_constant<int64_t, kH>> {
  using V = FixedWidth<T, kH>;
  using Vec = typename V::Vec;

  static void Logits(const T* other, const T* own, T slope, bool dead, T* slot, T* shift, int64_t) {
    Vec a, b, top;
    V::Load(a, other);
    V::Load(b, own);
    V::Load(top, shift);
    const Vec raw = a + b;
    Vec logit = raw >= T(0) ? raw : slope * raw;
    if (dead) logit = Vec{} - std::numeric_limits<T>::infinity();
    top = top < logit ? logit : top;  // std::max's rule: a NaN logit leaves the maximum as it was
    V::Store(slot, logit);
    V::Store(shift, top);
  }

  static void Backward(const T* other, const T* own, const T* alpha, const T* g, const T* weighted, T slope, T* d,
                       T* sum, int64_t) {
    Vec a, b, al, gg, w, total;
    V::Load(a, other);
    V::Load(b, own);
    V::Load(al, alpha);
    V::Load(gg, g);
    V::Load(w, weighted);
    V::Load(total, sum);
    const Vec raw = a + b;
    const Vec one = Vec{} + T(1);
    const Vec out = al * (gg - w) * (raw >= T(0) ? one : Vec{} + slope);
    V::Store(d, out);
    V::Store(sum, total + out);
  }
};

// alpha[edge_ids[k], h] for every slot k of every row r: the softmax over the row's live slots of
// leaky_relu(src[cols[k], h] + dst[r, h]), with the same steps as the XLA path (jgrad.ops._attention):
// the row maximum is subtracted where it is finite; a row whose live logits are all -inf gets 0; a NaN
// or +inf logit makes the row NaN; dead slots get 0. With alpha_self (N, H), each row also has a self
// loop, one more term leaky_relu(src[r, h] + dst[r, h]) of its softmax, whose weight goes to alpha_self[r, h];
// loop_live (N,) or null (every loop live) says which loops take part (a dead loop gets 0, like a dead slot).
template <typename T>
void CsrAttention(ffi::ThreadPool& pool, const int32_t* row_ptr, const int32_t* cols, const int32_t* edge_ids,
                  const T* src, const T* dst, const bool* live, const bool* loop_live, T slope, int64_t n_rows,
                  int64_t heads, T* alpha, T* alpha_self) {
  WithHeadCount(heads, [&](auto head_count) {
    using Lanes = AttentionLanes<T, decltype(head_count)>;
    const int64_t H = head_count;
    ParallelRows(pool, row_ptr, n_rows, static_cast<int64_t>(row_ptr[n_rows]) * H, [&](int64_t first, int64_t last) {
      constexpr T kMinusInf = -std::numeric_limits<T>::infinity();
      std::vector<T> logits;  // the row's logits, then exponentials, slot-major: [j * H + h]
      HeadScratch<T> shift_scratch(H), total_scratch(H);
      T* __restrict__ shift = shift_scratch.get();
      T* __restrict__ total = total_scratch.get();
      const bool loops = alpha_self != nullptr;
      for (int64_t r = first; r < last; ++r) {
        const int64_t begin = row_ptr[r], end = row_ptr[r + 1], n = (end - begin) * H;
        const int64_t terms = loops ? n + H : n;  // the self loop's logits follow the slots'
        if (terms == 0) continue;
        logits.resize(terms);
        T* __restrict__ row = logits.data();
        const T* own = dst + r * H;
        for (int64_t h = 0; h < H; ++h) shift[h] = kMinusInf;
        for (int64_t k = begin; k < end; ++k) {  // logits (-inf at dead slots: no share) and their maximum
          const bool dead = live != nullptr && !live[edge_ids[k]];
          Lanes::Logits(src + static_cast<int64_t>(cols[k]) * H, own, slope, dead, row + (k - begin) * H, shift, H);
        }
        const bool loop_dead = loops && loop_live != nullptr && !loop_live[r];
        if (loops) Lanes::Logits(src + r * H, own, slope, loop_dead, row + n, shift, H);
        for (int64_t h = 0; h < H; ++h) shift[h] = std::isfinite(shift[h]) ? shift[h] : T(0);
        for (int64_t j = 0; j < terms; j += H) {
          for (int64_t h = 0; h < H; ++h) row[j + h] -= shift[h];
        }
        ExpInPlace(row, terms);  // dead slots: exp(-inf) = 0
        for (int64_t h = 0; h < H; ++h) total[h] = T(0);
        for (int64_t j = 0; j < terms; j += H) {
          for (int64_t h = 0; h < H; ++h) total[h] += row[j + h];
        }
        for (int64_t h = 0; h < H; ++h) total[h] = total[h] != T(0) ? T(1) / total[h] : T(0);  // 0: no live share
        for (int64_t k = begin; k < end; ++k) {
          const bool dead = live != nullptr && !live[edge_ids[k]];
          T* out = alpha + static_cast<int64_t>(edge_ids[k]) * H;
          const T* exps = row + (k - begin) * H;
          for (int64_t h = 0; h < H; ++h) out[h] = dead ? T(0) : exps[h] * total[h];
        }
        if (loops) {
          for (int64_t h = 0; h < H; ++h) alpha_self[r * H + h] = loop_dead ? T(0) : row[n + h] * total[h];
        }
      }
    });
  });
}

// The backward of CsrAttention for its output cotangent g (E, H): per row r and head h, with
// s = sum over live slots of alpha * g, every live slot's d_raw = alpha * (g - s) * (raw >= 0 ? 1 : slope)
// (raw = src[cols[k], h] + dst[r, h]) goes to d_raw[edge_ids[k], h] and is summed into d_dst[r, h];
// dead slots get 0. d_src is the sum of d_raw at the senders (left to the caller). With self loops
// (alpha_self, its cotangent g_self and d_self (N, H)) the loop is one more term of s and of d_dst[r],
// and its own d_raw goes to d_self[r] (the caller adds it to d_src[r] too); a dead loop (loop_live) gets 0.
template <typename T>
void CsrAttentionBackward(ffi::ThreadPool& pool, const int32_t* row_ptr, const int32_t* cols, const int32_t* edge_ids,
                          const T* src, const T* dst, const bool* live, const bool* loop_live, T slope, const T* alpha,
                          const T* g, const T* alpha_self, const T* g_self, int64_t n_rows, int64_t heads, T* d_raw,
                          T* d_dst, T* d_self) {
  WithHeadCount(heads, [&](auto head_count) {
    using Lanes = AttentionLanes<T, decltype(head_count)>;
    const int64_t H = head_count;
    ParallelRows(pool, row_ptr, n_rows, static_cast<int64_t>(row_ptr[n_rows]) * H, [&](int64_t first, int64_t last) {
      HeadScratch<T> weighted_scratch(H), sum_scratch(H);
      T* __restrict__ weighted = weighted_scratch.get();
      T* __restrict__ sum = sum_scratch.get();
      const bool loops = d_self != nullptr;
      for (int64_t r = first; r < last; ++r) {
        const int64_t begin = row_ptr[r], end = row_ptr[r + 1];
        const T* own = dst + r * H;
        for (int64_t h = 0; h < H; ++h) weighted[h] = sum[h] = T(0);
        for (int64_t k = begin; k < end; ++k) {
          const int64_t e = static_cast<int64_t>(edge_ids[k]) * H;
          const bool alive = live == nullptr || live[edge_ids[k]];
          for (int64_t h = 0; h < H; ++h) weighted[h] += alive ? alpha[e + h] * g[e + h] : T(0);
        }
        const bool loop_alive = loops && (loop_live == nullptr || loop_live[r]);
        if (loop_alive) {
          for (int64_t h = 0; h < H; ++h) weighted[h] += alpha_self[r * H + h] * g_self[r * H + h];
        }
        for (int64_t k = begin; k < end; ++k) {
          const int64_t e = static_cast<int64_t>(edge_ids[k]) * H;
          if (live != nullptr && !live[edge_ids[k]]) {
            std::fill(d_raw + e, d_raw + e + H, T(0));
            continue;
          }
          Lanes::Backward(src + static_cast<int64_t>(cols[k]) * H, own, alpha + e, g + e, weighted, slope, d_raw + e,
                          sum, H);
        }
        if (loop_alive) {
          Lanes::Backward(src + r * H, own, alpha_self + r * H, g_self + r * H, weighted, slope, d_self + r * H, sum, H);
        } else if (loops) {
          std::fill(d_self + r * H, d_self + r * H + H, T(0));
        }
        for (int64_t h = 0; h < H; ++h) d_dst[r * H + h] = sum[h];
      }
    });
  });
}

int64_t Rows(const ffi::AnyBuffer& buffer) { return buffer.dimensions().size() ? buffer.dimensions()[0] : 1; }

int64_t RowWidth(const ffi::AnyBuffer& buffer) {
  const int64_t rows = Rows(buffer);
  return rows ? static_cast<int64_t>(buffer.element_count()) / rows : 0;
}

// The product of the trailing dimensions (1 for a vector), read from the shape, so that it is also
// known for a buffer of 0 rows (an edgeless graph's (0, H) edge data).
int64_t TrailingWidth(const ffi::AnyBuffer& buffer) {
  int64_t width = 1;
  const auto dims = buffer.dimensions();
  for (size_t i = 1; i < dims.size(); ++i) width *= dims[i];
  return width;
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

// A self loop per row (loop_base >= 0, see CsrSum) reads u's row r and edge data at loop_base + r.
ffi::Error ReadLoops(const char* kernel, int64_t loop_base, int64_t n_rows, int64_t node_rows,
                     const ffi::AnyBuffer* edge_data) {
  if (loop_base < 0) return ffi::Error::Success();
  if (node_rows != n_rows) return Invalid(kernel, "self loops need node data with one row per output row");
  if (edge_data != nullptr && edge_data->element_count() > 0 && Rows(*edge_data) < loop_base + n_rows) {
    return Invalid(kernel, "the edge data must have an entry for every self loop");
  }
  return ffi::Error::Success();
}

ffi::Error CsrSumImpl(ffi::ThreadPool pool, ffi::AnyBuffer row_ptr, ffi::AnyBuffer cols, ffi::AnyBuffer edge_ids,
                      ffi::AnyBuffer u, ffi::AnyBuffer w, int64_t loop_base, ffi::Result<ffi::AnyBuffer> out) {
  constexpr const char* kKernel = "jgrad_csr_sum";
  AskForHugePages({&*out});
  const int64_t n_rows = Rows(*out), m = RowWidth(*out);
  const bool weighted = w.element_count() > 0;
  CsrIndices csr;
  if (auto error = ReadIndices(kKernel, row_ptr, cols, edge_ids, n_rows, csr); error.failure()) return error;
  if (RowWidth(u) != m) return Invalid(kKernel, "u and out must have the same row width");
  if (auto error = ReadLoops(kKernel, loop_base, n_rows, Rows(u), &w); error.failure()) return error;
  int64_t heads = 1;
  if (weighted) {
    if (auto error = ReadHeads(kKernel, w, m, heads); error.failure()) return error;
  }
  std::vector<ffi::DataType> types = {u.element_type(), out->element_type()};
  if (weighted) types.push_back(w.element_type());
  return ForFloatType(kKernel, types, [&](auto zero) {
    using T = decltype(zero);
    CsrSum(pool, csr.row_ptr, csr.cols, csr.edge_ids, u.typed_data<T>(), weighted ? w.typed_data<T>() : nullptr,
           weighted, n_rows, m, heads, loop_base, out->typed_data<T>());
  });
}

ffi::Error CsrEdgeDotImpl(ffi::ThreadPool pool, ffi::AnyBuffer row_ptr, ffi::AnyBuffer cols, ffi::AnyBuffer edge_ids,
                          ffi::AnyBuffer u, ffi::AnyBuffer v, int64_t loop_base, ffi::Result<ffi::AnyBuffer> out) {
  constexpr const char* kKernel = "jgrad_csr_edge_dot";
  AskForHugePages({&*out});
  const int64_t n_rows = Rows(v), m = RowWidth(v), n_edges = Rows(*out);
  CsrIndices csr;
  if (auto error = ReadIndices(kKernel, row_ptr, cols, edge_ids, n_rows, csr); error.failure()) return error;
  if (RowWidth(u) != m) return Invalid(kKernel, "u and v must have the same row width");
  if (auto error = ReadLoops(kKernel, loop_base, n_rows, Rows(u), &*out); error.failure()) return error;
  int64_t heads = 1;
  if (auto error = ReadHeads(kKernel, *out, m, heads); error.failure()) return error;
  return ForFloatType(kKernel, {u.element_type(), v.element_type(), out->element_type()}, [&](auto zero) {
    using T = decltype(zero);
    CsrEdgeDot(pool, csr.row_ptr, csr.cols, csr.edge_ids, u.typed_data<T>(), v.typed_data<T>(), n_rows, m, heads,
               n_edges, loop_base, out->typed_data<T>());
  });
}

ffi::Error CsrSumDotImpl(ffi::ThreadPool pool, ffi::AnyBuffer row_ptr, ffi::AnyBuffer cols, ffi::AnyBuffer edge_ids,
                         ffi::AnyBuffer g, ffi::AnyBuffer u, ffi::AnyBuffer w, int64_t loop_base,
                         ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::AnyBuffer> dots) {
  constexpr const char* kKernel = "jgrad_csr_sum_dot";
  AskForHugePages({&*out, &*dots});
  const int64_t n_rows = Rows(*out), m = RowWidth(*out), n_edges = Rows(*dots);
  CsrIndices csr;
  if (auto error = ReadIndices(kKernel, row_ptr, cols, edge_ids, n_rows, csr); error.failure()) return error;
  if (RowWidth(g) != m || RowWidth(u) != m || Rows(u) != n_rows) {
    return Invalid(kKernel, "g, u and out must have the same row width, and u one row per output row");
  }
  if (w.element_count() != dots->element_count() || Rows(w) != n_edges) {
    return Invalid(kKernel, "w and dots must have one entry per edge and head");
  }
  if (auto error = ReadLoops(kKernel, loop_base, n_rows, Rows(g), &w); error.failure()) return error;
  int64_t heads = 1;
  if (auto error = ReadHeads(kKernel, *dots, m, heads); error.failure()) return error;
  const std::vector<ffi::DataType> types = {g.element_type(), u.element_type(), w.element_type(),
                                            out->element_type(), dots->element_type()};
  return ForFloatType(kKernel, types, [&](auto zero) {
    using T = decltype(zero);
    CsrSumDot(pool, csr.row_ptr, csr.cols, csr.edge_ids, g.typed_data<T>(), u.typed_data<T>(), w.typed_data<T>(),
              n_rows, m, heads, n_edges, loop_base, out->typed_data<T>(), dots->typed_data<T>());
  });
}

template <bool kMax>
ffi::Error CsrExtremumImpl(ffi::ThreadPool pool, ffi::AnyBuffer row_ptr, ffi::AnyBuffer cols, ffi::AnyBuffer edge_ids,
                           ffi::AnyBuffer u, ffi::AnyBuffer w, ffi::AnyBuffer live, ffi::Result<ffi::AnyBuffer> out,
                           ffi::Result<ffi::AnyBuffer> arg, ffi::Result<ffi::AnyBuffer> count) {
  const char* kernel = kMax ? "jgrad_csr_max" : "jgrad_csr_min";
  AskForHugePages({&*out, &*arg, &*count});
  const int64_t n_rows = Rows(*out), m = RowWidth(*out);
  const bool weighted = w.element_count() > 0, masked = live.element_count() > 0;
  CsrIndices csr;
  if (auto error = ReadIndices(kernel, row_ptr, cols, edge_ids, n_rows, csr); error.failure()) return error;
  if (RowWidth(u) != m) return Invalid(kernel, "u and out must have the same row width");
  for (const auto* index : {&*arg, &*count}) {
    if (index->element_type() != ffi::DataType::S32 || index->element_count() != out->element_count()) {
      return Invalid(kernel, "arg and count must be int32 of out's shape");
    }
  }
  if (masked && live.element_type() != ffi::DataType::PRED) return Invalid(kernel, "live must be bool");
  int64_t heads = 1;
  if (weighted) {
    if (auto error = ReadHeads(kernel, w, m, heads); error.failure()) return error;
  }
  std::vector<ffi::DataType> types = {u.element_type(), out->element_type()};
  if (weighted) types.push_back(w.element_type());
  return ForFloatType(kernel, types, [&](auto zero) {
    using T = decltype(zero);
    CsrExtremum<kMax>(pool, csr.row_ptr, csr.cols, csr.edge_ids, u.typed_data<T>(),
                      weighted ? w.typed_data<T>() : nullptr, masked ? live.typed_data<bool>() : nullptr, n_rows,
                      m, heads, out->typed_data<T>(), arg->typed_data<int32_t>(), count->typed_data<int32_t>());
  });
}

ffi::Error CsrMaxImpl(ffi::ThreadPool pool, ffi::AnyBuffer row_ptr, ffi::AnyBuffer cols, ffi::AnyBuffer edge_ids,
                      ffi::AnyBuffer u, ffi::AnyBuffer w, ffi::AnyBuffer live, ffi::Result<ffi::AnyBuffer> out,
                      ffi::Result<ffi::AnyBuffer> arg, ffi::Result<ffi::AnyBuffer> count) {
  return CsrExtremumImpl<true>(pool, row_ptr, cols, edge_ids, u, w, live, out, arg, count);
}

ffi::Error CsrMinImpl(ffi::ThreadPool pool, ffi::AnyBuffer row_ptr, ffi::AnyBuffer cols, ffi::AnyBuffer edge_ids,
                      ffi::AnyBuffer u, ffi::AnyBuffer w, ffi::AnyBuffer live, ffi::Result<ffi::AnyBuffer> out,
                      ffi::Result<ffi::AnyBuffer> arg, ffi::Result<ffi::AnyBuffer> count) {
  return CsrExtremumImpl<false>(pool, row_ptr, cols, edge_ids, u, w, live, out, arg, count);
}

ffi::Error CsrRoutedImpl(ffi::ThreadPool pool, ffi::AnyBuffer row_ptr, ffi::AnyBuffer cols, ffi::AnyBuffer edge_ids,
                         ffi::AnyBuffer u, ffi::AnyBuffer w, ffi::AnyBuffer live, ffi::AnyBuffer top,
                         ffi::AnyBuffer share, ffi::Result<ffi::AnyBuffer> du, ffi::Result<ffi::AnyBuffer> dw) {
  constexpr const char* kKernel = "jgrad_csr_routed";
  AskForHugePages({&*du, &*dw});
  const int64_t n_rows = Rows(*du), m = RowWidth(*du);
  const bool weighted = w.element_count() > 0, masked = live.element_count() > 0;
  CsrIndices csr;
  if (auto error = ReadIndices(kKernel, row_ptr, cols, edge_ids, n_rows, csr); error.failure()) return error;
  if (RowWidth(u) != m || RowWidth(top) != m || RowWidth(share) != m || Rows(u) != n_rows) {
    return Invalid(kKernel, "u, top, share and du must have the same row width, and u one row per output row");
  }
  if (masked && live.element_type() != ffi::DataType::PRED) return Invalid(kKernel, "live must be bool");
  int64_t heads = 1;
  if (weighted) {
    if (auto error = ReadHeads(kKernel, w, m, heads); error.failure()) return error;
    if (dw->element_count() != w.element_count()) return Invalid(kKernel, "dw must have w's shape");
  }
  std::vector<ffi::DataType> types = {u.element_type(), top.element_type(), share.element_type(),
                                      du->element_type()};
  if (weighted) types.insert(types.end(), {w.element_type(), dw->element_type()});
  return ForFloatType(kKernel, types, [&](auto zero) {
    using T = decltype(zero);
    CsrRouted(pool, csr.row_ptr, csr.cols, csr.edge_ids, u.typed_data<T>(), weighted ? w.typed_data<T>() : nullptr,
              masked ? live.typed_data<bool>() : nullptr, top.typed_data<T>(), share.typed_data<T>(), n_rows, m,
              heads, weighted ? Rows(w) : 0, du->typed_data<T>(), weighted ? dw->typed_data<T>() : nullptr);
  });
}

// edge_data[edge_ids[k], :] = 0 for the slots k after the last row (edges that no row walk reaches).
template <typename T>
void ZeroUnslotted(const CsrIndices& csr, int64_t n_rows, int64_t n_slots, int64_t heads, T* edge_data) {
  for (int64_t k = csr.row_ptr[n_rows]; k < n_slots; ++k) {
    std::fill(edge_data + static_cast<int64_t>(csr.edge_ids[k]) * heads,
              edge_data + static_cast<int64_t>(csr.edge_ids[k] + 1) * heads, T(0));
  }
}

// The operands of both attention kernels: src and dst (N, H) or (N,), one slot per edge, and live: (0,),
// (E,) bool, or with self loops (E + N,), the loops' liveness after the edges' (loop_live points to it).
ffi::Error ReadAttention(const char* kernel, const ffi::AnyBuffer& cols, const ffi::AnyBuffer& src,
                         const ffi::AnyBuffer& dst, const ffi::AnyBuffer& live, int64_t n_rows, int64_t n_edges,
                         int64_t heads, bool loops, const bool*& edge_live, const bool*& loop_live) {
  if (src.element_count() != dst.element_count() || Rows(dst) != n_rows || TrailingWidth(src) != heads) {
    return Invalid(kernel, "src and dst must both have shape (N, H), with H as in the edge data");
  }
  const int64_t entries = live.element_count();
  if (entries > 0 && (live.element_type() != ffi::DataType::PRED ||
                      !(entries == n_edges || (loops && entries == n_edges + n_rows)))) {
    return Invalid(kernel, "live must be bool with one entry per edge (and, with self loops, one per loop after them)");
  }
  edge_live = entries > 0 ? live.typed_data<bool>() : nullptr;
  loop_live = entries > n_edges ? edge_live + n_edges : nullptr;
  if (static_cast<int64_t>(cols.element_count()) != n_edges) return Invalid(kernel, "the CSR must have one slot per edge");
  return ffi::Error::Success();
}

// Self-loop data of the attention kernels (alpha_self, g_self, d_self): (N, H) like dst, or (0,) without loops.
ffi::Error ReadSelfLoops(const char* kernel, const ffi::AnyBuffer& dst, std::initializer_list<const ffi::AnyBuffer*> loop_data,
                         bool& loops) {
  loops = (*loop_data.begin())->element_count() > 0;
  for (const ffi::AnyBuffer* buffer : loop_data) {
    if (buffer->element_count() != (loops ? dst.element_count() : 0)) {
      return Invalid(kernel, "the self loops' data must all have dst's shape (N, H), or all be empty");
    }
  }
  return ffi::Error::Success();
}

template <typename T>
T* DataOrNull(ffi::AnyBuffer& buffer, bool present) { return present ? buffer.typed_data<T>() : nullptr; }

ffi::Error CsrAttentionImpl(ffi::ThreadPool pool, ffi::AnyBuffer row_ptr, ffi::AnyBuffer cols, ffi::AnyBuffer edge_ids,
                            ffi::AnyBuffer src, ffi::AnyBuffer dst, ffi::AnyBuffer live, double negative_slope,
                            ffi::Result<ffi::AnyBuffer> alpha, ffi::Result<ffi::AnyBuffer> alpha_self) {
  constexpr const char* kKernel = "jgrad_csr_attention";
  AskForHugePages({&*alpha, &*alpha_self});
  const int64_t n_rows = Rows(dst), n_edges = Rows(*alpha), heads = TrailingWidth(*alpha);
  CsrIndices csr;
  if (auto error = ReadIndices(kKernel, row_ptr, cols, edge_ids, n_rows, csr); error.failure()) return error;
  bool loops = false;
  if (auto error = ReadSelfLoops(kKernel, dst, {&*alpha_self}, loops); error.failure()) return error;
  const bool *edge_live = nullptr, *loop_live = nullptr;
  if (auto error = ReadAttention(kKernel, cols, src, dst, live, n_rows, n_edges, heads, loops, edge_live, loop_live);
      error.failure()) {
    return error;
  }
  return ForFloatType(kKernel, {src.element_type(), dst.element_type(), alpha->element_type()}, [&](auto zero) {
    using T = decltype(zero);
    CsrAttention(pool, csr.row_ptr, csr.cols, csr.edge_ids, src.typed_data<T>(), dst.typed_data<T>(), edge_live,
                 loop_live, static_cast<T>(negative_slope), n_rows, heads, alpha->typed_data<T>(),
                 DataOrNull<T>(*alpha_self, loops));
    ZeroUnslotted(csr, n_rows, cols.element_count(), heads, alpha->typed_data<T>());
  });
}

ffi::Error CsrAttentionBackwardImpl(ffi::ThreadPool pool, ffi::AnyBuffer row_ptr, ffi::AnyBuffer cols,
                                    ffi::AnyBuffer edge_ids, ffi::AnyBuffer src, ffi::AnyBuffer dst, ffi::AnyBuffer live,
                                    ffi::AnyBuffer alpha, ffi::AnyBuffer g, ffi::AnyBuffer alpha_self,
                                    ffi::AnyBuffer g_self, double negative_slope, ffi::Result<ffi::AnyBuffer> d_raw,
                                    ffi::Result<ffi::AnyBuffer> d_dst, ffi::Result<ffi::AnyBuffer> d_self) {
  constexpr const char* kKernel = "jgrad_csr_attention_backward";
  const int64_t n_rows = Rows(dst), n_edges = Rows(alpha), heads = TrailingWidth(alpha);
  CsrIndices csr;
  if (auto error = ReadIndices(kKernel, row_ptr, cols, edge_ids, n_rows, csr); error.failure()) return error;
  if (g.element_count() != alpha.element_count() || d_raw->element_count() != alpha.element_count() ||
      d_dst->element_count() != dst.element_count()) {
    return Invalid(kKernel, "g and d_raw must have alpha's shape and d_dst dst's");
  }
  bool loops = false;
  if (auto error = ReadSelfLoops(kKernel, dst, {&alpha_self, &g_self, &*d_self}, loops); error.failure()) return error;
  const bool *edge_live = nullptr, *loop_live = nullptr;
  if (auto error = ReadAttention(kKernel, cols, src, dst, live, n_rows, n_edges, heads, loops, edge_live, loop_live);
      error.failure()) {
    return error;
  }
  std::vector<ffi::DataType> types = {src.element_type(), dst.element_type(), alpha.element_type(),
                                      g.element_type(), d_raw->element_type(), d_dst->element_type()};
  if (loops) types.insert(types.end(), {alpha_self.element_type(), g_self.element_type(), d_self->element_type()});
  return ForFloatType(kKernel, types, [&](auto zero) {
    using T = decltype(zero);
    CsrAttentionBackward(pool, csr.row_ptr, csr.cols, csr.edge_ids, src.typed_data<T>(), dst.typed_data<T>(),
                         edge_live, loop_live, static_cast<T>(negative_slope),
                         alpha.typed_data<T>(), g.typed_data<T>(), DataOrNull<T>(alpha_self, loops),
                         DataOrNull<T>(g_self, loops), n_rows, heads, d_raw->typed_data<T>(), d_dst->typed_data<T>(),
                         DataOrNull<T>(*d_self, loops));
    ZeroUnslotted(csr, n_rows, cols.element_count(), heads, d_raw->typed_data<T>());
  });
}

}  // namespace

// The handlers build as two translation units compiled in parallel: JGRAD_KERNELS_PART = 1 selects the
// sums, dots and attention, 2 the extremum kernels; without it, one unit holds them all. Each unit
// instantiates only the templates its handlers use (with -O3: about 23 and 15 s of CPU, against 32-36 s
// for the whole file, one compiler process).
#ifndef JGRAD_KERNELS_PART
#define JGRAD_KERNELS_PART 0
#endif
#define JGRAD_IN_PART(n) (JGRAD_KERNELS_PART == 0 || JGRAD_KERNELS_PART == (n))

#if JGRAD_IN_PART(1)
XLA_FFI_DEFINE_HANDLER_SYMBOL(JgradCsrSum, CsrSumImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // row_ptr (R + 1,)
                                  .Arg<ffi::AnyBuffer>()  // cols (S,)
                                  .Arg<ffi::AnyBuffer>()  // edge_ids (S,)
                                  .Arg<ffi::AnyBuffer>()  // u (N, M), M = H * F
                                  .Arg<ffi::AnyBuffer>()  // w (E,), (E, H) or (0,)
                                  .Attr<int64_t>("loop_base")  // E with a self loop per row, else -1
                                  .Ret<ffi::AnyBuffer>());  // out (R, M)

XLA_FFI_DEFINE_HANDLER_SYMBOL(JgradCsrEdgeDot, CsrEdgeDotImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // row_ptr (R + 1,)
                                  .Arg<ffi::AnyBuffer>()  // cols (S,)
                                  .Arg<ffi::AnyBuffer>()  // edge_ids (S,)
                                  .Arg<ffi::AnyBuffer>()  // u (N, M), M = H * F
                                  .Arg<ffi::AnyBuffer>()  // v (R, M)
                                  .Attr<int64_t>("loop_base")  // E with a self loop per row, else -1
                                  .Ret<ffi::AnyBuffer>());  // out (E,) or (E, H); (E + R, ...) with loops

XLA_FFI_DEFINE_HANDLER_SYMBOL(JgradCsrSumDot, CsrSumDotImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // row_ptr (R + 1,)
                                  .Arg<ffi::AnyBuffer>()  // cols (S,)
                                  .Arg<ffi::AnyBuffer>()  // edge_ids (S,)
                                  .Arg<ffi::AnyBuffer>()  // g (N, M), gathered; M = H * F
                                  .Arg<ffi::AnyBuffer>()  // u (R, M), one row per output row
                                  .Arg<ffi::AnyBuffer>()  // w (E,) or (E, H); (E + R, ...) with loops
                                  .Attr<int64_t>("loop_base")  // E with a self loop per row, else -1
                                  .Ret<ffi::AnyBuffer>()  // out (R, M)
                                  .Ret<ffi::AnyBuffer>());  // dots like w

XLA_FFI_DEFINE_HANDLER_SYMBOL(JgradCsrRouted, CsrRoutedImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // row_ptr (R + 1,), the reversed graph
                                  .Arg<ffi::AnyBuffer>()  // cols (S,)
                                  .Arg<ffi::AnyBuffer>()  // edge_ids (S,)
                                  .Arg<ffi::AnyBuffer>()  // u (R, M), one row per output row; M = H * F
                                  .Arg<ffi::AnyBuffer>()  // w (E,), (E, H) or (0,)
                                  .Arg<ffi::AnyBuffer>()  // live (E,) bool or (0,)
                                  .Arg<ffi::AnyBuffer>()  // top (N, M), the forward's extremum
                                  .Arg<ffi::AnyBuffer>()  // share (N, M), cotangent / tie count
                                  .Ret<ffi::AnyBuffer>()  // du (R, M)
                                  .Ret<ffi::AnyBuffer>());  // dw like w, or (0,)

XLA_FFI_DEFINE_HANDLER_SYMBOL(JgradCsrAttention, CsrAttentionImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // row_ptr (N + 1,), rows = receivers
                                  .Arg<ffi::AnyBuffer>()  // cols (S,)
                                  .Arg<ffi::AnyBuffer>()  // edge_ids (S,)
                                  .Arg<ffi::AnyBuffer>()  // src (N, H), the senders' scores
                                  .Arg<ffi::AnyBuffer>()  // dst (N, H), the receivers' scores
                                  .Arg<ffi::AnyBuffer>()  // live (E,) or (E + N,) with loops, bool; or (0,)
                                  .Attr<double>("negative_slope")
                                  .Ret<ffi::AnyBuffer>()  // alpha (E, H)
                                  .Ret<ffi::AnyBuffer>());  // alpha_self (N, H) with self loops, else (0,)

XLA_FFI_DEFINE_HANDLER_SYMBOL(JgradCsrAttentionBackward, CsrAttentionBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // row_ptr (N + 1,), rows = receivers
                                  .Arg<ffi::AnyBuffer>()  // cols (S,)
                                  .Arg<ffi::AnyBuffer>()  // edge_ids (S,)
                                  .Arg<ffi::AnyBuffer>()  // src (N, H)
                                  .Arg<ffi::AnyBuffer>()  // dst (N, H)
                                  .Arg<ffi::AnyBuffer>()  // live (E,) or (E + N,) with loops, bool; or (0,)
                                  .Arg<ffi::AnyBuffer>()  // alpha (E, H), the forward's result
                                  .Arg<ffi::AnyBuffer>()  // g (E, H), its cotangent
                                  .Arg<ffi::AnyBuffer>()  // alpha_self (N, H) with self loops, else (0,)
                                  .Arg<ffi::AnyBuffer>()  // g_self, its cotangent, the same shape
                                  .Attr<double>("negative_slope")
                                  .Ret<ffi::AnyBuffer>()  // d_raw (E, H)
                                  .Ret<ffi::AnyBuffer>()  // d_dst (N, H)
                                  .Ret<ffi::AnyBuffer>());  // d_self (N, H) with self loops, else (0,)
#endif  // JGRAD_IN_PART(1)

#if JGRAD_IN_PART(2)
#define JGRAD_EXTREMUM_BINDING                                                \
  ffi::Ffi::Bind()                                                            \
      .Ctx<ffi::ThreadPool>()                                                 \
      .Arg<ffi::AnyBuffer>()  /* row_ptr (R + 1,) */                          \
      .Arg<ffi::AnyBuffer>()  /* cols (S,) */                                 \
      .Arg<ffi::AnyBuffer>()  /* edge_ids (S,) */                             \
      .Arg<ffi::AnyBuffer>()  /* u (N, M), M = H * F */                       \
      .Arg<ffi::AnyBuffer>()  /* w (E,), (E, H) or (0,) */                    \
      .Arg<ffi::AnyBuffer>()  /* live (E,) bool or (0,) */                    \
      .Ret<ffi::AnyBuffer>()  /* out (R, M) */                                \
      .Ret<ffi::AnyBuffer>()  /* arg (R, M) int32 */                          \
      .Ret<ffi::AnyBuffer>()  /* count (R, M) int32 */

XLA_FFI_DEFINE_HANDLER_SYMBOL(JgradCsrMax, CsrMaxImpl, JGRAD_EXTREMUM_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JgradCsrMin, CsrMinImpl, JGRAD_EXTREMUM_BINDING);
#endif  // JGRAD_IN_PART(2)
