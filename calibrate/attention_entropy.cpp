#include "calibrate/attention_entropy.h"

#include <algorithm>
#include <cmath>

#include "kernels/common/error.h"

namespace kvcal {

double cumulative_attention_entropy(const float* cum, std::int64_t n, std::int64_t stride) {
  double total = 0;
  for (std::int64_t j = 0; j < n; ++j) total += std::max(0.0, double(cum[j * stride]));
  if (total <= 0) return 0.0;
  double h = 0;
  for (std::int64_t j = 0; j < n; ++j) {
    const double p = std::max(0.0, double(cum[j * stride])) / total;
    if (p > 0) h -= p * std::log(p);
  }
  return h;
}

head_entropy attention_entropy(const capture_reader& cap) {
  const capture_header& hd = cap.header();
  KVCAL_CHECK(hd.records(capture_item::attn), cap.path(),
              ": no attention statistics (capture with --record including attn)");
  const std::int64_t N = cap.n_tokens(), H = hd.n_kv_heads;
  KVCAL_CHECK(N > 0, cap.path(), ": no complete sequence");
  const std::vector<std::int32_t> seq = cap.read_tokens("seq", 0, N);
  head_entropy e;
  e.entropy.resize(static_cast<std::size_t>(hd.n_layers));
  e.mean_length.assign(static_cast<std::size_t>(hd.n_layers), 0.0);
  std::vector<float> cum;
  for (int l : hd.layers) {
    auto& row = e.entropy[static_cast<std::size_t>(l)];
    row.assign(static_cast<std::size_t>(H), 0.0);
    cum.resize(static_cast<std::size_t>(N * H));  // [N, n_kv]
    cap.read_rows(l, "attn_cum", 0, N, cum.data());
    std::int64_t sequences = 0, a = 0;
    while (a < N) {  // sequences are contiguous
      std::int64_t b = a;
      while (b < N && seq[static_cast<std::size_t>(b)] == seq[static_cast<std::size_t>(a)]) ++b;
      for (std::int64_t g = 0; g < H; ++g)
        row[static_cast<std::size_t>(g)] +=
            cumulative_attention_entropy(cum.data() + a * H + g, b - a, H);
      ++sequences;
      a = b;
    }
    for (auto& x : row) x /= static_cast<double>(sequences);
    e.mean_length[static_cast<std::size_t>(l)] = double(N) / double(sequences);
    e.sequences = sequences;
  }
  return e;
}

}  // namespace kvcal
