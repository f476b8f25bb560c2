// How spread out each KV head's attention is, measured on a capture (issue 10: per-head eviction
// budgets). For one sequence of n tokens and KV head g, the cumulative attention a token receives
// (attn_cum, calibrate/capture_format.h; sums to n over the sequence) is normalized into a
// distribution p_j = attn_cum[j, g] / n, and its entropy H = -sum_j p_j ln p_j (nats) taken. A head
// whose mass sits on a few heavy hitters has a low H; one that spreads it over many tokens a high
// H. exp(H) is the effective number of tokens the head attends to. Averaged over the sequences.
//
//   kvcal::capture_reader cap("capture.h5");
//   kvcal::head_entropy e = kvcal::attention_entropy(cap);
//   e.entropy[l][h];   // nats, mean over sequences; e.layers: the recorded layers
#pragma once

#include <cstdint>
#include <vector>

#include "calibrate/capture_reader.h"

namespace kvcal {

struct head_entropy {
  std::vector<std::vector<double>>
      entropy;                      // [n_layers][n_kv_heads]; rows of unrecorded layers empty
  std::vector<double> mean_length;  // [n_layers] mean sequence length used
  std::int64_t sequences = 0;
};

// Needs `attn` in the capture (an error naming the file says to record it).
head_entropy attention_entropy(const capture_reader& cap);

// Entropy (nats) of one sequence's cumulative attention of one head: cum [n], any positive scale.
double cumulative_attention_entropy(const float* cum, std::int64_t n, std::int64_t stride = 1);

}  // namespace kvcal
