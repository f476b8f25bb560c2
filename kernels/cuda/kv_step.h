// Device-side advance of the GPU packed cache's per-layer counters for one append (issue 11:
// a CUDA-graph-safe decode step). The host used to compute each step's counters and copy them to
// the device, so a captured graph would replay frozen values; this kernel reads the previous
// step's counters on the device and writes the next ones (kernels/cuda/kv_counters.h), so the
// same launch is right at every step:
//   packed   n_old = n_new, k_from = kc_new, v_from = vc_new, n_new += t, k_to = kc_new =
//            kc(n_new), v_to = vc_new = vc(n_new)   (kv_step_rows with the kv_rule of the
//            params: residual, group, quant, k_fp16, compress_after)
//   eviction row = out, held = out + 1, seen += 1, out += 1 (ev_step_rows; t must be 1), and the
//            new row of every slot gets position seen - 1 and score 0.
// Launch it on the stream before the append / compress / attention launches that read the
// counters. One CTA, one thread per sequence; allocates nothing, reads nothing back.
//
//   kvcal::kv_step_params s;  s.batch = B;  s.ctr = ctr;  s.residual = 128;  s.group = 32; ...
//   kvcal::check_launch(kvcal::launch_kv_step(s, stream), "kv step");
#pragma once

#include "kernels/cuda/kv_counters.h"
#include "kernels/cuda/packed_kv.h"

namespace kvcal {

struct kv_step_params {
  int batch = 0;
  int t_new = 1;  // tokens appended to every sequence
  // Packed counters [kv_ctr_rows * B] (null: skip) and the rule's constants.
  int* ctr = nullptr;
  int residual = 0, group = 32;
  bool quant = false;       // false: fp16 cache, nothing is compressed
  bool k_fp16 = false;      // with quant: only V is compressed (V latent mode with fp16 keys)
  int compress_after = -1;  // adaptive mode (kv_counters.h): dormant while n <= compress_after
  // Eviction counters [ev_rows * B] (null: skip) and the rows' positions / scores
  // [B, n_kv, rows] (both required with ectr).
  int* ectr = nullptr;
  int n_kv = 0, rows = 0;
  int* pos = nullptr;
  float* score = nullptr;
};

cudaError_t launch_kv_step(const kv_step_params& p, cudaStream_t stream);

}  // namespace kvcal
