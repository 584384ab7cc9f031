// Fused InfoNCE with in-batch negatives on the CPU (float32, float64): forward, backward, and forward with the
// gradient, in memory O(B d) (no B x B buffer).
//
// Logits are s x_i . y_j with s = 1 / temperature and x, y the rows of a, b (L2-normalised in a prologue when
// asked, as F.normalize does: x / max(|x|, 1e-12)). Three logit matrices can take part, each cut into row blocks
// of kRowBlock rows (a block is owned by one task) and column chunks:
//   AB = s X Y^T: the a->b denominators (rows) and, when symmetric, the b->a denominators (columns);
//   AA = s X X^T without its diagonal (intra-view negatives, GRACE/MMSSL): more a->b denominator terms;
//   BB = s Y Y^T without its diagonal (intra-view negatives, symmetric): more b->a denominator terms.
// What it fuses and what it follows:
//  * Tiles, Inf-CL style (Wang et al., "Breaking the Memory Barrier", arXiv 2410.17243): each logit tile is a
//    register-blocked GEMM (tile_gemm.h, on rows packed once per call) followed, while it is in L2, by a
//    vectorised exp and the online log-sum-exp update (running max per row, Milakov & Gimelshein "Online
//    normalizer calculation for softmax"); the forward keeps only the per-row (and, symmetric, per-column) max
//    and sum.
//  * Backward from the saved log-sum-exps: each tile is recomputed, P = exp(logit - lse) and the logit gradient
//    dL = g (P - I) are formed in place, then two GEMMs on the same in-cache tile: dX_I += dL Y_J (rows owned by
//    the task) and dY_J += dL^T X_I. The second one crosses row blocks: instead of atomics or a second,
//    column-parallel recomputing pass (Inf-CL's dk kernel: one more GEMM and exp per tile), each of a fixed
//    number G of task groups accumulates it into its own (B, d) partial buffer, summed in group order at the end.
//    G comes from a memory budget and the shapes only, never from the thread count, and every sum runs in a fixed
//    order: results are bitwise identical run to run and for any number of threads.
//  * All three products go through tile_gemm.h instead of a BLAS call per tile: its operands are packed once per
//    call (x and y by rows and by columns) and dL^T once per tile, where MKL's sgemm repacked both operands of
//    every tile product, a copy per tile (the A/B comparison against an MKL build and the profile are in
//    benchmarks/results/info_nce-ab-zen4-2026-11-22.txt).
//  * Gradient in the forward (info_nce_fused), used for reductions "mean"/"sum" when the inputs need a gradient
//    (upstream weights uniform, so the gradient is known up to the scalar grad_output): the row log-sum-exps are
//    final once a task has seen its rows' whole strip, and with a fixed shift (below) dL_ij = alpha_i E_ij -
//    coef_i [i == j], E_ij = exp(s x_i.y_j - s), alpha_i = coef_i exp(s - lse_i): dX_I = alpha (E Y) is
//    accumulated chunk by chunk while the chunk is in L2 (row scale at the end), and E^T is kept, packed, for
//    dY += E^T (alpha X_I), the one product that needs the final alpha. 3 GEMMs and 1 exp per logit for forward
//    + backward, against 4 GEMMs and 2 exps for a forward that saves log-sum-exps and a backward that recomputes
//    (used for reduction "none", whose per-row upstream is unknown in the forward). Raw logits (no fixed shift)
//    keep the strip of exp(logit - running max) and form dL from it at the end (fused against recompute: the same
//    results file). Symmetric losses need the column log-sum-exps before any gradient, so they run the
//    statistics pass, then the gradient pass (no strip).
//  * Fixed shift (the fixed-max trick of fused softmax kernels): normalised rows bound every logit by s, so
//    with t >= 0.025 (float32) every tile is exponentiated as exp(logit - s) with no running max; a symmetric
//    statistics pass sums the same exps down the columns (one exp per logit for both directions). Raw logits and
//    smaller t use the running max (per row; per column and group for symmetric).
//  * The temperature gradient needs no extra pass: the loss depends on (s, x, y) through s q(x, y) with q of
//    degree 2, so sum_i x_i . dx_i + y_i . dy_i = 2 s dloss/ds, i.e. dloss/dt = -(that sum) / (2 t).
//  * Row blocks are taken by whichever thread is free (groups from a shared counter): on a shared machine a
//    descheduled thread does not hold the others up; a group's results do not depend on the thread running it.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../common/simd.h"
#include "../common/tile_gemm.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>
#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#endif

// No FMA contraction in this file: exp(s * x - m) must see the rounded s * x that m was taken from. Contracted,
// the exponent of the row's largest logit becomes the product's rounding residual instead of 0, and at small
// temperatures (logits ~1e3, ulp ~6e-5) the positive's probability, and with it the gradient, loses 4 digits.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

