#include "model/gpu_packed_options.h"

#include <memory>

#include "kernels/common/error.h"
#include "model/gpu_learned_scorer.h"
#include "runtime/packed_support.h"

namespace kvcal {

gpu_packed_cache::options gpu_packed_options_of(const preset_recipe& r,
                                                const std::vector<tensor_view>& tensors,
                                                const std::string& source, at::Device device) {
  packed_config pc;
  const std::string why = packed_config_of(r, &pc);
  KVCAL_CHECK(why.empty(), source, ": the CUDA kernels cannot run this preset: ", why,
              " (drop --gpu-kernels to use the CPU runtime)");
  KVCAL_CHECK(pc.bits == 16 || pc.v_latent() || (pc.bits != 3 && pc.v_bits == pc.bits), source,
              ": the GPU cache cannot run this preset yet: K ", pc.bits, "-bit with V ", pc.v_bits,
              "-bit (3-bit and mixed widths are in the kernels and kvcal bench only; drop "
              "--gpu-kernels to use the CPU runtime)");
  gpu_packed_cache::options o;
  o.bits = pc.bits;
  o.group = pc.group;
  o.residual = pc.residual;
  o.h2o = pc.h2o;
  o.heavy = pc.heavy;
  o.retain = pc.retain;
  o.tokens = pc.tokens;
  o.window = pc.window;
  o.sinks = pc.sinks;
  o.recent = pc.recent;
  o.compress_after = pc.compress_after;
  if (pc.learned)  // the policy weights go to the device once, shared by every cache made
    o.learned = std::make_shared<const gpu_learned_scorer>(r, tensors, device, source);
  if (pc.v_latent()) {  // the maps, shared by every cache made (each uploads them once)
    KVCAL_CHECK(pc.v_latent_rank > 0, source,
                ": V latent rank 0 (a template's; export the preset with --pca / --ae)");
    o.v_latent_rank = pc.v_latent_rank;
    o.v_latent_bits = pc.v_latent_bits;
    o.v_maps = std::make_shared<const latent_map_set>(
        packed_latent_maps(r, tensors, /*value=*/true, source));
  }
  if (pc.k_latent()) {  // K latent mode: the keys' maps (packed_config_of: V latent, same rank)
    KVCAL_CHECK(pc.k_latent_rank > 0, source,
                ": K latent rank 0 (a template's; export the preset with --pca / --ae)");
    o.k_latent_rank = pc.k_latent_rank;
    o.k_latent_bits = pc.k_latent_bits;
    o.k_maps = std::make_shared<const latent_map_set>(
        packed_latent_maps(r, tensors, /*value=*/false, source));
  }
  return o;
}

}  // namespace kvcal
