// Schema of temporal mean-pooling over the frames of a clip (paper Sec. 3: mean pooling of frame features).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(clipbert, m) {
  // x [B, T, ...] -> [B, ...] in x's dtype, float32 accumulation.
  m.def("temporal_mean(Tensor x) -> Tensor");
  // grad [B, ...] -> grad_x [B, T, ...] = grad / T broadcast over T.
  m.def("_temporal_mean_backward(Tensor grad, int T) -> Tensor");
}