MMREC_FAST_ISA_BEGIN
namespace {

constexpr int64_t kRowBlock = 256;                  // rows of a block (the K of the dY GEMM)
constexpr int64_t kTileBytes = 256 << 10;           // one (rows x chunk) tile: stays in L2
constexpr int64_t kStripBytes = 24 << 20;           // a task's row strips in the fused one-way forward
constexpr int64_t kPartialBytes = 64 << 20;         // all groups' (B, d) partial gradient buffers together
constexpr int64_t kMaxGroups = 8;
constexpr double kNormEps = 1e-12;                  // F.normalize's default eps

// ---- 256-bit vectors (csrc/common/simd.h: unaligned rows, and the masks of the exp's range reduction)
using simd::Double4;
using simd::Float8;
using simd::Int8;

template <typename T> struct Simd;

template <> struct Simd<float> {
  using V = Float8;
  static constexpr int kLanes = 8;
  static V lane_index() { return V{0, 1, 2, 3, 4, 5, 6, 7}; }
  // a * b + c with one rounding where the CPU has FMA (the file's no-contraction rule is about the exponent's
  // argument, not about exp's own polynomial).
  static V fma(V a, V b, V c) { return simd::multiply_add(a, b, c); }
  // exp(x), Cephes expf: x = n ln2 + r with |r| <= ln2 / 2, exp(r) by its degree-7 polynomial (Horner with FMA),
  // 2^n through the exponent bits (n by the 1.5 * 2^23 rounding trick). About 1 ulp; exactly 0 below ln(FLT_MIN)
  // (and for -inf).
  static V exp(V x) { return exp_lanes<V, Int8>(x); }
  // The same exp on any width of float vector (IV: the int32 vector of that width): every lane goes through the
  // same operations, so a 16-lane call gives bitwise the 8-lane results.
  template <typename W, typename IW>
  static W exp_lanes(W x) {
    const W hi = W{} + 88.3762626647949f, lo = W{} + -87.3365447505531f;
    const IW underflow = x < lo;
    x = x > hi ? hi : x;
    x = x < lo ? lo : x;
    const W magic = W{} + 12582912.0f;  // 1.5 * 2^23
    const W t = x * 1.44269504088896341f + magic;
    const W n = t - magic;
    const IW ni = (IW)t - (IW)magic;
    W r = fma(n, W{} - 0.693359375f, x);
    r = fma(n, W{} + 2.12194440e-4f, r);
    W p = W{} + 1.9875691500E-4f;
    p = fma(p, r, W{} + 1.3981999507E-3f);
    p = fma(p, r, W{} + 8.3334519073E-3f);
    p = fma(p, r, W{} + 4.1665795894E-2f);
    p = fma(p, r, W{} + 1.6666665459E-1f);
    p = fma(p, r, W{} + 5.0000001201E-1f);
    p = fma(p, r * r, r) + 1.0f;
    const W scale = (W)((ni + 127) << 23);
    const W result = p * scale;
    return underflow ? W{} : result;
  }
#if MMREC_FAST_HAS_AVX512
  // 16 lanes in one zmm, the variant's wide vector (simd.h): half the exp's instructions (row_update's main loop)
  using Wide = simd::WideFloat;
  typedef int32_t Int16 __attribute__((vector_size(64)));
  static Wide fma(Wide a, Wide b, Wide c) { return tile_gemm::multiply_add(a, b, c); }
  static Wide exp16(Wide x) { return exp_lanes<Wide, Int16>(x); }
#endif
};

template <> struct Simd<double> {
  using V = Double4;
  static constexpr int kLanes = 4;
  static V lane_index() { return V{0, 1, 2, 3}; }
  static V exp(V x) {
    V out;
    for (int k = 0; k < 4; ++k) out[k] = std::exp(x[k]);
    return out;
  }
};

template <typename T>
inline typename Simd<T>::V load(const T* p) {
  return *reinterpret_cast<const typename Simd<T>::V*>(p);
}
template <typename T>
inline void store(T* p, typename Simd<T>::V v) {
  *reinterpret_cast<typename Simd<T>::V*>(p) = v;
}
template <typename T>
inline T hsum(typename Simd<T>::V v) {  // fixed order: deterministic
  T s = 0;
  for (int k = 0; k < Simd<T>::kLanes; ++k) s += v[k];
  return s;
}
template <typename T>
inline T hmax(typename Simd<T>::V v) {
  T m = v[0];
  for (int k = 1; k < Simd<T>::kLanes; ++k) m = std::max(m, v[k]);
  return m;
}

// Buffers hold rows padded to whole vectors (ld a multiple of the lane count); lanes past n are computed on the
// padding and masked out of every sum and max.
template <typename T>
inline int64_t padded(int64_t n) {
  return (n + Simd<T>::kLanes - 1) / Simd<T>::kLanes * Simd<T>::kLanes;
}

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// (max, sum) of an online log-sum-exp: the represented value is max + log(sum).
template <typename T>
inline void merge_lse(T& m, T& l, T m2, T l2) {
  if (m2 == T(kNegInf)) return;
  if (m == T(kNegInf)) { m = m2; l = l2; return; }
  const T mn = std::max(m, m2);
  l = l * std::exp(m - mn) + l2 * std::exp(m2 - mn);
  m = mn;
}

// Row i of a raw tile (values x_i . y_j): folds s * value into the row's running (max, sum), and leaves
// exp(s * value - new max) in place (read by the fused forward and the symmetric column sums). With a fixed shift
// (bounded logits, see Problem::fixed_shift) the max is never taken: m stays at the bound.
template <typename T>
inline void row_update(T* row, int64_t n, T s, T& m, T& l, bool fixed_shift) {
  using S = Simd<T>;
  using V = typename S::V;
  const V lanes = S::lane_index();
  T new_m = s;
  if (!fixed_shift) {
    V vmax = V{} + T(kNegInf);
    for (int64_t j = 0; j < n; j += S::kLanes) {
      V v = load(row + j);
      v = lanes < T(n - j) ? v : V{} + T(kNegInf);
      vmax = v > vmax ? v : vmax;
    }
    const T chunk_max = s * hmax<T>(vmax);  // s > 0
    new_m = std::max(m, chunk_max);
  }
  if (new_m == T(kNegInf)) return;  // every entry masked (the diagonal of a one-row intra tile)
  V vsum = V{};
  const int64_t whole = n / S::kLanes * S::kLanes;
  int64_t j = 0;
#if MMREC_FAST_HAS_AVX512
  if constexpr (std::is_same_v<T, float>) {  // two vectors a step, summed low half first: the 8-lane order
    for (; j + 2 * S::kLanes <= whole; j += 2 * S::kLanes) {
      const typename S::Wide e = S::exp16(tile_gemm::load(row + j) * s - new_m);
      tile_gemm::store(row + j, e);
      vsum += (V)__builtin_shufflevector(e, e, 0, 1, 2, 3, 4, 5, 6, 7);
      vsum += (V)__builtin_shufflevector(e, e, 8, 9, 10, 11, 12, 13, 14, 15);
    }
  }
#endif
  for (; j < whole; j += S::kLanes) {
    const V e = S::exp(load(row + j) * s - new_m);
    store(row + j, e);
    vsum += e;
  }
  if (whole < n) {  // the last, partial vector: lanes past n are written as 0
    V e = S::exp(load(row + whole) * s - new_m);
    e = lanes < T(n - whole) ? e : V{};
    store(row + whole, e);
    vsum += e;
  }
  l = (m == T(kNegInf) || m == new_m ? l : l * std::exp(m - new_m)) + hsum<T>(vsum);
  m = new_m;
}

// Column sums of a tile of exp(s * value - s) values (the fixed-shift case: one exp serves rows and columns).
template <typename T>
inline void column_sums(const T* tile, int64_t ld, int64_t br, int64_t n, T* cl) {
  using S = Simd<T>;
  using V = typename S::V;
  for (int64_t j = 0; j < n; j += S::kLanes) {
    V sum = load(cl + j);
    for (int64_t r = 0; r < br; ++r) sum += load(tile + r * ld + j);
    store(cl + j, sum);
  }
}

// The columns of a raw tile (br rows of ld-strided values): folds them into per-column running (max, sum).
template <typename T>
inline void column_update(const T* tile, int64_t ld, int64_t br, int64_t n, T s, T* cm, T* cl) {
  using S = Simd<T>;
  using V = typename S::V;
  for (int64_t j = 0; j < n; j += S::kLanes) {
    V vmax = V{} + T(kNegInf);
    for (int64_t r = 0; r < br; ++r) {
      const V v = load(tile + r * ld + j);
      vmax = v > vmax ? v : vmax;
    }
    const V old_m = load(cm + j);
    V new_m = vmax * s;
    new_m = old_m > new_m ? old_m : new_m;
    const V finite = new_m > T(kNegInf) ? V{} + T(1) : V{};
    const V safe_m = finite > T(0) ? new_m : V{};
    V sum = load(cl + j) * S::exp(old_m - safe_m);
    for (int64_t r = 0; r < br; ++r) sum += S::exp(load(tile + r * ld + j) * s - safe_m);
    store(cm + j, new_m);
    store(cl + j, finite > T(0) ? sum : V{});
  }
}

template <typename T>
struct Problem {
  int64_t B, d;
  at::Tensor x, y;  // (B, d) contiguous: rows of a and b, normalised when asked
  // The same rows packed once for tile_gemm.h: by rows (logit tiles x_I y_J^T) and, when gradients are taken, by
  // columns (the right factors of dX_I += dL Y_J and dY_J += dL^T X_I); gradients are accumulated in (B, dp)
  // buffers, dp = d rounded up to a whole panel.
  at::Tensor rows_x, rows_y, columns_x, columns_y;
  int64_t dp;
  T s;              // 1 / temperature
  bool symmetric, intra;
  int64_t groups;
  int64_t chunk;  // columns of a tile
  // Normalised rows bound every logit by s (the fixed-max trick): exponentiating
  // with the constant shift s needs no running max, and a term is at least exp(-2 s), so this holds while exp(-2 s)
  // stays a normal number (s <= 40 in float32, t >= 0.025; s <= 300 in float64). Zero rows give logit 0 <= s.
  bool fixed_shift;
};

// Which logit matrix a tile belongs to.
enum class Pair { AB, AA, BB };

template <typename T>
Problem<T> make_problem(const at::Tensor& x, const at::Tensor& y, double temperature, bool normalize, bool symmetric,
                        bool intra, int64_t num_partials) {
  Problem<T> p;
  p.B = x.size(0);
  p.d = x.size(1);
  p.x = x;
  p.y = y;
  p.rows_x = tile_gemm::pack_rows(x.data_ptr<T>(), p.B, p.d);
  p.rows_y = tile_gemm::pack_rows(y.data_ptr<T>(), p.B, p.d);
  if (num_partials > 0) {
    p.columns_x = tile_gemm::pack_columns(x.data_ptr<T>(), p.B, p.d);
    p.columns_y = tile_gemm::pack_columns(y.data_ptr<T>(), p.B, p.d);
  }
  p.dp = tile_gemm::round_up(p.d, tile_gemm::kGroup<T>);
  p.s = static_cast<T>(1.0 / temperature);
  p.symmetric = symmetric;
  p.intra = intra;
  p.fixed_shift = normalize && static_cast<double>(p.s) <= (sizeof(T) == 4 ? 40.0 : 300.0);
  const int64_t blocks = (p.B + kRowBlock - 1) / kRowBlock;
  const int64_t per_group = std::max<int64_t>(1, p.B * p.dp * static_cast<int64_t>(sizeof(T)) * num_partials);
  p.groups = std::max<int64_t>(1, std::min({blocks, kMaxGroups, kPartialBytes / per_group}));
  // A multiple of the lane count and of the panel width: vector passes over a chunk of a strip never spill into
  // the next chunk, and chunks start on whole panels.
  constexpr int64_t unit = std::max<int64_t>(Simd<T>::kLanes, tile_gemm::kGroup<T>);
  p.chunk = std::max<int64_t>(1, kTileBytes / (kRowBlock * static_cast<int64_t>(sizeof(T))) / unit) * unit;
  return p;
}

// Subnormal numbers flushed to zero (x86 MXCSR FTZ + DAZ) on this thread while the guard lives, the previous mode
// restored after. The exps of logits far below their row's maximum underflow into the subnormal range (unnormalised
// logits, as SLMRec's FAC task, spread by hundreds once trained), and every product and sum that touches a subnormal
// takes a microcode assist on x86: the fused forward of a trained SLMRec ran 3x slower than at initialisation. A
// flushed value is below 1.2e-38 (float32) where the sums it enters are >= 1, so results move by less than an ulp.
class SubnormalsFlushed {
 public:
#if defined(__SSE__) || defined(__x86_64__)
  SubnormalsFlushed() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040); }  // FTZ (bit 15) | DAZ (bit 6)
  ~SubnormalsFlushed() { _mm_setcsr(saved_); }

 private:
  unsigned int saved_;
