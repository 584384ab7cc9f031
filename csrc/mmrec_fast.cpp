// Schemas of every mmrec_fast operator, and the Python module shell of mmrec_fast._C.
//
// Implementations are registered per dispatch key next to their kernels: csrc/cpu/<op>.cpp
// (TORCH_LIBRARY_IMPL(mmrec_fast, CPU, m)) and csrc/cuda/<op>.cu (TORCH_LIBRARY_IMPL(mmrec_fast, CUDA, m)).
// Fake (meta) implementations and autograd formulas are registered from Python, in mmrec_fast/ops/<op>.py.

#include <Python.h>
#include <torch/library.h>

#include "common/isa.h"

#include <atomic>
#include <stdexcept>
#include <string>

TORCH_LIBRARY(mmrec_fast, m) {
  // out = sum_k weights[k] * M^k x  with  M = diag(left) W diag(right),  W = CSR(rowptr, col, values).
  //   x: (n, d); rowptr: (m + 1,) int64; col: (nnz,) int32; values / left / right: (nnz,) / (m,) / (n,)
  //   in x's accumulation dtype, None meaning all ones. t_rowptr / t_col / t_values: W^T in CSR, None when
  //   W is symmetric; the forward ignores them, the backward propagates through M^T with them.
  //   len(weights) = num_layers + 1. Returns (m, d) in x's dtype.
  m.def(
      "propagate(Tensor x, Tensor rowptr, Tensor col, Tensor? values, Tensor? left, Tensor? right, "
      "Tensor? t_rowptr, Tensor? t_col, Tensor? t_values, float[] weights) -> Tensor");

  // InfoNCE with in-batch negatives (ops/info_nce.py): a, b: (B, d) float32/float64, row i of each a positive
  //   pair; temperature: 0-dim (one value > 0). info_nce -> (loss (B,), lse_a (B,), lse_b (B,) or (0,)): per-row
  //   losses and the log-sum-exps of the a->b (and, symmetric, b->a) denominators.
  //   info_nce_backward(grad_loss (B,), ...) -> (grad_a (B, d), grad_b (B, d), grad_temperature 0-dim).
  //   info_nce_fused(..., weights (B,)) -> (sum_i weights_i loss_i 0-dim, grad_a, grad_b, grad_temperature): the
  //   forward with the gradient of that weighted sum computed in the same pass.
  m.def(
      "info_nce(Tensor a, Tensor b, Tensor temperature, bool normalize, bool symmetric, "
      "bool intra_view_negatives) -> (Tensor, Tensor, Tensor)");
  m.def(
      "info_nce_backward(Tensor grad_loss, Tensor a, Tensor b, Tensor temperature, Tensor lse_a, Tensor lse_b, "
      "bool normalize, bool symmetric, bool intra_view_negatives) -> (Tensor, Tensor, Tensor)");
  m.def(
      "info_nce_fused(Tensor a, Tensor b, Tensor temperature, bool normalize, bool symmetric, "
      "bool intra_view_negatives, Tensor weights) -> (Tensor, Tensor, Tensor, Tensor)");
  // Top-k of each row of x among the rows of x by inner product (x row-normalised: cosine kNN).
  //   x: (n, d) float32 / float64; 0 <= k <= n (n - 1 with exclude_self, which leaves out j == i).
  //   tile_bytes: the per-thread score-tile budget in bytes (0: the default). row_norms: (n,) in x's dtype or
  //   None: rows are divided by them as they are packed (x_ij / norm_i, 0 for a row of norm 0: the products of
  //   normalised rows without a normalised copy of x); None: x is used as it is.
  //   Returns values (n, k) in x's dtype, descending, ties to the lower index, and indices (n, k) int64.
  m.def("knn(Tensor x, int k, bool exclude_self, int tile_bytes, Tensor? row_norms=None) -> (Tensor, Tensor)");
  // Top-k of each query row among the key rows by inner product, the pairs of the CSR (exclude_rowptr (Q + 1,)
  // int64, exclude_col (nnz,) int32 sorted within each row) left out. queries (Q, d), keys (K, d) of one dtype
  // (float32 / float64); 0 <= k <= K. Returns values (Q, k) in that dtype, descending, ties to the lower index,
  // and indices (Q, k) int64; slots past a row's remaining candidates hold (-inf, -1).
  m.def(
      "topk_scores(Tensor queries, Tensor keys, int k, Tensor? exclude_rowptr, Tensor? exclude_col, "
      "int tile_bytes) -> (Tensor, Tensor)");
}

