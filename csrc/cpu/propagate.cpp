// Fused multi-layer sparse normalised propagation on the CPU (float32, float64).
//
// Computes out = sum_k w_k M^k x for M = diag(left) W diag(right), W in CSR (rowptr int64, col int32, optional
// values). What it fuses and what it follows:
//  * CSR row split (pytorch_sparse / pyg-lib; Yang, Buluc & Owens, "Design Principles for Sparse Matrix
//    Multiplication on the GPU"): each output row is owned by one thread and summed in CSR order, so results
//    are bitwise identical run to run whatever the thread count. The rows are cut into 16 chunks per thread of
//    equal work (nnz + rows), dealt round-robin: hubs do not stall one thread, and the threads walk the rows
//    together, so at any time they gather from the same region and share the L3 (on a bipartite graph: all users,
//    gathering items, then all items). Measured 15% faster than one contiguous range per thread.
//  * The layer combination is evaluated in Horner form,
//        h_L = w_L x,    h_k = w_k x + M h_{k+1},    out = h_0,
//    so the layers and their weighted sum are one chain of steps: no stack of layer outputs, and the backward
//    (the same chain through M^T) saves no activations.
//  * Intermediate buffers hold u = right * h, pre-scaled, so a step is an unweighted gather-sum over W when W is
//    binary (no weights array to read: the values live in the scales) and the epilogue is
//        u_k,i = (left*right)_i s_i + w_k right_i x_i     (intermediate steps)
//        out_i = left_i s_i + w_0 x_i                      (last step),     s_i = sum_e W_ie u_{k+1, col_e}.
//    The first step gathers x itself with a per-source scale w_L right_j (a vector that stays in cache), so u_L
//    is never written: L steps over two (n, d) buffers, the output and one ping-pong buffer (none for L = 1).
//  * Columns go in chunks of 256 bytes (64 floats / 32 doubles) whose accumulators are 8 AVX2 registers (GCC
//    vector extensions, lowered to SSE pairs without AVX2), then 32, 16, ..., 1 wide, so any d works and
//    d in {32, 64, 128} take full-width chunks. A row's edges are walked once per chunk while they are in L1.
//  * The row gathers are latency-bound, so each edge prefetches the source chunk 12 edges ahead. (Column tiling
//    of the whole chain, to keep the gathered rows in cache, was measured slower on the 2-core AVX2 machine at
//    26k and 200k nodes: narrower chunks cost more per edge than the cache hits save.)

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../common/propagate_chain.h"
#include "../common/simd.h"

#include <algorithm>
#include <mutex>
#include <vector>

