// Human-readable description of a safetensors file (used by `kvcal inspect`).
#pragma once

#include <cstddef>
#include <iosfwd>
#include <string>

namespace kvcal {

// Prints the metadata (long values cut), a table of up to `max_tensors` tensors (0 = all) with
// dtype, shape and bytes, and totals per dtype.
void describe_safetensors(const std::string& path, std::size_t max_tensors, std::ostream& out);

}  // namespace kvcal
