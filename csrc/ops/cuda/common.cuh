// Device helpers shared by the CUDA kernels: 128-bit vector loads, fp32 conversions and warp/block
// reductions of sums and of (max, sum-of-exp) pairs for an online logsumexp.
#pragma once
// Only the ATen pieces the kernels use: with ATen/ATen.h and torch/library.h every .cu took 40-65 s to
// compile (nvcc parses the host headers several times), so the op registrations live in register.cpp.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <type_traits>

namespace clipbert::cuda {

constexpr int kWarp = 32;

// VEC elements moved as one 128-bit (or narrower) memory transaction.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Vec {
  T v[VEC];
};

template <typename T>
constexpr int vec_width() {
  return 16 / static_cast<int>(sizeof(T));
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// v as its op-math type (float for the 16-bit types). Why not static_cast for bf16: c10 converts through
// cuda_bf16's inline asm, which takes each value as its own 16-bit register, so the row-resident NLL kernel's
// 64 bf16 values a thread became 64 registers and it spilled at 64 registers (104 bytes of stack, 2026-11-27);
// shifting the packed bits keeps them two to a register.
template <typename scalar_t>
__device__ __forceinline__ at::opmath_type<scalar_t> to_acc(scalar_t v) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>)
    return __uint_as_float(static_cast<uint32_t>(v.x) << 16);
  else
    return static_cast<at::opmath_type<scalar_t>>(v);
}

template <typename acc_t>
__device__ __forceinline__ acc_t neg_inf() {
  return -INFINITY;
}

// Online logsumexp state: m = running max, s = sum of exp(v - m).
// NaN: a NaN value makes the state NaN for good, as torch.logsumexp's result is, so that a NaN logit reads
// as NaN downstream and is never dropped. Every NaN compares false, so add() and fmax-style max() would skip
// it; the state it leaves is (NaN, NaN), or (m, NaN) with m finite once merged, and value() is NaN either
// way. The one state to avoid is (-inf, NaN): merge() takes an m of -inf for empty and drops it.
template <typename acc_t>
struct Lse {
  acc_t m, s;
  __device__ __forceinline__ void add(acc_t v) {
    if (v > m) {
      s = s * exp(m - v) + acc_t(1);  // exp(-inf) = 0 when this is the first finite value
      m = v;
    } else if (v > neg_inf<acc_t>()) {
      s += exp(v - m);
    } else if (v != v) {
      m = s = v;
    }
  }
  // VEC values at once: one max over the vector, VEC independent exps and a single rescale, instead of a
  // serial compare-and-rescale chain per element (that chain, not memory, bounded the NLL forward at 56%
  // of copy bandwidth on an H100). Values of -inf add nothing.
  template <int VEC>
  __device__ __forceinline__ void add_vec(const acc_t (&v)[VEC]) {
    acc_t vm = v[0];
#pragma unroll
    for (int j = 1; j < VEC; ++j) vm = max(vm, v[j]);
    if (vm == neg_inf<acc_t>()) {  // all -inf, or -inf and NaN (max drops NaN): keep a NaN (rare path)
#pragma unroll
      for (int j = 0; j < VEC; ++j)
        if (v[j] != v[j]) m = s = v[j];
      return;
    }
    const acc_t mn = max(m, vm);
    acc_t t = 0;
#pragma unroll
    for (int j = 0; j < VEC; ++j) t += exp(v[j] - mn);  // NaN when any v[j] is
    s = s * exp(m - mn) + t;  // exp(-inf) = 0 while nothing was added yet
    m = t != t ? t : mn;      // an all-NaN vector leaves mn = m, which may be -inf
  }
  __device__ __forceinline__ void merge(acc_t m2, acc_t s2) {
    if (m2 == neg_inf<acc_t>()) return;
    if (m == neg_inf<acc_t>()) {
      m = m2, s = s2;
      return;
    }
    const acc_t mn = max(m, m2);
    s = s * exp(m - mn) + s2 * exp(m2 - mn);
    m = mn;
  }
  __device__ __forceinline__ acc_t value() const { return m + log(s); }  // -inf when empty
};

template <typename acc_t>
__device__ __forceinline__ Lse<acc_t> lse_init() {
  return {neg_inf<acc_t>(), acc_t(0)};
}

template <typename acc_t, int WIDTH>
__device__ __forceinline__ Lse<acc_t> warp_reduce_lse(Lse<acc_t> a) {
#pragma unroll
  for (int off = WIDTH / 2; off > 0; off /= 2) {
    const acc_t m2 = __shfl_xor_sync(0xffffffffu, a.m, off);
    const acc_t s2 = __shfl_xor_sync(0xffffffffu, a.s, off);
    a.merge(m2, s2);
  }
  return a;
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_reduce_sum(acc_t v) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Reduces over GROUP consecutive threads (a warp, or a whole block when GROUP == blockDim.x). Every thread
// of the group gets the result. `smem` must hold 2 * (GROUP / 32) values; only used when GROUP > 32.
template <typename acc_t, int GROUP>
__device__ __forceinline__ Lse<acc_t> group_reduce_lse(Lse<acc_t> a, acc_t* smem) {
  a = warp_reduce_lse<acc_t, kWarp>(a);
  if constexpr (GROUP > kWarp) {
    const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
    __syncthreads();  // smem may still be read by a previous reduction
    if (lane == 0) smem[2 * warp] = a.m, smem[2 * warp + 1] = a.s;
    __syncthreads();
    a = lse_init<acc_t>();
    for (int w = 0; w < GROUP / kWarp; ++w) a.merge(smem[2 * w], smem[2 * w + 1]);
  }
  return a;
}

template <typename acc_t, int GROUP>
__device__ __forceinline__ acc_t group_reduce_sum(acc_t v, acc_t* smem) {
  v = warp_reduce_sum(v);
  if constexpr (GROUP > kWarp) {
    const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
    __syncthreads();
    if (lane == 0) smem[warp] = v;
    __syncthreads();
    v = 0;
    for (int w = 0; w < GROUP / kWarp; ++w) v += smem[w];
  }
  return v;
}

// Single-block launches that also reduce the batch: lane 0 of each group holds its rows' summed losses;
// writes loss[0] = (sum over groups) * scale, added in a fixed order (deterministic, no atomics). Every
// thread of the block must call it (it synchronizes). `smem` holds one value per group.
template <typename acc_t>
__device__ __forceinline__ void block_sum_losses(acc_t group_sum, int lane, int gid, int groups, acc_t* smem,
                                                 acc_t* loss, acc_t scale) {
  if (lane == 0) smem[gid] = group_sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    acc_t s = 0;
    for (int w = 0; w < groups; ++w) s += smem[w];
    loss[0] = s * scale;
  }
}

}  // namespace clipbert::cuda