// The CPU variant in use (csrc/common/isa.h).
namespace mmrec_fast {
namespace isa {
namespace {

bool cpu_has(Isa isa) {
#if defined(__x86_64__) || defined(_M_X64)
  switch (isa) {
    case Isa::avx512: return __builtin_cpu_supports("x86-64-v4");
    case Isa::avx2: return __builtin_cpu_supports("x86-64-v3");
    default: return true;
  }
#else
  return isa == Isa::baseline;
#endif
}

Isa best() {
  for (Isa isa : {Isa::avx512, Isa::avx2})
    if (supported(isa)) return isa;
  return Isa::baseline;
}

std::atomic<int>& chosen() {
  static std::atomic<int> value{static_cast<int>(best())};  // once, at the first dispatched call or query
  return value;
}

}  // namespace

bool supported(Isa isa) {
#if defined(MMREC_FAST_WITH_CPU_VARIANTS)
  return cpu_has(isa);
#else
  return isa == Isa::baseline;
#endif
}

Isa active() { return static_cast<Isa>(chosen().load(std::memory_order_relaxed)); }

void set_active(Isa isa) {
  if (!supported(isa))
    throw std::invalid_argument(std::string("mmrec_fast: the CPU variant '") + name(isa) +
                                "' cannot run here (" +
#if defined(MMREC_FAST_WITH_CPU_VARIANTS)
                                "this CPU lacks its instructions"
#else
                                "the extension was built without the AVX2 / AVX-512 variants"
#endif
                                ")");
  chosen().store(static_cast<int>(isa), std::memory_order_relaxed);
}

const char* name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "baseline";
  }
}

Isa parse(const std::string& text) {
  for (Isa isa : {Isa::baseline, Isa::avx2, Isa::avx512})
    if (text == name(isa)) return isa;
  throw std::invalid_argument("mmrec_fast: unknown CPU variant '" + text + "' (baseline, avx2 or avx512)");
}

}  // namespace isa
}  // namespace mmrec_fast

namespace {

// cpu_isa() -> the variant in use; cpu_isas() -> the variants this CPU and build can run, best last;
// set_cpu_isa(name): run that one from now on (ValueError if unknown or not runnable here).
PyObject* cpu_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(mmrec_fast::isa::name(mmrec_fast::isa::active()));
}

PyObject* cpu_isas(PyObject*, PyObject*) {
  using mmrec_fast::isa::Isa;
  PyObject* names = PyList_New(0);
  for (Isa isa : {Isa::baseline, Isa::avx2, Isa::avx512}) {
    if (!mmrec_fast::isa::supported(isa)) continue;
    PyObject* item = PyUnicode_FromString(mmrec_fast::isa::name(isa));
    PyList_Append(names, item);
    Py_DECREF(item);
  }
  return names;
}

PyObject* set_cpu_isa(PyObject*, PyObject* arg) {
  const char* text = PyUnicode_AsUTF8(arg);
  if (text == nullptr) return nullptr;
  try {
    mmrec_fast::isa::set_active(mmrec_fast::isa::parse(text));
  } catch (const std::invalid_argument& error) {
    PyErr_SetString(PyExc_ValueError, error.what());
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyMethodDef module_methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS, "The CPU variant of the kernels in use (baseline, avx2, avx512)."},
    {"cpu_isas", cpu_isas, METH_NOARGS, "The CPU variants this CPU and build can run, best last."},
    {"set_cpu_isa", set_cpu_isa, METH_O, "Run the CPU variant of that name from now on."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

// A Python module named after the extension (mmrec_fast._C when built by setup.py, another name when JIT-built),
// so that importing it loads the library and runs the registrations above. It also says what was compiled and
// which CPU variant runs.
#define MMREC_FAST_CONCAT2(a, b) a##b
#define MMREC_FAST_CONCAT(a, b) MMREC_FAST_CONCAT2(a, b)
#define MMREC_FAST_STR2(a) #a
#define MMREC_FAST_STR(a) MMREC_FAST_STR2(a)

PyMODINIT_FUNC MMREC_FAST_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, MMREC_FAST_STR(TORCH_EXTENSION_NAME),
                                   "mmrec_fast native kernels (operators are in torch.ops.mmrec_fast)", -1,
                                   module_methods};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
#ifdef MMREC_FAST_WITH_CUDA
  PyModule_AddIntConstant(module, "with_cuda", 1);
#else
  PyModule_AddIntConstant(module, "with_cuda", 0);
#endif
  return module;
}
