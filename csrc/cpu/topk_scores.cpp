// Masked inner-product top-k on the CPU (float32, float64): for each query row, the k best keys by <q, key>, the
// pairs of an exclusion CSR (e.g. the users' training items) left out, without a Q x K score matrix.
//
// What it fuses and what it follows:
//  * Tile-and-select (tile_topk.h, shared with knn): the scores of a (query block x key tile) come from the packed
//    register-blocked GEMM into a per-thread tile; the excluded pairs of the tile are set to -inf in place (the
//    MMRec evaluator's `scores[mask] = -1e10`, fused: no candidate at all instead of a very low one); the tile is
//    then scanned into the per-row running top-k. Score + mask + top-k in one pass over a cache-resident
//    tile, instead of torch's matmul -> masked write -> topk over a Q x K matrix in memory.
//  * Exclusions: each row's excluded columns are sorted; a per-row cursor walks them as the key tiles advance,
//    so the masking costs O(nnz + rows x tiles) in all.
//  * Parallel over query blocks (a block's rows and their top-k belong to one thread: no synchronisation); the block
//    height is the tile edge or less, so that every thread gets blocks when Q is small. Deterministic: every score
//    is one FMA chain (tile_topk.h) and the selected set does not depend on arrival order.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../common/tile_topk.h"

#include <limits>
#include <optional>
#include <tuple>
#include <vector>

MMREC_FAST_ISA_BEGIN
namespace {

using namespace tile_topk;

template <typename T>
void topk_scores_kernel(const T* queries, const T* keys, int64_t num_queries, int64_t num_keys, int64_t d, int64_t k,
                        const int64_t* exclude_rowptr, const int32_t* exclude_col, int64_t tile_bytes,
                        T* out_values, int64_t* out_index) {
  constexpr int64_t G = kGroup<T>;
  const int64_t threads = at::get_num_threads();
  const int64_t edge = tile_edge<T>(tile_bytes);
  const int64_t per_thread = ((num_queries + threads - 1) / threads + 7) / 8 * 8;
  const int64_t block_rows = std::max<int64_t>(std::min(edge, per_thread), 8);
  const int64_t blocks = (num_queries + block_rows - 1) / block_rows;
  const at::Tensor packed_q_storage = pack_rows(queries, num_queries, d);
  const at::Tensor packed_k_storage = pack_rows(keys, num_keys, d);
  const T* packed_q = packed_q_storage.data_ptr<T>();
  const T* packed_k = packed_k_storage.data_ptr<T>();
  RowTopK<T> top(num_queries, k);
  at::Tensor tiles = at::empty({threads, block_rows * edge}, at::CPU(c10::CppTypeToScalarType<T>::value));

  // the operands of the score tile of queries row0 .. and keys col0 ..
  const auto operands = [&](int64_t row0, int64_t col0) {
    return TileOperands<T>{packed_q, row0, std::min(block_rows, num_queries - row0), packed_k, col0 / G,
                           (std::min(edge, num_keys - col0) + G - 1) / G};
  };
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    T* C = tiles.data_ptr<T>() + at::get_thread_num() * block_rows * edge;
    std::vector<int64_t> cursor(block_rows);
    for (int64_t block = begin; block < end; ++block) {
      const int64_t row0 = block * block_rows;
      const int64_t rows = std::min(block_rows, num_queries - row0);
      if (exclude_rowptr)
        for (int64_t r = 0; r < rows; ++r) cursor[r] = exclude_rowptr[row0 + r];
      for (int64_t col0 = 0; col0 < num_keys; col0 += edge) {
        const int64_t valid_cols = std::min(edge, num_keys - col0);
        const TileOperands<T> tile = operands(row0, col0);
        const int64_t cols = tile.b_panels * G;
        // the next tile, prefetched while this one computes: the next keys of these queries, or the first of the
        // thread's next block of queries
        const bool last_col = col0 + edge >= num_keys;
        const bool has_next = !last_col || block + 1 < end;
        const TileOperands<T> next =
            has_next ? operands(last_col ? row0 + block_rows : row0, last_col ? 0 : col0 + edge) : TileOperands<T>{};
        gemm_tile(packed_q, row0, rows, packed_k, tile.b_panel0, tile.b_panels, d, C, edge, false,
                  has_next ? &next : nullptr);
        mask_columns_from(C, edge, rows, valid_cols, cols);
        if (exclude_rowptr) {
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t row_end = exclude_rowptr[row0 + r + 1];
            int64_t e = cursor[r];
            for (; e < row_end && exclude_col[e] < col0 + valid_cols; ++e)
              C[r * edge + (exclude_col[e] - col0)] = -std::numeric_limits<T>::infinity();
            cursor[r] = e;
          }
        }
        select_tile<T, false>(C, edge, rows, cols, row0, col0, top);
      }
    }
  });
  at::parallel_for(0, num_queries, 256, [&](int64_t begin, int64_t end) {
    top.finish(begin, end, out_values, out_index);
  });
}

}  // namespace

