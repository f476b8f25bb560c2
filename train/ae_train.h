// `kvcal train-ae`: per (layer[, KV head], K|V) autoencoders of pre-RoPE keys and values, trained
// with libtorch on captures, written as ae.safetensors (format "kvcal.ae", docs/formats/ae.md).
//
// Architectures (d = head_dim, r = latent, every block independent):
//   linear  z = W_e x + b_e,  x' = W_d z + b_d    (what a preset's `ae` method stores)
//   mlp     the same linear path plus a GELU branch on each side:
//           z  = W_e x + b_e + E2 gelu(E1 x + c1)      E1 [h, d], E2 [r, h]
//           x' = W_d z + b_d + D2 gelu(D1 z + c2)      D1 [h, r], D2 [d, h]
//           E2 and D2 start at zero, so an mlp starts where its linear path does.
// Initialisation (--init pca, the default): the linear path is the PCA reconstruction at rank r,
// W_e = U_r^T, b_e = -U_r^T mu, W_d = U_r, b_d = mu, with U, mu from --pca pca.h5 or, without it,
// from a PCA fitted here on the training sequences. --init random: small random weights.
// Losses: recon = MSE / (variance of the block's data) (relative reconstruction error); attn =
// relative error of the attention output computed from the captured queries with the
// reconstructed K (RoPE re-applied at the captured positions) and V, against the exact K and V,
// per (layer, KV head), causal and with the model's sliding window; needs `q` in the captures.
// Training: held-out sequences (validation) are evaluated before the first step and after every
// epoch; each block keeps the weights of its best validation score (so a PCA-initialised block
// never ends worse on validation than its initialisation); training stops early when the total
// validation score has not improved for `patience` epochs. AdamW with linear warm-up + cosine
// decay; the row order depends only on (seed, epoch); a checkpoint (<out>.ckpt) is written after
// every epoch and `resume` continues from it (train/train_loop.h).
//
//   kvcal::ae_train_params p;
//   p.captures = {"cap.h5"}; p.out = "ae.safetensors"; p.latent = 16;
//   kvcal::ae_train_result r = kvcal::run_train_ae(p);
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "train/train_loop.h"

namespace kvcal {

inline constexpr const char* ae_format_name = "kvcal.ae";
inline constexpr int ae_format_version = 1;

struct ae_train_params : train_loop_params {
  std::string target = "kv";    // k | v | kv  (k is the pre-RoPE key)
  int latent = 0;               // 1 .. head_dim - 1; or from ratio
  double ratio = 0;             // latent = round(head_dim / ratio) when latent == 0
  std::string arch = "linear";  // linear | mlp
  int hidden = 0;               // mlp hidden width; 0 = head_dim
  std::string per = "kv-head";  // kv-head | layer
  std::string loss = "recon";   // recon | attn
  std::string pca;              // pca.h5 from fit-pca (initialisation and baseline)
  std::string init = "pca";     // pca | random
  // The shared options (train/train_loop.h) with train-ae's defaults; write_report: <stem>.json
  // and <stem>.svg next to out.
  ae_train_params() {
    epochs = 20;
    batch = 512;
    weight_decay = 1e-4;
    val_fraction = 0.1;
    val_max_tokens = 8192;
    shuffle_buffer = 8192;
  }
};

// One row of the report, per layer: relative reconstruction error (sum |x - x'|^2 / sum |x - mu|^2
// over the held-out tokens and KV heads) of PCA and of the AE for K and V (-1 when the stream was
// not trained), and the relative attention-output error (sum |o' - o|^2 / sum |o|^2 with every
// trained stream reconstructed; -1 when the captures have no q).
struct ae_layer_metrics {
  int layer = 0;
  double k_pca = -1, k_ae = -1, v_pca = -1, v_ae = -1;
  double attn_pca = -1, attn_ae = -1;
};

struct ae_train_result : train_result {  // init_val / best_val: mean validation score
  std::vector<ae_layer_metrics> layers;
  int latent = 0;
};

// Checks params (errors name the option); the CLI calls it before any work.
void validate_ae_params(const ae_train_params& p);
ae_train_result run_train_ae(const ae_train_params& p);
// The table of the report (per layer and target: PCA vs AE).
std::string ae_report_table(const ae_train_result& r);

}  // namespace kvcal