MMREC_FAST_ISA_BEGIN
namespace {

constexpr int64_t kPrefetchDistance = 12;
constexpr int64_t kChunksPerThread = 16;

// One Horner step over all rows:
//   dst_i = row_scale_i * sum_e (value_e * src_scale_{col_e}) src_{col_e} + x_coef * x_scale_i * x_i.
template <typename T>
struct PropagateStep {
  const int64_t* rowptr;
  const int32_t* col;
  const T* values;  // (nnz,) or nullptr: binary W
  int64_t nnz;
  const T* src;        // (n, d)
  const T* src_scale;  // (n,) or nullptr: 1
  const T* row_scale;  // (m,) or nullptr: 1
  const T* x;          // (m, d) or nullptr: no x term
  const T* x_scale;  // (m,) or nullptr: 1
  T x_coef;
  T* dst;  // (m, d)
  int64_t d;
};

// The unaligned 256-bit vectors of csrc/common/simd.h.
using simd::Vec;

// Unaligned loads and stores (the vector types are declared with element alignment and may_alias).
template <typename T>
inline Vec<T> load_vec(const T* p) {
  return *reinterpret_cast<const Vec<T>*>(p);
}

template <typename T>
inline void store_vec(T* p, Vec<T> v) {
  *reinterpret_cast<Vec<T>*>(p) = v;
}

template <typename T, int WIDTH, bool WEIGHTED>
inline void step_row_chunk(const PropagateStep<T>& s, int64_t i, int64_t c0) {
  constexpr int kLanes = 32 / sizeof(T);
  constexpr int kVecs = WIDTH / kLanes;  // WIDTH is either a multiple of kLanes or smaller than it
  constexpr int kScalars = kVecs == 0 ? WIDTH : 0;
  Vec<T> acc[kVecs > 0 ? kVecs : 1];
  T acc_s[kScalars > 0 ? kScalars : 1];
#pragma GCC unroll 16
  for (int v = 0; v < kVecs; ++v) acc[v] = Vec<T>{};
#pragma GCC unroll 16
  for (int k = 0; k < kScalars; ++k) acc_s[k] = T(0);
  const int64_t e_end = s.rowptr[i + 1];
  for (int64_t e = s.rowptr[i]; e < e_end; ++e) {
    // Prefetch the source chunk kPrefetchDistance edges ahead (past this row too: the next row's edges follow).
    if (e + kPrefetchDistance < s.nnz) {
      const char* ahead =
          reinterpret_cast<const char*>(s.src + static_cast<int64_t>(s.col[e + kPrefetchDistance]) * s.d + c0);
#pragma GCC unroll 4
      for (int line = 0; line < static_cast<int>(WIDTH * sizeof(T)); line += 64) __builtin_prefetch(ahead + line);
    }
    const int64_t j = s.col[e];
    const T* src_row = s.src + j * s.d + c0;
    if constexpr (WEIGHTED) {
      const T w = (s.values ? s.values[e] : T(1)) * (s.src_scale ? s.src_scale[j] : T(1));
#pragma GCC unroll 16
      for (int v = 0; v < kVecs; ++v) acc[v] += w * load_vec(src_row + v * kLanes);
#pragma GCC unroll 16
      for (int k = 0; k < kScalars; ++k) acc_s[k] += w * src_row[k];
    } else {
#pragma GCC unroll 16
      for (int v = 0; v < kVecs; ++v) acc[v] += load_vec(src_row + v * kLanes);
#pragma GCC unroll 16
      for (int k = 0; k < kScalars; ++k) acc_s[k] += src_row[k];
    }
  }
  const T a = s.row_scale ? s.row_scale[i] : T(1);
  const T b = s.x ? s.x_coef * (s.x_scale ? s.x_scale[i] : T(1)) : T(0);
  T* out = s.dst + i * s.d + c0;
  const T* x_row = s.x ? s.x + i * s.d + c0 : nullptr;
#pragma GCC unroll 16
  for (int v = 0; v < kVecs; ++v) {
    Vec<T> r = a * acc[v];
    if (x_row) r += b * load_vec(x_row + v * kLanes);
    store_vec(out + v * kLanes, r);
  }
#pragma GCC unroll 16
  for (int k = 0; k < kScalars; ++k) out[k] = a * acc_s[k] + (x_row ? b * x_row[k] : T(0));
}

// All columns of one row: the widest chunk that fits, halving down to 1.
template <typename T, bool WEIGHTED>
inline void step_row(const PropagateStep<T>& s, int64_t i) {
  constexpr int kMaxWidth = 256 / sizeof(T);
  int64_t c0 = 0;
  for (; c0 + kMaxWidth <= s.d; c0 += kMaxWidth) step_row_chunk<T, kMaxWidth, WEIGHTED>(s, i, c0);
  if constexpr (kMaxWidth >= 64) {
    if (c0 + 32 <= s.d) { step_row_chunk<T, 32, WEIGHTED>(s, i, c0); c0 += 32; }
  }
  if (c0 + 16 <= s.d) { step_row_chunk<T, 16, WEIGHTED>(s, i, c0); c0 += 16; }
  if (c0 + 8 <= s.d) { step_row_chunk<T, 8, WEIGHTED>(s, i, c0); c0 += 8; }
  if (c0 + 4 <= s.d) { step_row_chunk<T, 4, WEIGHTED>(s, i, c0); c0 += 4; }
  if (c0 + 2 <= s.d) { step_row_chunk<T, 2, WEIGHTED>(s, i, c0); c0 += 2; }
  if (c0 + 1 <= s.d) { step_row_chunk<T, 1, WEIGHTED>(s, i, c0); }
}

// Row boundaries of `parts` contiguous chunks with equal work, counting one unit per edge and one per row.
std::vector<int64_t> balanced_row_bounds(const int64_t* rowptr, int64_t m, int64_t parts) {
  std::vector<int64_t> bounds(parts + 1, m);
  bounds[0] = 0;
  const int64_t total = rowptr[m] + m;
  int64_t lo = 0;
  for (int64_t p = 1; p < parts; ++p) {
    const int64_t target = total / parts * p + (total % parts) * p / parts;
    int64_t hi = m;
    while (lo < hi) {  // first row i with rowptr[i] + i >= target
      const int64_t mid = lo + (hi - lo) / 2;
      if (rowptr[mid] + mid < target) lo = mid + 1; else hi = mid;
    }
    bounds[p] = lo;
  }
  return bounds;
}

template <typename T>
void run_step(const PropagateStep<T>& s, const std::vector<int64_t>& bounds) {
  const int64_t parts = static_cast<int64_t>(bounds.size()) - 1;
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), parts);
  const bool weighted = s.values != nullptr || s.src_scale != nullptr;
  at::parallel_for(0, threads, 1, [&](int64_t t_begin, int64_t t_end) {
    for (int64_t t = t_begin; t < t_end; ++t) {
      for (int64_t p = t; p < parts; p += threads) {
        for (int64_t i = bounds[p]; i < bounds[p + 1]; ++i) {
          if (weighted) step_row<T, true>(s, i); else step_row<T, false>(s, i);
        }
      }
    }
  });
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// The raw operator is public API (torch.compile and user code call it), so it checks the CSR it gathers through:
// a rowptr that does not run nondecreasingly from 0 to nnz reads past col or walks rows backwards, a column
// outside [0, n) reads outside x. Returns 1 + the largest column (0 without entries) for the caller to compare
// with n. O(rows + nnz): one vectorisable pass over each array.
int64_t check_csr(const at::Tensor& rowptr, const at::Tensor& col) {
  const int64_t* p = rowptr.data_ptr<int64_t>();
  const int64_t m = rowptr.size(0) - 1, nnz = col.size(0);
  TORCH_CHECK(p[0] == 0 && p[m] == nnz, "propagate (native CPU): rowptr must run from 0 to nnz = ", nnz, ", got ",
              p[0], " .. ", p[m]);
  bool decreasing = false;
  for (int64_t i = 0; i < m; ++i) decreasing |= p[i + 1] < p[i];
  TORCH_CHECK(!decreasing, "propagate (native CPU): rowptr must be nondecreasing");
  // Negative columns wrap to >= 2^31 as unsigned, so one maximum covers both ends of the range.
  const uint32_t* c = reinterpret_cast<const uint32_t*>(col.data_ptr<int32_t>());
  uint32_t largest = 0;
  for (int64_t e = 0; e < nnz; ++e) largest = std::max(largest, c[e]);
  return nnz == 0 ? 0 : static_cast<int64_t>(largest) + 1;
}