#endif
};

// Runs body(group, block_begin, block_end) for every row block, blocks dealt round-robin to the groups; the blocks
// of one group run in order on one thread, the groups are taken from a shared counter by whichever thread is free
// (on a shared machine a descheduled thread does not hold the others up). What a group computes does not depend on
// the thread that runs it, so results are the same for any thread count.
template <typename F>
void for_each_group(int64_t B, int64_t row_block, int64_t groups, F body) {
  const int64_t blocks = (B + row_block - 1) / row_block;
  std::atomic<int64_t> next_group{0};
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), groups);
  at::parallel_for(0, threads, 1, [&](int64_t t_begin, int64_t t_end) {
    const SubnormalsFlushed flushed;
    for (int64_t t = t_begin; t < t_end; ++t) {
      for (int64_t g = next_group++; g < groups; g = next_group++) {
        for (int64_t blk = g; blk < blocks; blk += groups) {
          body(g, blk * row_block, std::min(B, (blk + 1) * row_block));
        }
      }
    }
  });
}

// Leading dimension of a tile buffer of `columns` columns: whole panels plus one cache line, so that the rows of a
// tile do not all fall into the same L1 sets (rows 1 KiB or 32 KiB apart do; measured on dY += dL^T X, the
// product reading the tile's columns: 39 -> 64 GFLOP/s).
template <typename T>
int64_t tile_ld(int64_t columns) {
  return tile_gemm::round_up(columns, tile_gemm::kGroup<T>) + 64 / static_cast<int64_t>(sizeof(T));
}

// Rows a tile buffer of br logit rows needs: tile_gemm.h computes and reads rows kMicroRows at a time.
inline int64_t tile_rows(int64_t br) { return tile_gemm::round_up(br, tile_gemm::kMicroRows); }