// The entry point (one per variant: csrc/common/isa.h).
std::tuple<at::Tensor, at::Tensor> topk_scores_cpu(const at::Tensor& queries, const at::Tensor& keys, int64_t k,
                                                   const std::optional<at::Tensor>& exclude_rowptr,
                                                   const std::optional<at::Tensor>& exclude_col, int64_t tile_bytes) {
  TORCH_CHECK(queries.device().is_cpu() && keys.device().is_cpu(), "topk_scores (native CPU): CPU tensors expected");
  TORCH_CHECK(queries.dim() == 2 && keys.dim() == 2 && queries.size(1) == keys.size(1),
              "topk_scores (native CPU): queries (Q, d) and keys (K, d) expected, got ", queries.sizes(), " and ",
              keys.sizes());
  TORCH_CHECK(queries.scalar_type() == keys.scalar_type() &&
                  (queries.scalar_type() == at::kFloat || queries.scalar_type() == at::kDouble),
              "topk_scores (native CPU): queries and keys must both be float32 or both float64, got ",
              queries.scalar_type(), " and ", keys.scalar_type());
  const int64_t num_queries = queries.size(0), num_keys = keys.size(0), d = queries.size(1);
  TORCH_CHECK(num_keys < std::numeric_limits<int32_t>::max(), "topk_scores (native CPU): at most 2^31 - 2 keys");
  TORCH_CHECK(k >= 0 && k <= num_keys, "topk_scores (native CPU): k=", k, " must be in [0, ", num_keys, "]");
  TORCH_CHECK(exclude_rowptr.has_value() == exclude_col.has_value(),
              "topk_scores (native CPU): exclude_rowptr and exclude_col go together");
  const int64_t* rowptr = nullptr;
  const int32_t* col = nullptr;
  at::Tensor rowptr_c, col_c;
  if (exclude_rowptr.has_value()) {
    rowptr_c = exclude_rowptr->contiguous();
    col_c = exclude_col->contiguous();
    TORCH_CHECK(rowptr_c.scalar_type() == at::kLong && rowptr_c.dim() == 1 && rowptr_c.size(0) == num_queries + 1,
                "topk_scores (native CPU): exclude_rowptr must be int64 of shape (", num_queries + 1, ",)");
    TORCH_CHECK(col_c.scalar_type() == at::kInt && col_c.dim() == 1,
                "topk_scores (native CPU): exclude_col must be 1-D int32");
    rowptr = rowptr_c.data_ptr<int64_t>();
    col = col_c.data_ptr<int32_t>();
    TORCH_CHECK(rowptr[0] == 0 && rowptr[num_queries] == col_c.size(0),
                "topk_scores (native CPU): exclude_rowptr must run from 0 to nnz");
    for (int64_t r = 0; r < num_queries; ++r) {  // the cursor walk needs sorted, in-range columns
      TORCH_CHECK(rowptr[r] <= rowptr[r + 1], "topk_scores (native CPU): exclude_rowptr must be nondecreasing");
      for (int64_t e = rowptr[r]; e < rowptr[r + 1]; ++e) {
        TORCH_CHECK(col[e] >= 0 && col[e] < num_keys && (e == rowptr[r] || col[e - 1] <= col[e]),
                    "topk_scores (native CPU): exclude_col must hold sorted key indices in [0, ", num_keys,
                    ") within each row");
      }
    }
  }
  const at::Tensor q = queries.contiguous(), kt = keys.contiguous();
  at::Tensor values = at::empty({num_queries, k}, queries.options());
  at::Tensor indices = at::empty({num_queries, k}, queries.options().dtype(at::kLong));
  if (num_queries == 0 || k == 0) return {values, indices};
  AT_DISPATCH_FLOATING_TYPES(queries.scalar_type(), "topk_scores_cpu", [&] {
    topk_scores_kernel<scalar_t>(q.data_ptr<scalar_t>(), kt.data_ptr<scalar_t>(), num_queries, num_keys, d, k, rowptr,
                                 col, tile_bytes > 0 ? tile_bytes : kDefaultTileBytes, values.data_ptr<scalar_t>(),
                                 indices.data_ptr<int64_t>());
  });
  return {values, indices};
}

MMREC_FAST_ISA_END

// The baseline compilation registers the op, dispatching to the variant chosen at load time.
#if defined(MMREC_FAST_ISA_REGISTERS)
namespace mmrec_fast {

MMREC_FAST_ISA_VARIANTS(topk_scores_cpu)

TORCH_LIBRARY_IMPL(mmrec_fast, CPU, m) { m.impl("topk_scores", MMREC_FAST_ISA_DISPATCH(topk_scores_cpu)); }

}  // namespace mmrec_fast
#endif
