// CUDA kernels for lse_aggregate / lse_aggregate_nll and their backwards.
//
// Layout: logits [B, N, K] contiguous, one "group" of threads per row b. GROUP = 32 (one warp per row,
// several rows per block) for short rows, GROUP = 256 (one block per row) for long rows. All math is fp32
// (fp64 for double inputs) with an online max/sum logsumexp, so every element is read once per kernel.
// The NLL forward at small B runs as a single block that also reduces the batch (one launch, no atomics,
// deterministic); at large B each row writes its loss and at::sum/at::mean reduce the [B] vector.

#include <tuple>
#include <type_traits>

#include "ops/checks.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/kernels.h"
#include "ops/cuda/lse_common.cuh"
#include "ops/cuda/lse_resident.cuh"

namespace clipbert::cuda {
namespace {

template <typename scalar_t, int GROUP>
__global__ void lse_aggregate_fwd_kernel(const scalar_t* __restrict__ x, at::opmath_type<scalar_t>* __restrict__ out,
                                         at::opmath_type<scalar_t>* __restrict__ lse_all, int64_t B, int64_t N,
                                         int64_t K) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t smem[2 * kBlock / kWarp];
  const int rows_per_block = blockDim.x / GROUP, gid = threadIdx.x / GROUP, lane = threadIdx.x % GROUP;
  for (int64_t row = int64_t(blockIdx.x) * rows_per_block + gid; row < B; row += int64_t(gridDim.x) * rows_per_block) {
    const scalar_t* xr = x + row * N * K;
    acc_t* o = out + row * K;
    Lse<acc_t> total = lse_init<acc_t>();
    for (int64_t k = lane; k < K; k += GROUP) {
      Lse<acc_t> col = lse_init<acc_t>();
      // Coalesced across lanes. Four clips' values are loaded before any is added: the H200 read this kernel
      // at 18% of copy bandwidth at [4096,16,1540] (2026-11-27) with one load in flight a thread, since the
      // compiler does not move a load above the previous value's data-dependent update.
      int64_t n = 0;
      for (; n + 4 <= N; n += 4) {
        scalar_t v[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) v[u] = xr[(n + u) * K + k];
#pragma unroll
        for (int u = 0; u < 4; ++u) col.add(to_acc(v[u]));
      }
      for (; n < N; ++n) col.add(to_acc(xr[n * K + k]));
      const acc_t v = col.value();
      o[k] = v;  // lse over n; re-read below by this same thread
      total.merge(v, acc_t(1));
    }
    total = group_reduce_lse<acc_t, GROUP>(total, smem);
    const acc_t la = total.value();
    for (int64_t k = lane; k < K; k += GROUP) o[k] -= la;
    if (lane == 0) lse_all[row] = la;
  }
}

// grad[b,n,j] = g[b,j] exp(x - lse_all - out[j]) - (sum_k g[b,k]) exp(x - lse_all)
template <typename scalar_t, int GROUP>
__global__ void lse_aggregate_bwd_kernel(const at::opmath_type<scalar_t>* __restrict__ g,
                                         const scalar_t* __restrict__ x,
                                         const at::opmath_type<scalar_t>* __restrict__ out,
                                         const at::opmath_type<scalar_t>* __restrict__ lse_all,
                                         scalar_t* __restrict__ gx, int64_t B, int64_t N, int64_t K) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t smem[kBlock / kWarp];
  const int rows_per_block = blockDim.x / GROUP, gid = threadIdx.x / GROUP, lane = threadIdx.x % GROUP;
  for (int64_t row = int64_t(blockIdx.x) * rows_per_block + gid; row < B; row += int64_t(gridDim.x) * rows_per_block) {
    const acc_t* gr = g + row * K;
    const acc_t* o = out + row * K;
    acc_t g_sum = 0;
    for (int64_t k = lane; k < K; k += GROUP) g_sum += gr[k];
    g_sum = group_reduce_sum<acc_t, GROUP>(g_sum, smem);
    const acc_t la = lse_all[row];
    const scalar_t* xr = x + row * N * K;
    scalar_t* gxr = gx + row * N * K;
#pragma unroll 4  // no data-dependent branch here, so the unrolled loads can be issued together
    for (int64_t i = lane; i < N * K; i += GROUP) {
      const int64_t k = i % K;
      const acc_t t = to_acc(xr[i]) - la;
      gxr[i] = static_cast<scalar_t>(gr[k] * exp(t - o[k]) - g_sum * exp(t));
    }
    // x - lse_k is taken above as t - out[k], which is -inf - -inf = NaN where lse_k - lse_all overflowed
    // to out[k] = -inf while x - lse_all did too (logits near +-max of acc_t, e.g. bf16 ones of +-3.4e38).
    // Such a column gets its lse again from the logits, as the CPU kernel and the reference do; a column
    // -inf in every clip keeps the formula's value. A separate pass, taken by the whole group or none (the
    // count is reduced), so the loop above stays branch-free; each thread redoes only the elements it wrote.
    acc_t overflowed = 0;
    for (int64_t k = lane; k < K; k += GROUP) overflowed += o[k] == neg_inf<acc_t>() ? acc_t(1) : acc_t(0);
    if (group_reduce_sum<acc_t, GROUP>(overflowed, smem) > acc_t(0)) {
      for (int64_t i = lane; i < N * K; i += GROUP) {
        const int64_t k = i % K;
        if (o[k] != neg_inf<acc_t>()) continue;
        Lse<acc_t> col = lse_init<acc_t>();
        for (int64_t n = 0; n < N; ++n) col.add(to_acc(xr[n * K + k]));
        const acc_t lse_k = col.value();
        if (lse_k == neg_inf<acc_t>()) continue;
        const acc_t v = to_acc(xr[i]);
        gxr[i] = static_cast<scalar_t>(gr[k] * exp(v - lse_k) - g_sum * exp(v - la));
      }
    }
  }
}

