// Row-resident NLL kernels (NllKernel::kResident in lse_common.cuh): the NLL forward and the value-and-grad
// op with each row held in registers.
//
// One block of THREADS threads per row b of logits [B, N, K]; thread i holds vectors i, i + THREADS, ...,
// at most R of them. All R loads are issued before any is used, so a block has its whole row in flight (the
// streaming loops have 2 or 4 vectors per thread at a time), and the gradient is computed from the registers:
// the value-and-grad kernel reads the logits from memory exactly once and writes the gradient once, which is
// the least any implementation can move.
#pragma once
#include <ATen/OpMathType.h>

#include <cstdint>
#include <type_traits>

#include "ops/cuda/common.cuh"
#include "ops/cuda/lse_common.cuh"

namespace clipbert::cuda {

// Per row with target t: la = lse over (n, k), lt = lse over n of column t, loss[row] = la - lt.
// GRAD: also grad[b, n, j] = scale * (exp(x - la) - [j == t] exp(x - lt)). Else stats[row] = (la, lt) for
// the backward kernel.
// Launch bounds ask for 1,024 resident threads per SM (64 registers a thread): with fewer, an SM's rows sit
// in their reduction at the same time and nothing is loading (bf16 at R = 8 took 96 registers without it).
template <typename scalar_t, int VEC, int THREADS, int R, bool GRAD>
__global__ void __launch_bounds__(THREADS, 1024 / THREADS)
    nll_resident_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ target,
                        at::opmath_type<scalar_t>* __restrict__ loss, at::opmath_type<scalar_t>* __restrict__ stats,
                        scalar_t* __restrict__ gx, int64_t B, int64_t N, int64_t K, at::opmath_type<scalar_t> scale) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = Vec<scalar_t, VEC>;
  __shared__ acc_t smem[2 * THREADS / kWarp];
  const int64_t row_elems = N * K;
  const int n_vec = static_cast<int>(row_elems / VEC);  // <= THREADS * R (the launcher's choice)
  for (int64_t row = blockIdx.x; row < B; row += gridDim.x) {
    const int64_t t = target[row];
    const scalar_t* xs = x + row * row_elems;
    const V* xr = reinterpret_cast<const V*>(xs);
    V a[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int i = threadIdx.x + r * THREADS;
      if (i < n_vec) a[r] = xr[i];
    }
    CUDA_KERNEL_ASSERT(t >= 0 && t < K && "lse_aggregate_nll: target out of [0, K)");
    // The target column's N values: scattered, but in lines the loads above just requested.
    Lse<acc_t> tl = lse_init<acc_t>();
    for (int64_t n = threadIdx.x; n < N; n += THREADS) tl.add(static_cast<acc_t>(xs[n * K + t]));
    Lse<acc_t> all = lse_init<acc_t>();
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (threadIdx.x + r * THREADS < n_vec) {
        acc_t va[VEC];
#pragma unroll
        for (int j = 0; j < VEC; ++j) va[j] = to_acc(a[r].v[j]);
        all.add_vec(va);
      }
    }
    all = group_reduce_lse<acc_t, THREADS>(all, smem);  // every thread gets the row's values
    tl = group_reduce_lse<acc_t, THREADS>(tl, smem);
    const acc_t la = all.value(), lt = tl.value();
    if constexpr (GRAD) {
      V* gr = reinterpret_cast<V*>(gx + row * row_elems);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int i = threadIdx.x + r * THREADS;
        // one division per vector; N * K < 2^31 (check_logits), so column, K and t fit an int
        if (i < n_vec) {
          acc_t xv[VEC];
#pragma unroll
          for (int j = 0; j < VEC; ++j) xv[j] = to_acc(a[r].v[j]);
          gr[i] = nll_grad_vals<scalar_t>(xv, static_cast<int>((int64_t(i) * VEC) % K), static_cast<int>(K),
                                          static_cast<int>(t), la, lt, scale);
        }
      }
    }
    if (threadIdx.x == 0) {
      loss[row] = la - lt;
      if constexpr (!GRAD) stats[2 * row] = la, stats[2 * row + 1] = lt;
    }
  }
}

// Launches nll_resident_kernel for rows of n_vec VEC-wide vectors with the smallest block that holds a row:
// 256 threads x 4 or 8 vectors, or 512 x 8 (the [4096, 16, 1540] bf16 benchmark row: 3,080 vectors).
// False, and nothing launched, when a row needs more (those stream instead). Why at most 8 a thread: 32
// registers of data within the 64 a thread that two 512-thread (or four 256-thread) blocks per SM allow.
template <typename scalar_t, int VEC, bool GRAD>
bool launch_nll_resident(const scalar_t* x, const int64_t* target, at::opmath_type<scalar_t>* loss,
                         at::opmath_type<scalar_t>* stats, scalar_t* gx, int64_t B, int64_t N, int64_t K,
                         at::opmath_type<scalar_t> scale, cudaStream_t stream) {
  const int64_t n_vec = N * K / VEC;
  const dim3 grid(static_cast<unsigned>(grid_for(B, 1)));
  if (n_vec <= 256 * 4)
    nll_resident_kernel<scalar_t, VEC, 256, 4, GRAD><<<grid, 256, 0, stream>>>(x, target, loss, stats, gx, B, N, K, scale);
  else if (n_vec <= 256 * 8)
    nll_resident_kernel<scalar_t, VEC, 256, 8, GRAD><<<grid, 256, 0, stream>>>(x, target, loss, stats, gx, B, N, K, scale);
  else if (n_vec <= 512 * 8)
    nll_resident_kernel<scalar_t, VEC, 512, 8, GRAD><<<grid, 512, 0, stream>>>(x, target, loss, stats, gx, B, N, K, scale);
  else
    return false;
  return true;
}

}  // namespace clipbert::cuda