// Raw logit tile of `pair` (values x_i . y_j, without the scale s) for rows [i0, i1) and columns [j0, j0 + bc) into
// t (leading dimension ld; rows past i1 up to a multiple of kMicroRows get the zero rows of the packing); the
// intra-view diagonals, which are no negatives, set to -inf.
template <typename T>
void logit_tile(const Problem<T>& p, Pair pair, int64_t i0, int64_t i1, int64_t j0, int64_t bc, T* t, int64_t ld) {
  constexpr int64_t G = tile_gemm::kGroup<T>;
  const T* rows = (pair == Pair::BB ? p.rows_y : p.rows_x).template data_ptr<T>();
  const T* others = (pair == Pair::AA ? p.rows_x : p.rows_y).template data_ptr<T>();
  tile_gemm::gemm_tile(rows, i0, i1 - i0, others, j0 / G, (bc + G - 1) / G, p.d, t, ld);
  if (pair != Pair::AB) {
    for (int64_t i = std::max(i0, j0); i < std::min(i1, j0 + bc); ++i) t[(i - i0) * ld + (i - j0)] = T(kNegInf);
  }
}

// ---- statistics pass: per-row log-sum-exp of side a (AB rows + AA) and, symmetric, of side b (AB columns + BB).
template <typename T>
void statistics(const Problem<T>& p, T* lse_a, T* lse_b) {
  const int64_t B = p.B, chunk = p.chunk, ld = tile_ld<T>(chunk);
  std::vector<T> row_m(2 * B, T(kNegInf)), row_l(2 * B, T(0));  // [side a | side b] row statistics
  const int64_t cols = padded<T>(B);
  std::vector<T> col_m, col_l;  // (groups, cols): AB column statistics of each group
  if (p.symmetric) {
    col_m.assign(p.groups * cols, p.fixed_shift ? p.s : T(kNegInf));
    col_l.assign(p.groups * cols, T(0));
  }
  for_each_group(B, kRowBlock, p.groups, [&](int64_t g, int64_t i0, int64_t i1) {
    const int64_t br = i1 - i0;
    at::Tensor tile = at::empty({tile_rows(br), ld}, p.x.options());
    T* t = tile.data_ptr<T>();
    std::vector<Pair> pairs{Pair::AB};
    if (p.intra) pairs.push_back(Pair::AA);
    if (p.intra && p.symmetric) pairs.push_back(Pair::BB);
    for (Pair pair : pairs) {
      T* m = row_m.data() + (pair == Pair::BB ? B : 0);
      T* l = row_l.data() + (pair == Pair::BB ? B : 0);
      for (int64_t j0 = 0; j0 < B; j0 += chunk) {
        const int64_t bc = std::min(chunk, B - j0);
        logit_tile(p, pair, i0, i1, j0, bc, t, ld);
        if (pair == Pair::AB && p.symmetric && !p.fixed_shift) {
          column_update(t, ld, br, bc, p.s, col_m.data() + g * cols + j0, col_l.data() + g * cols + j0);
        }
        for (int64_t i = i0; i < i1; ++i) row_update(t + (i - i0) * ld, bc, p.s, m[i], l[i], p.fixed_shift);
        if (pair == Pair::AB && p.symmetric && p.fixed_shift) {  // the same exps, summed down the columns
          column_sums(t, ld, br, bc, col_l.data() + g * cols + j0);
        }
      }
    }
  });
  at::parallel_for(0, B, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      lse_a[i] = row_m[i] + std::log(row_l[i]);
      if (p.symmetric) {
        T m = row_m[B + i], l = row_l[B + i];
        for (int64_t g = 0; g < p.groups; ++g) merge_lse(m, l, col_m[g * cols + i], col_l[g * cols + i]);
        lse_b[i] = m + std::log(l);
      }
    }
  });
}

// ---- gradient pass: dX, dY of sum_i g_i loss_i with respect to the (normalised) rows, times 1/s (the caller
// scales). Three ways to run a row block, one function each below: with the log-sum-exps known, each tile is
// recomputed and its dL formed from them (gradient_recompute); without (one-way losses: the fused forward), the
// block's strips are walked once, keeping E^T of a fixed-shift strip (gradient_fused_fixed_shift) or the whole
// strip of raw logits (gradient_fused_raw), and lse_a is written on the way.

// One row block I = [i0, i1) of the gradient pass, in one group g: where its gradients go and the two steps every
// path shares (form a dL tile, and the GEMMs of a dL tile).
template <typename T>
struct GradientBlock {
  using S = Simd<T>;
  using V = typename S::V;
  static constexpr int64_t G = tile_gemm::kGroup<T>;

  const Problem<T>& p;
  const std::vector<Pair>& pairs;
  const T* g_rows;      // (B,) upstream weights
  T* lse_a;             // (B,) written by the fused paths
  const T* lse_b;       // (B,) column statistics (symmetric)
  const T* gb_cols;     // (B,) padded: w_b * g_j (symmetric)
  const T* lse_b_cols;  // (B,) padded: lse_b_j (symmetric)
  T w_a, w_b;           // weights of the a->b and b->a directions
  int64_t i0, i1, br, ld;
  T* dx_rows;  // dX_I, owned by this block
  T* dy_rows;  // dY_I of intra-view BB tiles, owned by this block (or null)
  T* gx;       // the group's column part of dX (intra-view AA tiles; or null)
  T* gy;       // the group's column part of dY
  at::Tensor transposed;  // a chunk of dL^T, packed (for accumulate)

  // dX_I += dL Y_J into the rows the block owns, and dY_J += dL^T (scale X_I) into the group's column part, a chunk
  // of dL^T packed at a time (dl: the dL tile's column 0, leading dimension ld, columns [j0, j0 + bc); scale: per
  // row of the tile, or null for 1).
  void accumulate(Pair pair, int64_t j0, int64_t bc, const T* dl, const T* scale) const {
    const int64_t B = p.B, dp = p.dp;
    const T* others = (pair == Pair::AA ? p.columns_x : p.columns_y).template data_ptr<T>();
    const T* rows = (pair == Pair::BB ? p.columns_y : p.columns_x).template data_ptr<T>();
    T* row_grad = pair == Pair::BB ? dy_rows : dx_rows;
    T* col_grad = pair == Pair::AA ? gx : gy;
    tile_gemm::gemm_rows(dl, ld, br, bc, others + j0 * G, B * G, dp / G, row_grad, dp, true);
    for (int64_t c0 = 0; c0 < bc; c0 += p.chunk) {
      const int64_t cc = std::min(p.chunk, bc - c0);
      tile_gemm::pack_transposed(dl + c0, ld, br, cc, scale, transposed.data_ptr<T>());
      tile_gemm::gemm_transposed(transposed.data_ptr<T>(), cc, br, rows + i0 * G, B * G, dp / G,
                                 col_grad + (j0 + c0) * dp, dp, true);
    }
  }