// Per row: stats = (lse over the whole row, lse over n of the target column); loss = difference.
// reduce_in_block (grid of one block): the block also sums the row losses and writes loss[0] * scale.
// THREADS is the launch's block size: the 1024-thread single-block launch must fit 64 registers per thread
// (the vectorized update ran out of registers for float32/float64 without the bound, H100 2026-11-26), and
// the 256-thread launches keep the compiler's free choice. U: loads in flight per thread (nll_unroll(false)).
template <typename scalar_t, int GROUP, int VEC, int THREADS, int U>
__global__ void __launch_bounds__(THREADS) nll_fwd_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ target,
                               at::opmath_type<scalar_t>* __restrict__ loss,
                               at::opmath_type<scalar_t>* __restrict__ stats, int64_t B, int64_t N, int64_t K,
                               bool reduce_in_block, at::opmath_type<scalar_t> scale) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t smem[2 * 1024 / kWarp];
  __shared__ acc_t loss_smem[1024 / kWarp];
  const int rows_per_block = blockDim.x / GROUP, gid = threadIdx.x / GROUP, lane = threadIdx.x % GROUP;
  const int64_t row_elems = N * K;
  acc_t loss_sum = 0;
  for (int64_t row = int64_t(blockIdx.x) * rows_per_block + gid; row < B; row += int64_t(gridDim.x) * rows_per_block) {
    const scalar_t* xr = x + row * row_elems;
    Lse<acc_t> all =
        row_lse_share<acc_t, GROUP, U>(reinterpret_cast<const Vec<scalar_t, VEC>*>(xr), row_elems / VEC, lane);
    const int64_t t = target[row];
    CUDA_KERNEL_ASSERT(t >= 0 && t < K && "lse_aggregate_nll: target out of [0, K)");
    Lse<acc_t> tl = lse_init<acc_t>();
    for (int64_t n = lane; n < N; n += GROUP) tl.add(static_cast<acc_t>(xr[n * K + t]));
    all = group_reduce_lse<acc_t, GROUP>(all, smem);
    tl = group_reduce_lse<acc_t, GROUP>(tl, smem);
    if (lane == 0) {
      const acc_t la = all.value(), lt = tl.value();
      stats[2 * row] = la;
      stats[2 * row + 1] = lt;
      if (reduce_in_block)
        loss_sum += la - lt;
      else
        loss[row] = la - lt;
    }
  }
  if (reduce_in_block) block_sum_losses(loss_sum, lane, gid, rows_per_block, loss_smem, loss, scale);
}

