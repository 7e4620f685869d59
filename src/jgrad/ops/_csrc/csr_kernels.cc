// CPU kernels for sum aggregation and per-edge dot products over a CSR-ordered graph, called from JAX
// through the XLA FFI (see jgrad/ops/_native.py, which compiles this file on first use).
//
// A CSR side of a graph is (row_ptr, cols, edge_ids): the slots row_ptr[r] .. row_ptr[r+1]-1 hold
// the neighbours cols[k] of row r and the id edge_ids[k] of the edge behind each slot.
//
//   jgrad_csr_sum:      out[r, :] = sum_k w[edge_ids[k]] * u[cols[k], :]     (w of size 0: no weights)
//   jgrad_csr_edge_dot: out[edge_ids[k]] = <v[r, :], u[cols[k], :]>;  edges in no slot get 0
//   jgrad_csr_sum_dot:  both at once over one side, sharing each gathered row g[cols[k]]:
//                       out[r, :] = sum_k w[edge_ids[k]] * g[cols[k], :],  dots[edge_ids[k]] = <u[r, :], g[cols[k], :]>
//                       (the backward of a weighted sum: the node and edge cotangents in one pass)
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
#include <cstring>
#include <thread>
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

template <typename T>
void CsrSum(ffi::ThreadPool& pool, const int32_t* row_ptr, const int32_t* cols, const int32_t* edge_ids, const T* u,
            const T* w, bool weighted, int64_t n_rows, int64_t m, T* out) {
  ParallelRows(pool, row_ptr, n_rows, static_cast<int64_t>(row_ptr[n_rows]) * m, [&](int64_t first, int64_t last) {
    for (int64_t r = first; r < last; ++r) {
      T* __restrict__ acc = out + r * m;
      std::fill(acc, acc + m, T(0));
      const int64_t begin = row_ptr[r], end = row_ptr[r + 1];
      for (int64_t k = begin; k < end; ++k) {
        if (k + kPrefetchDistance < end) PrefetchRow(u + static_cast<int64_t>(cols[k + kPrefetchDistance]) * m, m);
        const T* __restrict__ row = u + static_cast<int64_t>(cols[k]) * m;
        if (weighted) {
          const T scale = w[edge_ids[k]];
          for (int64_t j = 0; j < m; ++j) acc[j] += scale * row[j];
        } else {
          for (int64_t j = 0; j < m; ++j) acc[j] += row[j];
        }
      }
    }
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

template <typename T>
void CsrEdgeDot(ffi::ThreadPool& pool, const int32_t* row_ptr, const int32_t* cols, const int32_t* edge_ids,
                const T* u, const T* v, int64_t n_rows, int64_t m, int64_t n_edges, T* out) {
  std::fill(out, out + n_edges, T(0));
  ParallelRows(pool, row_ptr, n_rows, static_cast<int64_t>(row_ptr[n_rows]) * m, [&](int64_t first, int64_t last) {
    for (int64_t r = first; r < last; ++r) {
      const T* own = v + r * m;
      const int64_t begin = row_ptr[r], end = row_ptr[r + 1];
      for (int64_t k = begin; k < end; ++k) {
        if (k + kPrefetchDistance < end) PrefetchRow(u + static_cast<int64_t>(cols[k + kPrefetchDistance]) * m, m);
        out[edge_ids[k]] = Dot(own, u + static_cast<int64_t>(cols[k]) * m, m);
      }
    }
  });
}

template <typename T>
void CsrSumDot(ffi::ThreadPool& pool, const int32_t* row_ptr, const int32_t* cols, const int32_t* edge_ids,
               const T* g, const T* u, const T* w, int64_t n_rows, int64_t m, int64_t n_edges, T* out,
               T* dots) {
  std::fill(dots, dots + n_edges, T(0));
  ParallelRows(pool, row_ptr, n_rows, static_cast<int64_t>(row_ptr[n_rows]) * m, [&](int64_t first, int64_t last) {
    for (int64_t r = first; r < last; ++r) {
      T* __restrict__ acc = out + r * m;
      const T* own = u + r * m;
      std::fill(acc, acc + m, T(0));
      const int64_t begin = row_ptr[r], end = row_ptr[r + 1];
      for (int64_t k = begin; k < end; ++k) {
        if (k + kPrefetchDistance < end) PrefetchRow(g + static_cast<int64_t>(cols[k + kPrefetchDistance]) * m, m);
        const T* __restrict__ row = g + static_cast<int64_t>(cols[k]) * m;
        const int32_t edge = edge_ids[k];
        dots[edge] = Dot(own, row, m);
        const T scale = w[edge];
        for (int64_t j = 0; j < m; ++j) acc[j] += scale * row[j];
      }
    }
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
  std::vector<ffi::DataType> types = {u.element_type(), out->element_type()};
  if (weighted) types.push_back(w.element_type());
  return ForFloatType(kKernel, types, [&](auto zero) {
    using T = decltype(zero);
    CsrSum(pool, csr.row_ptr, csr.cols, csr.edge_ids, u.typed_data<T>(), weighted ? w.typed_data<T>() : nullptr,
           weighted, n_rows, m, out->typed_data<T>());
  });
}

ffi::Error CsrEdgeDotImpl(ffi::ThreadPool pool, ffi::AnyBuffer row_ptr, ffi::AnyBuffer cols, ffi::AnyBuffer edge_ids,
                          ffi::AnyBuffer u, ffi::AnyBuffer v, ffi::Result<ffi::AnyBuffer> out) {
  constexpr const char* kKernel = "jgrad_csr_edge_dot";
  const int64_t n_rows = Rows(v), m = RowWidth(v), n_edges = out->element_count();
  CsrIndices csr;
  if (auto error = ReadIndices(kKernel, row_ptr, cols, edge_ids, n_rows, csr); error.failure()) return error;
  if (RowWidth(u) != m) return Invalid(kKernel, "u and v must have the same row width");
  return ForFloatType(kKernel, {u.element_type(), v.element_type(), out->element_type()}, [&](auto zero) {
    using T = decltype(zero);
    CsrEdgeDot(pool, csr.row_ptr, csr.cols, csr.edge_ids, u.typed_data<T>(), v.typed_data<T>(), n_rows, m, n_edges,
               out->typed_data<T>());
  });
}

ffi::Error CsrSumDotImpl(ffi::ThreadPool pool, ffi::AnyBuffer row_ptr, ffi::AnyBuffer cols, ffi::AnyBuffer edge_ids,
                         ffi::AnyBuffer g, ffi::AnyBuffer u, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> out,
                         ffi::Result<ffi::AnyBuffer> dots) {
  constexpr const char* kKernel = "jgrad_csr_sum_dot";
  const int64_t n_rows = Rows(*out), m = RowWidth(*out), n_edges = dots->element_count();
  CsrIndices csr;
  if (auto error = ReadIndices(kKernel, row_ptr, cols, edge_ids, n_rows, csr); error.failure()) return error;
  if (RowWidth(g) != m || RowWidth(u) != m || Rows(u) != n_rows) {
    return Invalid(kKernel, "g, u and out must have the same row width, and u one row per output row");
  }
  if (static_cast<int64_t>(w.element_count()) != n_edges) {
    return Invalid(kKernel, "w and dots must have one entry per edge");
  }
  const std::vector<ffi::DataType> types = {g.element_type(), u.element_type(), w.element_type(),
                                            out->element_type(), dots->element_type()};
  return ForFloatType(kKernel, types, [&](auto zero) {
    using T = decltype(zero);
    CsrSumDot(pool, csr.row_ptr, csr.cols, csr.edge_ids, g.typed_data<T>(), u.typed_data<T>(), w.typed_data<T>(),
              n_rows, m, n_edges, out->typed_data<T>(), dots->typed_data<T>());
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JgradCsrSum, CsrSumImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // row_ptr (R + 1,)
                                  .Arg<ffi::AnyBuffer>()  // cols (S,)
                                  .Arg<ffi::AnyBuffer>()  // edge_ids (S,)
                                  .Arg<ffi::AnyBuffer>()  // u (N, M)
                                  .Arg<ffi::AnyBuffer>()  // w (E,) or (0,)
                                  .Ret<ffi::AnyBuffer>());  // out (R, M)

XLA_FFI_DEFINE_HANDLER_SYMBOL(JgradCsrEdgeDot, CsrEdgeDotImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // row_ptr (R + 1,)
                                  .Arg<ffi::AnyBuffer>()  // cols (S,)
                                  .Arg<ffi::AnyBuffer>()  // edge_ids (S,)
                                  .Arg<ffi::AnyBuffer>()  // u (N, M)
                                  .Arg<ffi::AnyBuffer>()  // v (R, M)
                                  .Ret<ffi::AnyBuffer>());  // out (E,)

XLA_FFI_DEFINE_HANDLER_SYMBOL(JgradCsrSumDot, CsrSumDotImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // row_ptr (R + 1,)
                                  .Arg<ffi::AnyBuffer>()  // cols (S,)
                                  .Arg<ffi::AnyBuffer>()  // edge_ids (S,)
                                  .Arg<ffi::AnyBuffer>()  // g (N, M), gathered
                                  .Arg<ffi::AnyBuffer>()  // u (R, M), one row per output row
                                  .Arg<ffi::AnyBuffer>()  // w (E,)
                                  .Ret<ffi::AnyBuffer>()  // out (R, M)
                                  .Ret<ffi::AnyBuffer>());  // dots (E,)