  // dL in place, from the raw tile t (factor null: lse known) or from the strip's exp(s x.y - shift) values times
  // factor_i.
  void form_dl(Pair pair, int64_t j0, int64_t bc, T* t, const T* factor) const {
    const V lanes = S::lane_index();
    for (int64_t i = i0; i < i1; ++i) {
      T* row = t + (i - i0) * ld;
      const T gi = g_rows[i];
      const T coef_row = (pair == Pair::BB ? w_b : w_a) * gi;
      const T shift = pair == Pair::BB ? lse_b[i] : lse_a[i];
      const V vfactor = V{} + (factor ? factor[i - i0] * coef_row : coef_row);
      for (int64_t j = 0; j < bc; j += S::kLanes) {
        const V v = load(row + j);
        V out = factor ? v * vfactor : S::exp(v * p.s - shift) * vfactor;
        if (pair == Pair::AB && p.symmetric) {  // the b->a direction: column statistics
          out += S::exp(v * p.s - load(lse_b_cols + j0 + j)) * load(gb_cols + j0 + j);
        }
        store(row + j, lanes < T(bc - j) ? out : V{});
      }
      if (pair == Pair::AB && i >= j0 && i < j0 + bc) row[i - j0] -= (w_a + w_b) * gi;  // the positive
      if (pair != Pair::AB && i >= j0 && i < j0 + bc) row[i - j0] = T(0);
    }
  }
};

// The log-sum-exps known: every tile of the block's strips recomputed, window columns at a time, dL formed and
// accumulated (t: a (rows, ld) tile).
template <typename T>
void gradient_recompute(const GradientBlock<T>& block, int64_t window, T* t) {
  const int64_t B = block.p.B;
  for (Pair pair : block.pairs) {
    for (int64_t j0 = 0; j0 < B; j0 += window) {
      const int64_t bc = std::min(window, B - j0);
      logit_tile(block.p, pair, block.i0, block.i1, j0, bc, t, block.ld);
      block.form_dl(pair, j0, bc, t, nullptr);
      block.accumulate(pair, j0, bc, t, nullptr);
    }
  }
}

// The fused one-way forward with the fixed shift s: E_ij = exp(s x_i.y_j - s), and dL = alpha_i E_ij - coef_i
// [i == j] with alpha_i = coef_i exp(s - lse_i). So dX_I = alpha (E Y) is accumulated chunk by chunk while the chunk
// is in L2 (the row scale applied at the end), and E^T is kept, packed, for dY += E^T (alpha X_I), the one product
// that needs the final alpha (kept_buffer: the running thread's buffer, reused by the blocks it runs).
template <typename T>
void gradient_fused_fixed_shift(const GradientBlock<T>& block, int64_t row_block, at::Tensor& kept_buffer) {
  constexpr int64_t G = tile_gemm::kGroup<T>;
  const Problem<T>& p = block.p;
  const int64_t B = p.B, d = p.d, dp = p.dp, i0 = block.i0, br = block.br;
  const int64_t num_strips = static_cast<int64_t>(block.pairs.size());
  const int64_t chunks = (B + p.chunk - 1) / p.chunk;
  const at::TensorOptions options = p.x.options();
  std::vector<T> m(br, T(kNegInf)), l(br, T(0));
  const int64_t ldt = tile_ld<T>(p.chunk);
  at::Tensor tile = at::empty({tile_rows(br), ldt}, options);
  T* t = tile.data_ptr<T>();
  // Per pair: E^T of the strip, (round_up(B, kMicroRows), br) in kMicroRows-row slivers.
  const int64_t kept_stride = tile_gemm::round_up(B, tile_gemm::kMicroRows) * row_block;
  if (!kept_buffer.defined()) kept_buffer = at::empty({num_strips * kept_stride}, options);
  std::vector<T*> kept;
  for (int64_t k = 0; k < num_strips; ++k) {
    kept.push_back(kept_buffer.data_ptr<T>() + k * kept_stride);
    const T* others = (block.pairs[k] == Pair::AA ? p.columns_x : p.columns_y).template data_ptr<T>();
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t j0 = c * p.chunk, bc = std::min(p.chunk, B - j0);
      logit_tile(p, block.pairs[k], i0, block.i1, j0, bc, t, ldt);
      for (int64_t r = 0; r < br; ++r) row_update(t + r * ldt, bc, p.s, m[r], l[r], true);
      tile_gemm::gemm_rows(t, ldt, br, bc, others + j0 * G, B * G, dp / G, block.dx_rows, dp, true);
      tile_gemm::pack_transposed(t, ldt, br, bc, static_cast<const T*>(nullptr), kept[k] + j0 * br);
    }
  }
  std::vector<T> alpha(br);
  for (int64_t r = 0; r < br; ++r) {
    block.lse_a[i0 + r] = m[r] + std::log(l[r]);
    alpha[r] = block.w_a * block.g_rows[i0 + r] * std::exp(p.s - block.lse_a[i0 + r]);
  }
  const at::Tensor scaled_rows = p.x.narrow(0, i0, br) * at::from_blob(alpha.data(), {br, 1}, options);
  const at::Tensor packed_scaled = tile_gemm::pack_columns(scaled_rows.data_ptr<T>(), br, d);
  for (int64_t k = 0; k < num_strips; ++k) {
    tile_gemm::gemm_transposed(kept[k], B, br, packed_scaled.data_ptr<T>(), br * G, dp / G,
                               block.pairs[k] == Pair::AA ? block.gx : block.gy, dp, true);
  }
  const T* x = p.x.template data_ptr<T>();
  const T* y = p.y.template data_ptr<T>();
  for (int64_t r = 0; r < br; ++r) {  // the row scale of dX_I, and the positives, dL_ii = -coef_i
    const int64_t i = i0 + r;
    const T coef = block.w_a * block.g_rows[i];
    for (int64_t k = 0; k < d; ++k) {
      block.dx_rows[r * dp + k] = block.dx_rows[r * dp + k] * alpha[r] - coef * y[i * d + k];
      block.gy[i * dp + k] -= coef * x[i * d + k];
    }
  }
}