// grad[b,n,j] = w_b (exp(x - lse_all) - [j == t_b] exp(x - lse_t)); grid.y walks rows, grid.x the row, each
// thread U vectors a blockDim apart (coalesced), all loaded before any is computed and stored.
template <typename scalar_t, int VEC, int U>
__global__ void nll_bwd_kernel(const at::opmath_type<scalar_t>* __restrict__ g, const scalar_t* __restrict__ x,
                               const int64_t* __restrict__ target, const at::opmath_type<scalar_t>* __restrict__ stats,
                               scalar_t* __restrict__ gx, int64_t B, int row_elems, int K, bool per_row_grad,
                               at::opmath_type<scalar_t> scale) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = Vec<scalar_t, VEC>;
  const int n_vec = row_elems / VEC, step = blockDim.x, stride = gridDim.x * blockDim.x * U;
  for (int64_t row = blockIdx.y; row < B; row += gridDim.y) {
    const acc_t w = (per_row_grad ? g[row] : g[0]) * scale;
    const acc_t la = stats[2 * row], lt = stats[2 * row + 1];
    const int t = static_cast<int>(target[row]);
    const V* xr = reinterpret_cast<const V*>(x + row * row_elems);
    V* gr = reinterpret_cast<V*>(gx + row * row_elems);
    for (int base = blockIdx.x * blockDim.x * U + threadIdx.x; base < n_vec; base += stride) {
      V v[U];
      load_unrolled<U>(xr, base, step, n_vec, v);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int i = base + u * step;
        if (i >= n_vec) break;
        gr[i] = nll_grad_vec(v[u], (i * VEC) % K, K, t, la, lt, w);  // one division per vector
      }
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> lse_aggregate_cuda(const at::Tensor& logits_in) {
  check_logits(logits_in, "lse_aggregate");
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const int64_t B = logits.size(0), N = logits.size(1), K = logits.size(2);
  const auto acc = at::toOpMathType(logits.scalar_type());
  auto out = at::empty({B, K}, logits.options().dtype(acc));
  auto lse_all = at::empty({B}, logits.options().dtype(acc));
  if (logits.numel() == 0) return {out, lse_all};
  const int group = group_for(K);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "lse_aggregate_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const dim3 grid(grid_for(B, kBlock / group));
    auto args = std::make_tuple(logits.const_data_ptr<scalar_t>(), out.data_ptr<acc_t>(), lse_all.data_ptr<acc_t>());
    if (group == kWarp)
      lse_aggregate_fwd_kernel<scalar_t, kWarp><<<grid, kBlock, 0, stream>>>(
          std::get<0>(args), std::get<1>(args), std::get<2>(args), B, N, K);
    else
      lse_aggregate_fwd_kernel<scalar_t, kBlock><<<grid, kBlock, 0, stream>>>(
          std::get<0>(args), std::get<1>(args), std::get<2>(args), B, N, K);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, lse_all};
}