// check_csr once per CSR: a Graph hands the same rowptr and col tensors to every call, so a checked pair is
// remembered (the last kCheckedCsrs of them) with the tensors' version counters (an in-place change checks it
// again), and the kernel's per-call cost stays a lookup. The weak references keep a freed tensor's address from
// being taken by another tensor while its entry is here. Inference tensors have no version counter: checked on
// every call.
struct CheckedCsr {
  using Weak = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;
  Weak rowptr, col;
  int64_t rowptr_version, col_version;
  const void* rowptr_data;
  const void* col_data;
  int64_t rows, nnz, columns;

  bool same(const Weak& weak, const at::Tensor& t, int64_t version, const void* data, int64_t size) const {
    return !weak.expired() && weak._unsafe_get_target() == t.unsafeGetTensorImpl() && t._version() == version &&
           t.data_ptr() == data && t.size(0) == size;
  }
  bool matches(const at::Tensor& r, const at::Tensor& c) const {
    return same(rowptr, r, rowptr_version, rowptr_data, rows + 1) && same(col, c, col_version, col_data, nnz);
  }
};
constexpr size_t kCheckedCsrs = 16;

int64_t checked_columns(const at::Tensor& rowptr, const at::Tensor& col) {
  if (rowptr.is_inference() || col.is_inference()) return check_csr(rowptr, col);
  static std::mutex mutex;
  static auto* cache = new std::vector<CheckedCsr>();  // never destroyed: no static destruction order questions
  static size_t next = 0;
  {
    const std::lock_guard<std::mutex> lock(mutex);
    for (const CheckedCsr& entry : *cache) {
      if (entry.matches(rowptr, col)) return entry.columns;
    }
  }
  const int64_t columns = check_csr(rowptr, col);  // throws on a malformed rowptr: nothing is remembered
  CheckedCsr entry{CheckedCsr::Weak(rowptr.getIntrusivePtr()), CheckedCsr::Weak(col.getIntrusivePtr()),
                   rowptr._version(), col._version(), rowptr.data_ptr(), col.data_ptr(), rowptr.size(0) - 1,
                   col.size(0), columns};
  const std::lock_guard<std::mutex> lock(mutex);
  if (cache->size() < kCheckedCsrs) {
    cache->push_back(std::move(entry));
  } else {
    (*cache)[next++ % kCheckedCsrs] = std::move(entry);
  }
  return columns;
}

}  // namespace

