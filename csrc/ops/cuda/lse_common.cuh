// Launch shapes and argument checks shared by the CUDA LSE kernels (lse_aggregate_kernel.cu and
// lse_nll_value_and_grad_kernel.cu). Every message names the op, the argument and what was expected.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>

#include "ops/checks.h"
#include "ops/cuda/common.cuh"

namespace clipbert::cuda {

constexpr int kBlock = 256;
constexpr int64_t kSingleBlockElems = 1 << 16;  // NLL: below this many logits, one block does it all

inline void check_logits(const at::Tensor& logits, const char* op) {
  TORCH_CHECK(logits.is_cuda(), op, ": logits must be a CUDA tensor here, got ", logits.device());
  TORCH_CHECK(is_kernel_float(logits), op, ": logits must be float32/float16/bfloat16/float64, got ",
              logits.scalar_type());
  TORCH_CHECK(logits.dim() == 3, op, ": logits must be [B, N, K], got ", shape_str(logits));
  TORCH_CHECK(logits.size(1) > 0 && logits.size(2) > 0, op,
              ": logits must be [B, N, K] with N > 0 clips and K > 0 classes, got ", shape_str(logits));
  TORCH_CHECK(logits.size(1) * logits.size(2) < (int64_t(1) << 31), op, ": N * K must be < 2^31, got ",
              shape_str(logits));
}

inline void check_aux(const at::Tensor& t, const at::Tensor& logits, at::ScalarType dtype, const char* op, const char* name,
               at::IntArrayRef shape) {
  TORCH_CHECK(t.device() == logits.device(), op, ": ", name, " must be on ", logits.device(), ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", shape_str(t));
}

inline void check_target(const at::Tensor& target, const at::Tensor& logits, const char* op) {
  const int64_t B = logits.size(0);
  TORCH_CHECK(target.device() == logits.device(), op, ": target must be on ", logits.device(), ", got ",
              target.device());
  TORCH_CHECK(target.scalar_type() == at::kLong, op, ": target must be int64, got ", target.scalar_type());
  TORCH_CHECK(target.dim() == 1 && target.size(0) == B, op, ": target must be [B] = [", B, "], got ",
              shape_str(target));
}

inline void check_reduction(int64_t reduction, const char* op) {
  TORCH_CHECK(reduction >= 0 && reduction <= 2, op, ": reduction must be 0 (none), 1 (mean) or 2 (sum), got ",
              reduction);
}

inline int group_for(int64_t row_len) { return row_len <= 64 ? kWarp : kBlock; }

// How the NLL kernels stream a row (set from Python with clipbert.ops.set_nll_kernel, read at each launch):
//   kStream2 / kStream4: a loop that keeps 2 or 4 128-bit loads in flight per thread. Why two: these loops
//     are bound by memory latency, not by their exps. With 2 the NLL forward read at 74.8% of copy
//     bandwidth on an H100 but 65.5% on an H200 (2026-11-27), whose 1.4x bandwidth needs 1.4x the bytes in
//     flight for the same latency (Little's law); 4 is the guess for the H200, unmeasured.
//   kResident: one block per row, every thread loads all of its share of the row (up to 8 vectors) at once and
//     keeps it in registers, so the forward has its whole row in flight and the value-and-grad kernel reads
//     the logits from memory once (its second pass otherwise re-reads the row from L2, whose 50 MB the
//     ~1,000 rows in flight on the GPU can overflow). Rows too long for it (more than 4,096 vectors) and
//     misaligned rows stream with 4.
// kAuto keeps what was measured where it met the target and tries the new kernel where nothing did: the
// NLL forward and backward stream with 2 (81.9% of copy fwd+bwd on an H100), the value-and-grad kernel runs
// resident (its streaming form read 54% of copy on an H200). Single-block launches (tiny batches) always
// use 2.
enum class NllKernel : int { kAuto = 0, kStream2 = 1, kStream4 = 2, kResident = 3 };

// The process-wide choice. `inline` gives one object for all translation units of clipbert._cuda.
inline std::atomic<int>& nll_kernel_slot() {
  static std::atomic<int> slot{static_cast<int>(NllKernel::kAuto)};
  return slot;
}
inline NllKernel nll_kernel() { return static_cast<NllKernel>(nll_kernel_slot().load(std::memory_order_relaxed)); }
// Whether the NLL forward (value_and_grad false) or the value-and-grad kernel runs resident where it fits.
inline bool nll_resident_wanted(bool value_and_grad) {
  const NllKernel k = nll_kernel();
  return k == NllKernel::kResident || (k == NllKernel::kAuto && value_and_grad);
}
// Loads in flight for the streaming loops of the NLL forward and backward (value_and_grad false) or of the
// value-and-grad kernel.
inline int nll_unroll(bool value_and_grad) {
  const NllKernel k = nll_kernel();
  return k == NllKernel::kStream2 || (k == NllKernel::kAuto && !value_and_grad) ? 2 : 4;
}

// Calls launch(std::integral_constant<int, U>) with the streaming loops' loads in flight as a constant.
template <typename Launch>
void with_unroll(int unroll, Launch&& launch) {
  if (unroll == 2)
    launch(std::integral_constant<int, 2>{});
  else
    launch(std::integral_constant<int, 4>{});
}

// v[u] = p[base + u * step] for each u with base + u * step < n: all U loads issued before any is used.
template <int U, typename V, typename I>
__device__ __forceinline__ void load_unrolled(const V* __restrict__ p, I base, I step, I n, V (&v)[U]) {
#pragma unroll
  for (int u = 0; u < U; ++u)
    if (base + u * step < n) v[u] = p[base + u * step];
}

// The NLL gradient of one vector of values whose first element sits in column `col` of K:
// w * (exp(x - la) - [column == t] exp(x - lt)), la = lse over the row, lt = lse over n of column t.
template <typename scalar_t, typename acc_t, int VEC>
__device__ __forceinline__ Vec<scalar_t, VEC> nll_grad_vals(const acc_t (&xv)[VEC], int col, int K, int t, acc_t la,
                                                            acc_t lt, acc_t w) {
  Vec<scalar_t, VEC> r;
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    acc_t p = exp(xv[j] - la);
    if (col == t) p -= exp(xv[j] - lt);
    r.v[j] = static_cast<scalar_t>(w * p);
    if (++col == K) col = 0;
  }
  return r;
}

template <typename acc_t, typename scalar_t, int VEC>
__device__ __forceinline__ Vec<scalar_t, VEC> nll_grad_vec(const Vec<scalar_t, VEC>& v, int col, int K, int t,
                                                           acc_t la, acc_t lt, acc_t w) {
  acc_t xv[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) xv[j] = to_acc(v.v[j]);
  return nll_grad_vals<scalar_t>(xv, col, K, t, la, lt, w);
}

// This thread's online-logsumexp share of a row of n_vec vectors read by the GROUP threads of its group
// (vectors lane, lane + GROUP, ...), U loads in flight at a time. Reduce it with group_reduce_lse.
template <typename acc_t, int GROUP, int U, typename scalar_t, int VEC>
__device__ __forceinline__ Lse<acc_t> row_lse_share(const Vec<scalar_t, VEC>* xr, int64_t n_vec, int lane) {
  Lse<acc_t> all = lse_init<acc_t>();
  int64_t i = lane;
  for (; i + (U - 1) * GROUP < n_vec; i += U * GROUP) {
    Vec<scalar_t, VEC> a[U];
#pragma unroll
    for (int u = 0; u < U; ++u) a[u] = xr[i + u * GROUP];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      acc_t va[VEC];
#pragma unroll
      for (int j = 0; j < VEC; ++j) va[j] = to_acc(a[u].v[j]);
      all.add_vec(va);
    }
  }
  for (; i < n_vec; i += GROUP) {  // at most U - 1 vectors left
    const Vec<scalar_t, VEC> a = xr[i];
    acc_t va[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) va[j] = to_acc(a.v[j]);
    all.add_vec(va);
  }
  return all;
}

inline int64_t grid_for(int64_t rows, int rows_per_block) {
  return std::min<int64_t>((rows + rows_per_block - 1) / rows_per_block, int64_t(1) << 30);
}

// Calls launch(group, vec) with compile-time constants: the threads per row (a warp, or the whole block)
// and the elements per load (VEC for 128-bit loads, or 1 when rows are not 16-byte aligned).
template <int VEC, typename Launch>
void launch_group_vec(bool warp, bool vec, Launch&& launch) {
  using Warp = std::integral_constant<int, kWarp>;
  using Block = std::integral_constant<int, kBlock>;
  using Wide = std::integral_constant<int, VEC>;
  using Narrow = std::integral_constant<int, 1>;
  if (warp && vec)
    launch(Warp{}, Wide{});
  else if (warp)
    launch(Warp{}, Narrow{});
  else if (vec)
    launch(Block{}, Wide{});
  else
    launch(Block{}, Narrow{});
}

}  // namespace clipbert::cuda