at::Tensor lse_aggregate_backward_cuda(const at::Tensor& grad_in, const at::Tensor& logits_in,
                                       const at::Tensor& out_in, const at::Tensor& lse_all_in) {
  const char* op = "_lse_aggregate_backward";
  check_logits(logits_in, op);
  const int64_t B = logits_in.size(0), N = logits_in.size(1), K = logits_in.size(2);
  const auto acc = at::toOpMathType(logits_in.scalar_type());
  check_aux(grad_in, logits_in, acc, op, "grad_out", {B, K});
  check_aux(out_in, logits_in, acc, op, "out", {B, K});
  check_aux(lse_all_in, logits_in, acc, op, "lse_all", {B});
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous(), grad = grad_in.contiguous(), out = out_in.contiguous(),
                   lse_all = lse_all_in.contiguous();
  auto grad_x = at::empty_like(logits, at::MemoryFormat::Contiguous);
  if (logits.numel() == 0) return grad_x;
  const int group = group_for(N * K);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "lse_aggregate_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const dim3 grid(grid_for(B, kBlock / group));
    const acc_t* g = grad.const_data_ptr<acc_t>();
    const scalar_t* x = logits.const_data_ptr<scalar_t>();
    const acc_t* o = out.const_data_ptr<acc_t>();
    const acc_t* l = lse_all.const_data_ptr<acc_t>();
    scalar_t* gx = grad_x.data_ptr<scalar_t>();
    if (group == kWarp)
      lse_aggregate_bwd_kernel<scalar_t, kWarp><<<grid, kBlock, 0, stream>>>(g, x, o, l, gx, B, N, K);
    else
      lse_aggregate_bwd_kernel<scalar_t, kBlock><<<grid, kBlock, 0, stream>>>(g, x, o, l, gx, B, N, K);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_x;
}

