#include "runtime/io/safetensors_report.h"

#include <algorithm>
#include <iomanip>
#include <map>
#include <ostream>
#include <sstream>

#include "runtime/io/safetensors.h"

namespace kvcal {
namespace {

std::string shape_str(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string bytes_str(double b) {
  const char* unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int i = 0;
  while (b >= 1024 && i < 4) {
    b /= 1024;
    ++i;
  }
  std::ostringstream os;
  os << std::fixed << std::setprecision(i ? 2 : 0) << b << " " << unit[i];
  return os.str();
}

}  // namespace

void describe_safetensors(const std::string& path, std::size_t max_tensors, std::ostream& out) {
  safetensors_file f(path);
  out << path << ": safetensors, " << bytes_str(static_cast<double>(f.file_size())) << ", "
      << f.tensors().size() << " tensors\n";
  if (!f.metadata().empty()) {
    out << "metadata:\n";
    for (const auto& [k, v] : f.metadata()) {
      std::string shown = v.size() > 120 ? v.substr(0, 117) + "..." : v;
      std::replace(shown.begin(), shown.end(), '\n', ' ');
      out << "  " << k << ": " << shown;
      if (v.size() > 120) out << " (" << v.size() << " chars)";
      out << "\n";
    }
  }
  std::size_t name_w = 4;
  for (const auto& t : f.tensors()) name_w = std::max(name_w, t.name.size());
  name_w = std::min<std::size_t>(name_w, 60);
  out << std::left << std::setw(static_cast<int>(name_w)) << "name" << "  " << std::setw(5)
      << "dtype" << "  " << std::setw(24) << "shape" << "  bytes\n";
  std::map<std::string, std::pair<std::size_t, std::size_t>> per_dtype;  // count, bytes
  std::size_t shown = 0;
  for (const auto& t : f.tensors()) {
    auto& d = per_dtype[dtype_name(t.dtype)];
    d.first += 1;
    d.second += t.nbytes;
    if (max_tensors != 0 && shown >= max_tensors) continue;
    ++shown;
    out << std::left << std::setw(static_cast<int>(name_w)) << t.name << "  " << std::setw(5)
        << dtype_name(t.dtype) << "  " << std::setw(24) << shape_str(t.shape) << "  "
        << bytes_str(static_cast<double>(t.nbytes)) << "\n";
  }
  if (shown < f.tensors().size())
    out << "... " << f.tensors().size() - shown << " more (--max-tensors 0 lists all)\n";
  out << "totals:";
  for (const auto& [name, d] : per_dtype)
    out << "  " << name << " " << d.first << " tensors " << bytes_str(static_cast<double>(d.second));
  out << "\n";
}

}  // namespace kvcal
