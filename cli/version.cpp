#include "cli/version.h"

#include <ostream>

#include "calibrate/capture_format.h"
#include "calibrate/pca_format.h"
#include "kernels/common/build_info.h"
#include "kernels/common/cuda_device.h"
#include "runtime/preset_recipe.h"
#include "train/ae_train.h"
#include "train/policy_train.h"

namespace kvcal::cli {

void print_version(std::ostream& out) {
  out << "kvcal " << build_version() << " (commit " << build_commit() << ")\n";
  // One line per on-disk format this build reads/writes; each format's issue adds its line.
  out << "formats:\n"
      << "  safetensors          read/write (HF model weights; container of kvcal presets)\n"
      << "  " << preset_format_name << "         version " << preset_format_version
      << " read/write (also reads " << preset_format_min_version
      << "; one-file KV compression recipe + tensors)\n"
      << "  " << capture_format_name << "        version " << capture_format_version
      << " read/write (HDF5 KV activations from kvcal capture)\n"
      << "  " << pca_format_name << "            version " << pca_format_version
      << " read/write (fit-pca bases, eigenvalues, means, ranks)\n"
      << "  " << ae_format_name << "             version " << ae_format_version
      << " write; export reads (train-ae autoencoder weights)\n"
      << "  " << policy_format_name << "         version " << policy_format_version
      << " write; export reads (train-policy eviction scorer weights)\n";
  out << "build:   CUDA " << (build_with_cuda() ? "compiled in" : "not compiled") << ", libtorch "
      << build_torch_version() << "\n";
  out << "devices: " << cuda_device_summary() << "\n";
}

}  // namespace kvcal::cli