std::tuple<at::Tensor, at::Tensor> lse_aggregate_nll_cuda(const at::Tensor& logits_in, const at::Tensor& target_in,
                                                          int64_t reduction) {
  const char* op = "lse_aggregate_nll";
  check_logits(logits_in, op);
  check_target(target_in, logits_in, op);
  check_reduction(reduction, op);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous(), target = target_in.contiguous();
  const int64_t B = logits.size(0), N = logits.size(1), K = logits.size(2), row_elems = N * K;
  auto stats = at::empty({B, 2}, logits.options().dtype(at::toOpMathType(logits.scalar_type())));
  const auto acc_opts = stats.options();
  if (B == 0) {
    if (reduction == 0) return {at::empty({0}, acc_opts), stats};
    return {at::full({}, reduction == 1 ? NAN : 0.f, acc_opts), stats};
  }
  // One block for the whole batch when small: the launch then also produces the reduced loss.
  const bool single = reduction != 0 && B * row_elems <= kSingleBlockElems;
  const int group = single ? kWarp : group_for(row_elems);
  const int threads = single ? 1024 : kBlock;
  const dim3 grid(single ? 1 : grid_for(B, threads / group));
  auto loss = single ? at::empty({}, acc_opts) : at::empty({B}, acc_opts);
  const double scale = reduction == 1 ? 1.0 / static_cast<double>(B) : 1.0;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "lse_aggregate_nll_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int VEC = vec_width<scalar_t>();
    const scalar_t* x = logits.const_data_ptr<scalar_t>();
    const int64_t* t = target.const_data_ptr<int64_t>();
    acc_t* l = loss.data_ptr<acc_t>();
    acc_t* st = stats.data_ptr<acc_t>();
    const bool vec = row_elems % VEC == 0 && aligned16(x);
    const acc_t s = static_cast<acc_t>(scale);
    if (!single && group == kBlock && vec && nll_resident_wanted(false) &&
        launch_nll_resident<scalar_t, VEC, false>(x, t, l, st, nullptr, B, N, K, s, stream)) {
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    auto launch = [&](auto group_c, auto vec_c) {
      constexpr int G = decltype(group_c)::value, V = decltype(vec_c)::value;
      if constexpr (G == kWarp) {  // only warp groups run as the single block
        if (single) {
          nll_fwd_kernel<scalar_t, G, V, 1024, 2><<<grid, 1024, 0, stream>>>(x, t, l, st, B, N, K, true, s);
          return;
        }
      }
      with_unroll(nll_unroll(false), [&](auto u_c) {
        nll_fwd_kernel<scalar_t, G, V, kBlock, decltype(u_c)::value>
            <<<grid, kBlock, 0, stream>>>(x, t, l, st, B, N, K, false, s);
      });
    };
    launch_group_vec<VEC>(group == kWarp, vec, launch);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (single || reduction == 0) return {loss, stats};
  return {reduction == 1 ? loss.mean() : loss.sum(), stats};
}

at::Tensor lse_aggregate_nll_backward_cuda(const at::Tensor& grad_in, const at::Tensor& logits_in,
                                           const at::Tensor& target_in, const at::Tensor& stats_in,
                                           int64_t reduction) {
  const char* op = "_lse_aggregate_nll_backward";
  check_logits(logits_in, op);
  check_target(target_in, logits_in, op);
  check_reduction(reduction, op);
  const int64_t B = logits_in.size(0), N = logits_in.size(1), K = logits_in.size(2);
  const auto acc = at::toOpMathType(logits_in.scalar_type());
  if (reduction == 0)
    check_aux(grad_in, logits_in, acc, op, "grad_loss", {B});
  else
    check_aux(grad_in, logits_in, acc, op, "grad_loss", {});
  check_aux(stats_in, logits_in, acc, op, "stats", {B, 2});
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous(), target = target_in.contiguous(), grad = grad_in.contiguous(),
                   stats = stats_in.contiguous();
  auto grad_x = at::empty_like(logits, at::MemoryFormat::Contiguous);
  if (logits.numel() == 0) return grad_x;
  const int row_elems = static_cast<int>(N * K);
  const double scale = reduction == 1 ? 1.0 / static_cast<double>(B) : 1.0;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "lse_aggregate_nll_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int VEC = vec_width<scalar_t>();
    const scalar_t* x = logits.const_data_ptr<scalar_t>();
    scalar_t* gx = grad_x.data_ptr<scalar_t>();
    const bool vec = row_elems % VEC == 0 && aligned16(x) && aligned16(gx);
    const int64_t n_vec = vec ? row_elems / VEC : row_elems;
    const int unroll = nll_unroll(false);
    // As few blocks per row as 256 threads allow, then as few threads as those blocks need (a warp multiple).
    // Why: 256-thread blocks left a nearly empty last block per row (the [4096,16,1540] bf16 row is 3,080
    // vectors: 3 full blocks of 1,024 and one of 8 with 4 loads a thread), 4,096 of 16,384 blocks in all.
    // stream2 keeps the 256-thread launch it was measured with (H100, 2026-11-26: 81.9% of copy fwd+bwd).
    const int64_t blocks_per_row = (n_vec + int64_t(kBlock) * unroll - 1) / (int64_t(kBlock) * unroll);
    const int64_t per_thread_block =
        unroll == 2 ? int64_t(kBlock) : (n_vec + blocks_per_row * unroll - 1) / (blocks_per_row * unroll);
    const int threads = static_cast<int>(std::min<int64_t>(
        {int64_t(kBlock), (per_thread_block + kWarp - 1) / kWarp * kWarp, (n_vec + kWarp - 1) / kWarp * kWarp}));
    const dim3 grid(static_cast<unsigned>(blocks_per_row), static_cast<unsigned>(std::min<int64_t>(B, 65535)));
    const acc_t* g = grad.const_data_ptr<acc_t>();
    const int64_t* t = target.const_data_ptr<int64_t>();
    const acc_t* st = stats.const_data_ptr<acc_t>();
    const acc_t s = static_cast<acc_t>(scale);
    with_unroll(unroll, [&](auto u_c) {
      constexpr int U = decltype(u_c)::value;
      if (vec)
        nll_bwd_kernel<scalar_t, VEC, U>
            <<<grid, threads, 0, stream>>>(g, x, t, st, gx, B, row_elems, static_cast<int>(K), reduction == 0, s);
      else
        nll_bwd_kernel<scalar_t, 1, U>
            <<<grid, threads, 0, stream>>>(g, x, t, st, gx, B, row_elems, static_cast<int>(K), reduction == 0, s);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_x;
}

int set_nll_kernel(int kernel) {
  TORCH_CHECK(kernel >= static_cast<int>(NllKernel::kAuto) && kernel <= static_cast<int>(NllKernel::kResident),
              "set_nll_kernel: kernel must be 0 (auto), 1 (stream2), 2 (stream4) or 3 (resident), got ", kernel);
  return nll_kernel_slot().exchange(kernel);
}

}  // namespace clipbert::cuda