// The entry point (one per variant: csrc/common/isa.h).
at::Tensor propagate_cpu(const at::Tensor& x, const at::Tensor& rowptr, const at::Tensor& col,
                         const std::optional<at::Tensor>& values, const std::optional<at::Tensor>& left,
                         const std::optional<at::Tensor>& right, const std::optional<at::Tensor>& /*t_rowptr*/,
                         const std::optional<at::Tensor>& /*t_col*/, const std::optional<at::Tensor>& /*t_values*/,
                         at::ArrayRef<double> weights) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "propagate (native CPU): x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.device().is_cpu(), "propagate (native CPU): x must be a CPU tensor");
  std::vector<int64_t> bounds;
  return propagate_chain(x, rowptr, col, values, left, right, weights, [&](const PropagateStepTensors& t) {
    if (bounds.empty()) {  // the first step (propagate_chain has checked shapes and dtypes)
      const int64_t columns = checked_columns(rowptr, col);
      TORCH_CHECK(columns <= x.size(0), "propagate (native CPU): col must hold column indices in [0, ", x.size(0),
                  ") (the rows of x), got ", static_cast<int32_t>(columns - 1));
      bounds = balanced_row_bounds(rowptr.data_ptr<int64_t>(), rowptr.size(0) - 1, at::get_num_threads() * kChunksPerThread);
    }
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "propagate_cpu", [&] {
      PropagateStep<scalar_t> s;
      s.rowptr = rowptr.data_ptr<int64_t>();
      s.col = col.data_ptr<int32_t>();
      s.values = values.has_value() ? values->data_ptr<scalar_t>() : nullptr;
      s.nnz = col.size(0);
      s.src = t.src.data_ptr<scalar_t>();
      s.src_scale = ptr_or_null<scalar_t>(t.src_scale);
      s.row_scale = ptr_or_null<scalar_t>(t.row_scale);
      s.x = ptr_or_null<scalar_t>(t.x);
      s.x_scale = ptr_or_null<scalar_t>(t.x_scale);
      s.x_coef = static_cast<scalar_t>(t.x_coef);
      s.dst = t.dst.data_ptr<scalar_t>();
      s.d = t.dst.size(1);
      run_step(s, bounds);
    });
  });
}

MMREC_FAST_ISA_END

// The baseline compilation registers the op, dispatching to the variant chosen at load time.
#if defined(MMREC_FAST_ISA_REGISTERS)
namespace mmrec_fast {

MMREC_FAST_ISA_VARIANTS(propagate_cpu)

TORCH_LIBRARY_IMPL(mmrec_fast, CPU, m) { m.impl("propagate", MMREC_FAST_ISA_DISPATCH(propagate_cpu)); }

}  // namespace mmrec_fast
#endif
