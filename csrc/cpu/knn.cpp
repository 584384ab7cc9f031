// Exact k nearest neighbours by inner product of the rows of x among themselves, on the CPU (float32, float64):
// the cosine kNN of mmrec_fast.knn once x is row-normalised (ops/knn.py normalises), without an N x N matrix.
//
// What it fuses and what it follows:
//  * Tile-and-select (tile_topk.h, shared with topk_scores): packed register-blocked GEMM tiles, each scanned at
//    once into the per-row running top-k; only one (T x T) score tile per thread exists at a time.
//  * Symmetry (FAISS, RAFT/cuVS and torch mm + topk all compute the full N^2):
//    s(i, j) = s(j, i) bitwise (one FMA chain per score, tile_topk.h), so only the block pairs I <= J are
//    computed. An off-diagonal tile offers each score to its row and to its column. A diagonal tile computes only
//    the micro-kernel blocks that reach its upper triangle (tile_gemm's upper), mirrors that triangle into the
//    lower one and offers each score to its row: about half the multiply-adds of the full product (without the
//    triangles, (B + 1) / (2B) for B blocks: 6% more at 7,050 rows and 17 blocks).
//  * Lock-free schedule: the block pairs are visited in the round-robin tournament order (the circle method; the
//    "parallel ordering" of Brent & Luk, "The solution of singular-value and symmetric eigenvalue problems on
//    multiprocessor arrays", SIAM J. Sci. Stat. Comput. 1985). Each round pairs the blocks disjointly (a block
//    left without partner does its diagonal tile), so the tiles of one round touch disjoint rows and the threads
//    update the shared top-k rows without locks, atomics or per-thread copies; a round ends at the parallel_for
//    barrier. The block count is chosen so that a round's tiles split evenly over the threads.
//  * Tile edge T from the score-tile budget (tile_bytes per thread, default kDefaultTileBytes of tile_topk.h: 256
//    KiB, T = 256 for float32, with 256-bit vectors; 729 KiB, T = 432, with AVX-512); memory is O(N k + N d)
//    whatever N.
//  * Deterministic: scores do not depend on the schedule, the tile size or the thread count, and the selected
//    (value desc, index asc) set does not depend on the order candidates arrive in.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../common/tile_topk.h"

#include <algorithm>
#include <limits>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

MMREC_FAST_ISA_BEGIN
namespace {

using namespace tile_topk;

// The tasks of the round-robin tournament over `blocks` blocks, round by round: (I, J) with I < J, or (I, I) for
// a diagonal tile. Every pair I < J appears once, every diagonal once; the tasks of a round share no block.
std::vector<std::vector<std::pair<int64_t, int64_t>>> tournament_rounds(int64_t blocks) {
  const int64_t players = blocks + (blocks % 2);  // odd: one dummy player, whose partner plays its diagonal
  std::vector<std::vector<std::pair<int64_t, int64_t>>> rounds;
  for (int64_t round = 0; round + 1 < players; ++round) {
    std::vector<std::pair<int64_t, int64_t>> tasks;
    for (int64_t t = 0; t < players / 2; ++t) {
      int64_t a = t == 0 ? players - 1 : (round + t) % (players - 1);
      int64_t b = t == 0 ? round : (round - t + players - 1) % (players - 1);
      if (a >= blocks) a = b;
      if (b >= blocks) b = a;
      tasks.emplace_back(std::min(a, b), std::max(a, b));
    }
    rounds.push_back(std::move(tasks));
  }
  if (blocks % 2 == 0) {  // no dummy: the diagonals make one more round
    std::vector<std::pair<int64_t, int64_t>> diagonals;
    for (int64_t b = 0; b < blocks; ++b) diagonals.emplace_back(b, b);
    rounds.push_back(std::move(diagonals));
  }
  return rounds;
}

// Block count and edge: at most the budget's edge, at least 2 blocks per thread where n allows, and (searching a
// few counts up) ceil(blocks / 2) tasks per round divisible by the thread count, so no thread idles at a barrier.
std::pair<int64_t, int64_t> choose_blocks(int64_t n, int64_t max_edge, int64_t threads) {
  int64_t blocks = std::max<int64_t>((n + max_edge - 1) / max_edge, 1);
  constexpr int64_t step = kEdgeMultiple;  // edges start tiles on whole panels
  blocks = std::max(blocks, std::min<int64_t>(2 * threads, (n + step - 1) / step));
  for (int64_t candidate = blocks; candidate < blocks + 2 * threads && candidate * step <= n; ++candidate) {
    if (((candidate + 1) / 2) % threads == 0) {
      blocks = candidate;
      break;
    }
  }
  const int64_t edge = ((n + blocks - 1) / blocks + step - 1) / step * step;
  return {(n + edge - 1) / edge, edge};
}

template <typename T>
void knn_kernel(const T* x, const T* row_norms, int64_t n, int64_t d, int64_t k, bool exclude_self,
                int64_t tile_bytes, T* out_values, int64_t* out_index) {
  constexpr int64_t G = kGroup<T>;
  const int64_t threads = at::get_num_threads();
  const auto [blocks, edge] = choose_blocks(n, tile_edge<T>(tile_bytes), threads);
  const at::Tensor packed_storage = pack_rows(x, n, d, row_norms);  // normalised while packed, with row_norms
  const T* packed = packed_storage.data_ptr<T>();
  RowTopK<T> top(n, k);
  at::Tensor tiles = at::empty({threads, edge * edge}, at::CPU(c10::CppTypeToScalarType<T>::value));

  // the operands of the score tile of block pair (I, J)
  const auto operands = [&](int64_t I, int64_t J) {
    const int64_t row0 = I * edge, col0 = J * edge;
    const int64_t valid_cols = std::min(edge, n - col0);
    return TileOperands<T>{packed, row0, std::min(edge, n - row0), packed, col0 / G, (valid_cols + G - 1) / G};
  };
  // next: the operands of the thread's next tile, prefetched while this one computes (or null)
  auto run_task = [&](int64_t I, int64_t J, T* C, const TileOperands<T>* next) {
    const TileOperands<T> tile = operands(I, J);
    const int64_t row0 = tile.a_row0, col0 = J * edge, rows = tile.a_rows;
    const int64_t valid_cols = std::min(edge, n - col0), cols = tile.b_panels * G;
    gemm_tile(packed, row0, rows, packed, tile.b_panel0, tile.b_panels, d, C, edge, I == J, next);
    mask_columns_from(C, edge, rows, valid_cols, cols);
    if (I == J) {  // only the upper triangle was computed: mirror it (s(i, j) = s(j, i) bitwise)
      for (int64_t r = 1; r < rows; ++r)
        for (int64_t c = 0; c < r; ++c) C[r * edge + c] = C[c * edge + r];
      if (exclude_self)
        for (int64_t r = 0; r < rows; ++r) C[r * edge + r] = -std::numeric_limits<T>::infinity();
      select_tile<T, false>(C, edge, rows, cols, row0, col0, top);
    } else {
      select_tile<T, true>(C, edge, rows, cols, row0, col0, top);
    }
  };

  for (const auto& tasks : tournament_rounds(blocks)) {
    at::parallel_for(0, static_cast<int64_t>(tasks.size()), 1, [&](int64_t begin, int64_t end) {
      T* C = tiles.data_ptr<T>() + at::get_thread_num() * edge * edge;
      for (int64_t t = begin; t < end; ++t) {
        const TileOperands<T> next = t + 1 < end ? operands(tasks[t + 1].first, tasks[t + 1].second)
                                                 : TileOperands<T>{};
        run_task(tasks[t].first, tasks[t].second, C, t + 1 < end ? &next : nullptr);
      }
    });
  }
  at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) { top.finish(begin, end, out_values, out_index); });
}

}  // namespace