// The fused one-way forward on raw logits (or small t): each chunk has its own shift, known per row only as the
// strip goes, so the whole strip is kept (strips: one (rows, ld) buffer per pair) and dL formed from it once the
// log-sum-exps are final.
template <typename T>
void gradient_fused_raw(const GradientBlock<T>& block, const std::vector<at::Tensor>& strips) {
  const Problem<T>& p = block.p;
  const int64_t B = p.B, i0 = block.i0, br = block.br, ld = block.ld;
  const int64_t num_strips = static_cast<int64_t>(block.pairs.size());
  const int64_t chunks = (B + p.chunk - 1) / p.chunk;
  std::vector<T> m(br, T(kNegInf)), l(br, T(0));
  std::vector<T> shift(br * chunks * num_strips);
  for (int64_t k = 0; k < num_strips; ++k) {
    T* t = strips[k].data_ptr<T>();
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t j0 = c * p.chunk, bc = std::min(p.chunk, B - j0);
      logit_tile(p, block.pairs[k], i0, block.i1, j0, bc, t + j0, ld);
      for (int64_t r = 0; r < br; ++r) {
        row_update(t + r * ld + j0, bc, p.s, m[r], l[r], false);
        shift[(k * chunks + c) * br + r] = m[r];
      }
    }
  }
  for (int64_t r = 0; r < br; ++r) block.lse_a[i0 + r] = m[r] + std::log(l[r]);
  std::vector<T> factor(br);
  for (int64_t k = 0; k < num_strips; ++k) {
    T* t = strips[k].data_ptr<T>();
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t j0 = c * p.chunk, bc = std::min(p.chunk, B - j0);
      for (int64_t r = 0; r < br; ++r) {
        const T sh = shift[(k * chunks + c) * br + r];
        factor[r] = sh == T(kNegInf) ? T(0) : std::exp(sh - block.lse_a[i0 + r]);
      }
      block.form_dl(block.pairs[k], j0, bc, t + j0, factor.data());
    }
    block.accumulate(block.pairs[k], 0, B, t, nullptr);
  }
}

// The pass: buffers, the row blocks in their groups (each run by one of the three functions above), and the
// epilogue that sums the row-owned parts and the groups' column parts in group order. With lse_known the
// log-sum-exps are inputs; without (one-way only) the blocks write lse_a.
template <typename T>
void gradient(const Problem<T>& p, const T* g_rows, T* lse_a, const T* lse_b, bool lse_known, T* dX, T* dY) {
  constexpr int64_t G = tile_gemm::kGroup<T>;
  const int64_t B = p.B, d = p.d, dp = p.dp;
  const T w_a = p.symmetric ? T(0.5) : T(1), w_b = p.symmetric ? T(0.5) : T(0);
  std::vector<Pair> pairs{Pair::AB};
  if (p.intra) pairs.push_back(Pair::AA);
  if (p.intra && p.symmetric) pairs.push_back(Pair::BB);
  const int64_t num_strips = static_cast<int64_t>(pairs.size());
  // Row block and window (columns held before the gradient GEMMs): a chunk, or the whole strip.
  int64_t row_block = kRowBlock, window = p.chunk;
  if (!lse_known) {
    TORCH_CHECK(!p.symmetric, "info_nce (native CPU): a symmetric loss needs its log-sum-exps first");
    const int64_t fit = kStripBytes / (padded<T>(B) * static_cast<int64_t>(sizeof(T)) * num_strips);
    row_block = std::clamp<int64_t>(fit / 16 * 16, 16, kRowBlock);
    window = B;
  }
  const int64_t ld = tile_ld<T>(window);
  const at::TensorOptions options = p.x.options();
  // Gradients in (Bp, dp) buffers (tile_gemm.h writes whole panels and kMicroRows-row slivers): the row-owned parts
  // (dX_I, and dY_I of intra-view BB tiles, written by block I's task only) and each group's column parts.
  const int64_t Bp = tile_gemm::round_up(B, G);
  const bool has_bb = p.intra && p.symmetric;  // the only tiles whose rows are rows of y
  at::Tensor own_x = at::zeros({Bp, dp}, options), own_y = has_bb ? at::zeros({Bp, dp}, options) : at::Tensor();
  at::Tensor partial_x = p.intra ? at::zeros({p.groups, Bp, dp}, options) : at::Tensor();
  at::Tensor partial_y = at::zeros({p.groups, Bp, dp}, options);
  const int64_t cols = padded<T>(B) + Simd<T>::kLanes;
  std::vector<T> gb_cols(cols, T(0)), lse_b_cols(cols, T(0));  // per-column vectors, padded for vector loads
  if (p.symmetric) {
    for (int64_t j = 0; j < B; ++j) { gb_cols[j] = w_b * g_rows[j]; lse_b_cols[j] = lse_b[j]; }
  }

  // The fused forward's kept E^T strips: one buffer per thread, reused by the blocks it runs (a fresh allocation
  // per block cost page faults).
  std::vector<at::Tensor> kept_per_thread(at::get_num_threads());
  for_each_group(B, row_block, p.groups, [&](int64_t g, int64_t i0, int64_t i1) {
    const int64_t br = i1 - i0;
    // Every path but the fixed-shift fused forward (which keeps E^T itself) forms dL tiles for accumulate: in one
    // tile (lse known) or in the strips of the raw-logit fused forward, each with its dL^T scratch.
    const bool accumulates = lse_known || !p.fixed_shift;
    const GradientBlock<T> block{
        p, pairs, g_rows, lse_a, lse_b, gb_cols.data(), lse_b_cols.data(), w_a, w_b, i0, i1, br, ld,
        own_x.data_ptr<T>() + i0 * dp, has_bb ? own_y.data_ptr<T>() + i0 * dp : nullptr,
        partial_x.defined() ? partial_x.data_ptr<T>() + g * Bp * dp : nullptr, partial_y.data_ptr<T>() + g * Bp * dp,
        accumulates ? at::empty({tile_gemm::round_up(p.chunk, tile_gemm::kMicroRows) * br}, options) : at::Tensor()};
    if (lse_known) {
      at::Tensor tile = at::empty({tile_rows(br), ld}, options);
      gradient_recompute(block, window, tile.data_ptr<T>());
    } else if (p.fixed_shift) {
      gradient_fused_fixed_shift(block, row_block, kept_per_thread[at::get_thread_num()]);
    } else {
      std::vector<at::Tensor> strips;
      for (int64_t k = 0; k < num_strips; ++k) strips.push_back(at::empty({tile_rows(br), ld}, options));
      gradient_fused_raw(block, strips);
    }
  });

  // Epilogue: row-owned parts plus the groups' partial sums, in group order.
  at::parallel_for(0, B, 256, [&](int64_t begin, int64_t end) {
    const T* ox = own_x.data_ptr<T>();
    const T* oy = has_bb ? own_y.data_ptr<T>() : nullptr;
    const T* px = p.intra ? partial_x.data_ptr<T>() : nullptr;
    const T* py = partial_y.data_ptr<T>();
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t k = 0; k < d; ++k) {
        T vx = ox[i * dp + k], vy = oy ? oy[i * dp + k] : T(0);
        for (int64_t g = 0; g < p.groups; ++g) {
          vy += py[(g * Bp + i) * dp + k];
          if (px) vx += px[(g * Bp + i) * dp + k];
        }
        dX[i * d + k] = vx;
        dY[i * d + k] = vy;
      }
    }
  });
}

