// CUDA kernel for lse_aggregate_nll_value_and_grad: the loss of Eq. 6 and its gradient in one launch.
//
// Why: at the training shapes of retrieval ([128, 16, 2]) the fused forward and backward kernels each run
// in a few microseconds, and a fwd+bwd call is bounded by what the host pays around them (the autograd
// engine alone costs several kernels' worth). One launch that returns both the value and the gradient is
// the whole host cost. At large shapes it also reads the logits from memory once instead of twice: rows of
// up to 4,096 vectors are held in registers (lse_resident.cuh), and longer ones are re-read by pass 2 from
// L1/L2 right after pass 1 reduced them.
//
// Layout as in lse_aggregate_kernel.cu: logits [B, N, K] contiguous, one group of GROUP threads per row,
// a warp for short rows and the whole block for long ones; at small B one 1024-thread block does every row
// and also reduces the batch in a fixed order (deterministic, no atomics, no second launch).

#include <tuple>
#include <type_traits>

#include "ops/cuda/common.cuh"
#include "ops/cuda/kernels.h"
#include "ops/cuda/lse_common.cuh"
#include "ops/cuda/lse_resident.cuh"

namespace clipbert::cuda {
namespace {

// Per row b with target t: lse_all over (n, k), lse_t over n of column t, loss_b = lse_all - lse_t and
// grad[b, n, j] = scale * (exp(x - lse_all) - [j == t] exp(x - lse_t)); scale = 1/B for mean, else 1.
// U: loads in flight per thread (nll_unroll(true)). Rows that fit run nll_resident_kernel instead (lse_resident.cuh).
template <typename scalar_t, int GROUP, int VEC, int THREADS, int U>
__global__ void __launch_bounds__(THREADS)
    nll_value_and_grad_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ target,
                              at::opmath_type<scalar_t>* __restrict__ loss, scalar_t* __restrict__ gx, int64_t B,
                              int64_t N, int64_t K, bool reduce_in_block, at::opmath_type<scalar_t> scale) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = Vec<scalar_t, VEC>;
  __shared__ acc_t smem[2 * THREADS / kWarp];
  __shared__ acc_t loss_smem[THREADS / kWarp];
  const int rows_per_block = THREADS / GROUP, gid = threadIdx.x / GROUP, lane = threadIdx.x % GROUP;
  const int64_t row_elems = N * K, n_vec = row_elems / VEC;
  acc_t loss_sum = 0;
  for (int64_t row = int64_t(blockIdx.x) * rows_per_block + gid; row < B;
       row += int64_t(gridDim.x) * rows_per_block) {
    const scalar_t* xs = x + row * row_elems;
    const V* xr = reinterpret_cast<const V*>(xs);
    // Pass 1: the row's logsumexp, U 128-bit loads in flight per thread (as the NLL forward).
    Lse<acc_t> all = row_lse_share<acc_t, GROUP, U>(xr, n_vec, lane);
    const int64_t t = target[row];
    CUDA_KERNEL_ASSERT(t >= 0 && t < K && "lse_aggregate_nll_value_and_grad: target out of [0, K)");
    Lse<acc_t> tl = lse_init<acc_t>();
    for (int64_t n = lane; n < N; n += GROUP) tl.add(static_cast<acc_t>(xs[n * K + t]));
    all = group_reduce_lse<acc_t, GROUP>(all, smem);  // every thread of the group gets the result
    tl = group_reduce_lse<acc_t, GROUP>(tl, smem);
    const acc_t la = all.value(), lt = tl.value();
    // Pass 2: the gradient, from the row this group just read (L1/L2), U loads in flight again.
    V* gr = reinterpret_cast<V*>(gx + row * row_elems);
    for (int64_t base = lane; base < n_vec; base += U * GROUP) {
      V a[U];
      load_unrolled<U>(xr, base, int64_t(GROUP), n_vec, a);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t v = base + u * GROUP;
        if (v >= n_vec) break;
        // one division per vector; N * K < 2^31 (check_logits), so column, K and t fit an int
        gr[v] = nll_grad_vec(a[u], static_cast<int>((v * VEC) % K), static_cast<int>(K), static_cast<int>(t), la, lt,
                             scale);
      }
    }
    if (lane == 0) {
      if (reduce_in_block)
        loss_sum += la - lt;
      else
        loss[row] = la - lt;
    }
  }
  if (reduce_in_block) block_sum_losses(loss_sum, lane, gid, rows_per_block, loss_smem, loss, scale);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> lse_aggregate_nll_value_and_grad_cuda(const at::Tensor& logits_in,
                                                                         const at::Tensor& target_in,
                                                                         int64_t reduction) {
  const char* op = "lse_aggregate_nll_value_and_grad";
  check_logits(logits_in, op);
  check_target(target_in, logits_in, op);
  check_reduction(reduction, op);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous(), target = target_in.contiguous();
  const int64_t B = logits.size(0), N = logits.size(1), K = logits.size(2), row_elems = N * K;
  const auto acc_opts = logits.options().dtype(at::toOpMathType(logits.scalar_type()));
  auto grad_x = at::empty_like(logits, at::MemoryFormat::Contiguous);
  if (B == 0) {
    if (reduction == 0) return {at::empty({0}, acc_opts), grad_x};
    return {at::full({}, reduction == 1 ? NAN : 0.f, acc_opts), grad_x};
  }
  const bool single = reduction != 0 && B * row_elems <= kSingleBlockElems;
  const int group = single ? kWarp : group_for(row_elems);
  const dim3 grid(single ? 1 : grid_for(B, kBlock / group));
  auto loss = single ? at::empty({}, acc_opts) : at::empty({B}, acc_opts);
  const double scale = reduction == 1 ? 1.0 / static_cast<double>(B) : 1.0;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "lse_nll_value_and_grad_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int VEC = vec_width<scalar_t>();
    const scalar_t* x = logits.const_data_ptr<scalar_t>();
    scalar_t* gx = grad_x.data_ptr<scalar_t>();
    const int64_t* t = target.const_data_ptr<int64_t>();
    acc_t* l = loss.data_ptr<acc_t>();
    const acc_t s = static_cast<acc_t>(scale);
    const bool vec = row_elems % VEC == 0 && aligned16(x) && aligned16(gx);
    if (!single && group == kBlock && vec && nll_resident_wanted(true) &&
        launch_nll_resident<scalar_t, VEC, true>(x, t, l, nullptr, gx, B, N, K, s, stream)) {
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    auto launch = [&](auto group_c, auto vec_c) {
      constexpr int G = decltype(group_c)::value, V = decltype(vec_c)::value;
      if constexpr (G == kWarp) {  // only warp groups run as the single block
        if (single) {
          nll_value_and_grad_kernel<scalar_t, G, V, 1024, 2><<<grid, 1024, 0, stream>>>(x, t, l, gx, B, N, K, true, s);
          return;
        }
      }
      with_unroll(nll_unroll(true), [&](auto u_c) {
        nll_value_and_grad_kernel<scalar_t, G, V, kBlock, decltype(u_c)::value>
            <<<grid, kBlock, 0, stream>>>(x, t, l, gx, B, N, K, false, s);
      });
    };
    launch_group_vec<VEC>(group == kWarp, vec, launch);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (single || reduction == 0) return {loss, grad_x};
  return {reduction == 1 ? loss.mean() : loss.sum(), grad_x};
}

}  // namespace clipbert::cuda