// The entry point (one per variant: csrc/common/isa.h).
std::tuple<at::Tensor, at::Tensor> knn_cpu(const at::Tensor& x, int64_t k, bool exclude_self, int64_t tile_bytes,
                                           const std::optional<at::Tensor>& row_norms) {
  TORCH_CHECK(x.device().is_cpu(), "knn (native CPU): x must be a CPU tensor");
  TORCH_CHECK(x.dim() == 2, "knn (native CPU): x must be 2-D (n, d), got shape ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "knn (native CPU): x must be float32 or float64, got ", x.scalar_type());
  const int64_t n = x.size(0), d = x.size(1);
  TORCH_CHECK(n < std::numeric_limits<int32_t>::max(), "knn (native CPU): at most 2^31 - 2 rows, got ", n);
  const int64_t limit = std::max<int64_t>(n - (exclude_self ? 1 : 0), 0);  // k = 0 of zero rows is fine
  TORCH_CHECK(k >= 0 && k <= limit, "knn (native CPU): k=", k, " must be in [0, ", limit, "]");
  at::Tensor norms;
  if (row_norms.has_value()) {
    norms = row_norms->contiguous();
    TORCH_CHECK(norms.device().is_cpu() && norms.scalar_type() == x.scalar_type() && norms.dim() == 1 &&
                    norms.size(0) == n,
                "knn (native CPU): row_norms must be a CPU tensor of shape (", n, ",) and dtype ", x.scalar_type(),
                ", got ", norms.sizes(), " ", norms.scalar_type());
  }
  const at::Tensor xc = x.contiguous();
  at::Tensor values = at::empty({n, k}, x.options());
  at::Tensor indices = at::empty({n, k}, x.options().dtype(at::kLong));
  if (n == 0 || k == 0) return {values, indices};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "knn_cpu", [&] {
    knn_kernel<scalar_t>(xc.data_ptr<scalar_t>(), norms.defined() ? norms.data_ptr<scalar_t>() : nullptr, n, d, k,
                         exclude_self, tile_bytes > 0 ? tile_bytes : kDefaultTileBytes, values.data_ptr<scalar_t>(),
                         indices.data_ptr<int64_t>());
  });
  return {values, indices};
}

MMREC_FAST_ISA_END

// The baseline compilation registers the op, dispatching to the variant chosen at load time.
#if defined(MMREC_FAST_ISA_REGISTERS)
namespace mmrec_fast {

MMREC_FAST_ISA_VARIANTS(knn_cpu)

TORCH_LIBRARY_IMPL(mmrec_fast, CPU, m) { m.impl("knn", MMREC_FAST_ISA_DISPATCH(knn_cpu)); }

}  // namespace mmrec_fast
#endif