// Row L2 normalisation (F.normalize: x / max(|x|, eps)); returns the normalised rows and writes 1 / max(|x|, eps).
// The norm is accumulated in double and the rows divided by it (one rounding per element): at small temperatures
// the logits are s x . y with s up to 1e3, so the normalised rows' rounding is the largest error left.
template <typename T>
at::Tensor normalize_rows(const at::Tensor& a, T* inv_norm) {
  const int64_t B = a.size(0), d = a.size(1);
  at::Tensor out = at::empty_like(a);
  const T* src = a.data_ptr<T>();
  T* dst = out.data_ptr<T>();
  at::parallel_for(0, B, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      double ss = 0;
      for (int64_t k = 0; k < d; ++k) ss += static_cast<double>(src[i * d + k]) * src[i * d + k];
      const T norm = static_cast<T>(std::max(std::sqrt(ss), kNormEps));
      inv_norm[i] = T(1) / norm;
      for (int64_t k = 0; k < d; ++k) dst[i * d + k] = src[i * d + k] / norm;
    }
  });
  return out;
}

// Backward of normalize_rows, in place on grad (rows): g <- (g - x (x . g)) * inv when |x| > eps, else g * inv.
template <typename T>
void normalize_backward(const T* x, const T* inv_norm, T* grad, int64_t B, int64_t d) {
  at::parallel_for(0, B, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T inv = inv_norm[i];
      if (inv < T(1.0 / kNormEps)) {
        T dot = 0;
        for (int64_t k = 0; k < d; ++k) dot += x[i * d + k] * grad[i * d + k];
        for (int64_t k = 0; k < d; ++k) grad[i * d + k] = (grad[i * d + k] - x[i * d + k] * dot) * inv;
      } else {
        for (int64_t k = 0; k < d; ++k) grad[i * d + k] *= inv;
      }
    }
  });
}

void check_inputs(const char* op, const at::Tensor& a, const at::Tensor& b, const at::Tensor& temperature) {
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu(), op, " (native CPU): a and b must be CPU tensors");
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.sizes() == b.sizes(), op,
              " (native CPU): a and b must both be (B, d), got ", a.sizes(), " and ", b.sizes());
  TORCH_CHECK(a.size(0) > 0, op, " (native CPU): B must be > 0");
  TORCH_CHECK(a.scalar_type() == b.scalar_type() && (a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble),
              op, " (native CPU): a and b must both be float32 or float64, got ", a.scalar_type(), " and ",
              b.scalar_type());
  TORCH_CHECK(temperature.numel() == 1, op, " (native CPU): temperature must hold one value");
  const double t = temperature.item<double>();
  // The bound of the Python dispatcher (mmrec_fast.ops.info_nce.MIN_TEMPERATURE), rounded to the temperature's
  // dtype as there: at a subnormal t the logits overflow (NaN losses); below 1e-6 float32 logits of unit rows keep
  // no digit of the loss.
  const double bound = temperature.scalar_type() == at::kFloat ? static_cast<double>(1e-6f) : 1e-6;
  TORCH_CHECK(t >= bound && std::isfinite(t), op, " (native CPU): temperature must be finite and >= 1e-06, got ", t);
}

// Shared state of a call: the rows the logits are made of, and the inverse norms when normalising.
struct Rows {
  at::Tensor x, y, inv_a, inv_b;
};

template <typename T>
Rows prepare_rows(const at::Tensor& a, const at::Tensor& b, bool normalize) {
  Rows r;
  if (normalize) {
    r.inv_a = at::empty({a.size(0)}, a.options());
    r.inv_b = at::empty({b.size(0)}, b.options());
    r.x = normalize_rows<T>(a, r.inv_a.data_ptr<T>());
    r.y = normalize_rows<T>(b, r.inv_b.data_ptr<T>());
  } else {
    r.x = a;
    r.y = b;
  }
  return r;
}

// loss_i from the log-sum-exps and the positive logits s x_i . y_i.
template <typename T>
void row_losses(const Problem<T>& p, const T* lse_a, const T* lse_b, T* loss) {
  const T* x = p.x.template data_ptr<T>();
  const T* y = p.y.template data_ptr<T>();
  const int64_t d = p.d;
  at::parallel_for(0, p.B, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      T dot = 0;
      for (int64_t k = 0; k < d; ++k) dot += x[i * d + k] * y[i * d + k];
      const T positive = p.s * dot;
      loss[i] = p.symmetric ? T(0.5) * ((lse_a[i] - positive) + (lse_b[i] - positive)) : lse_a[i] - positive;
    }
  });
}

// Scales the gradient by s, takes the temperature gradient, and applies the normalisation backward.
template <typename T>
void finish_gradient(const Problem<T>& p, const Rows& rows, bool normalize, double temperature, at::Tensor& grad_a,
                     at::Tensor& grad_b, at::Tensor& grad_t) {
  const int64_t B = p.B, d = p.d;
  grad_a.mul_(p.s);
  grad_b.mul_(p.s);
  std::vector<T> dots(B);
  const T* x = p.x.template data_ptr<T>();
  const T* y = p.y.template data_ptr<T>();
  const T* ga = grad_a.data_ptr<T>();
  const T* gb = grad_b.data_ptr<T>();
  at::parallel_for(0, B, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      T dot = 0;
      for (int64_t k = 0; k < d; ++k) dot += x[i * d + k] * ga[i * d + k] + y[i * d + k] * gb[i * d + k];
      dots[i] = dot;
    }
  });
  T total = 0;
  for (int64_t i = 0; i < B; ++i) total += dots[i];
  grad_t.fill_(-total / (T(2) * static_cast<T>(temperature)));
  if (normalize) {
    normalize_backward(x, rows.inv_a.data_ptr<T>(), grad_a.data_ptr<T>(), B, d);
    normalize_backward(y, rows.inv_b.data_ptr<T>(), grad_b.data_ptr<T>(), B, d);
  }
}

// info_nce: per-row losses and the log-sum-exps the backward needs.
}  // namespace

// The entry points (one per variant: csrc/common/isa.h).
std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_cpu(const at::Tensor& a_in, const at::Tensor& b_in,
                                                            const at::Tensor& temperature, bool normalize,
                                                            bool symmetric, bool intra) {
  check_inputs("info_nce", a_in, b_in, temperature);
  // Detached: the tile GEMMs below are out= calls, which refuse inputs that require grad (the forward of a custom
  // op still sees its inputs' requires_grad, and the worker threads run with grad mode on).
  const at::Tensor a = a_in.detach().contiguous(), b = b_in.detach().contiguous();
  const double t = temperature.item<double>();
  const int64_t B = a.size(0);
  at::Tensor loss = at::empty({B}, a.options());
  at::Tensor lse_a = at::empty({B}, a.options());
  at::Tensor lse_b = at::empty({symmetric ? B : 0}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "info_nce_cpu", [&] {
    const Rows rows = prepare_rows<scalar_t>(a, b, normalize);
    const Problem<scalar_t> p = make_problem<scalar_t>(rows.x, rows.y, t, normalize, symmetric, intra, 0);
    statistics(p, lse_a.data_ptr<scalar_t>(), symmetric ? lse_b.data_ptr<scalar_t>() : nullptr);
    row_losses(p, lse_a.data_ptr<scalar_t>(), symmetric ? lse_b.data_ptr<scalar_t>() : nullptr,
               loss.data_ptr<scalar_t>());
  });
  return {loss, lse_a, lse_b};
}

// info_nce_backward: gradients of sum_i grad_loss_i loss_i from the saved log-sum-exps (tiles recomputed).
std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& a_in, const at::Tensor& b_in, const at::Tensor& temperature,
    const at::Tensor& lse_a, const at::Tensor& lse_b, bool normalize, bool symmetric, bool intra) {
  check_inputs("info_nce_backward", a_in, b_in, temperature);
  const at::Tensor a = a_in.detach().contiguous(), b = b_in.detach().contiguous();
  const int64_t B = a.size(0);
  TORCH_CHECK(grad_loss.numel() == B && lse_a.numel() == B && lse_b.numel() == (symmetric ? B : 0),
              "info_nce_backward (native CPU): grad_loss, lse_a must hold B values and lse_b B (symmetric) or 0");
  const at::Tensor g = grad_loss.to(a.scalar_type()).contiguous();
  const at::Tensor la = lse_a.to(a.scalar_type()).contiguous(), lb = lse_b.to(a.scalar_type()).contiguous();
  const double t = temperature.item<double>();
  at::Tensor grad_a = at::empty_like(a), grad_b = at::empty_like(b);
  at::Tensor grad_t = at::empty({}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "info_nce_backward_cpu", [&] {
    const Rows rows = prepare_rows<scalar_t>(a, b, normalize);
    const Problem<scalar_t> p = make_problem<scalar_t>(rows.x, rows.y, t, normalize, symmetric, intra, intra ? 2 : 1);
    gradient(p, g.data_ptr<scalar_t>(), const_cast<scalar_t*>(la.data_ptr<scalar_t>()),
             symmetric ? lb.data_ptr<scalar_t>() : nullptr, /*lse_known=*/true, grad_a.data_ptr<scalar_t>(),
             grad_b.data_ptr<scalar_t>());
    finish_gradient(p, rows, normalize, t, grad_a, grad_b, grad_t);
  });
  return {grad_a, grad_b, grad_t.to(temperature.scalar_type())};
}

// info_nce_fused: the forward and, in the same call, the gradients of sum_i weights_i loss_i (weights uniform
// for "mean"/"sum": the autograd formula multiplies them by grad_output). Returns the weighted sum as the loss.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> info_nce_fused_cpu(
    const at::Tensor& a_in, const at::Tensor& b_in, const at::Tensor& temperature, bool normalize, bool symmetric,
    bool intra, const at::Tensor& weights) {
  check_inputs("info_nce_fused", a_in, b_in, temperature);
  const at::Tensor a = a_in.detach().contiguous(), b = b_in.detach().contiguous();
  const int64_t B = a.size(0);
  TORCH_CHECK(weights.numel() == B, "info_nce_fused (native CPU): weights must hold B values");
  const at::Tensor w = weights.to(a.scalar_type()).contiguous();
  const double t = temperature.item<double>();
  at::Tensor loss_rows = at::empty({B}, a.options());
  at::Tensor lse_a = at::empty({B}, a.options());
  at::Tensor lse_b = at::empty({symmetric ? B : 0}, a.options());
  at::Tensor grad_a = at::empty_like(a), grad_b = at::empty_like(b);
  at::Tensor grad_t = at::empty({}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "info_nce_fused_cpu", [&] {
    const Rows rows = prepare_rows<scalar_t>(a, b, normalize);
    const Problem<scalar_t> p = make_problem<scalar_t>(rows.x, rows.y, t, normalize, symmetric, intra, intra ? 2 : 1);
    scalar_t* la = lse_a.data_ptr<scalar_t>();
    scalar_t* lb = symmetric ? lse_b.data_ptr<scalar_t>() : nullptr;
    if (symmetric) statistics(p, la, lb);
    gradient(p, w.data_ptr<scalar_t>(), la, lb, /*lse_known=*/symmetric, grad_a.data_ptr<scalar_t>(),
             grad_b.data_ptr<scalar_t>());
    row_losses(p, la, lb, loss_rows.data_ptr<scalar_t>());
    finish_gradient(p, rows, normalize, t, grad_a, grad_b, grad_t);
  });
  at::Tensor loss = at::empty({}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "info_nce_fused_sum", [&] {
    const scalar_t* rows = loss_rows.data_ptr<scalar_t>();
    const scalar_t* wt = w.data_ptr<scalar_t>();
    scalar_t total = 0;
    for (int64_t i = 0; i < B; ++i) total += wt[i] * rows[i];  // in order: deterministic for any thread count
    loss.fill_(total);
  });
  return {loss, grad_a, grad_b, grad_t.to(temperature.scalar_type())};
}

MMREC_FAST_ISA_END

// The baseline compilation registers the op, dispatching to the variant chosen at load time.
#if defined(MMREC_FAST_ISA_REGISTERS)
namespace mmrec_fast {

MMREC_FAST_ISA_VARIANTS(info_nce_cpu)
MMREC_FAST_ISA_VARIANTS(info_nce_backward_cpu)
MMREC_FAST_ISA_VARIANTS(info_nce_fused_cpu)

TORCH_LIBRARY_IMPL(mmrec_fast, CPU, m) {
  m.impl("info_nce", MMREC_FAST_ISA_DISPATCH(info_nce_cpu));
  m.impl("info_nce_backward", MMREC_FAST_ISA_DISPATCH(info_nce_backward_cpu));
  m.impl("info_nce_fused", MMREC_FAST_ISA_DISPATCH(info_nce_fused_cpu));
}

}  // namespace mmrec_fast
#endif
