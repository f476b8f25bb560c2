#include "runtime/io/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "kernels/common/error.h"

namespace kvcal {
namespace {

std::string parent_dir(const std::string& path) {
  auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

void fsync_path(const std::string& path, bool directory) {
  int fd = ::open(path.c_str(), directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  KVCAL_CHECK(fd >= 0, path, ": cannot open to sync: ", std::strerror(errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  // Some filesystems refuse fsync on directories (EINVAL); the rename is still atomic there.
  KVCAL_CHECK(rc == 0 || (directory && err == EINVAL), path, ": fsync failed: ", std::strerror(err));
}

}  // namespace

atomic_output::atomic_output(std::string path) : path_(std::move(path)), temp_(path_ + ".partial") {
  KVCAL_CHECK(!path_.empty(), "output path is empty");
  std::string dir = parent_dir(path_);
  struct stat st{};
  KVCAL_CHECK(::stat(dir.c_str(), &st) == 0, path_, ": output directory ", dir,
              " does not exist");
  KVCAL_CHECK(S_ISDIR(st.st_mode), path_, ": ", dir, " is not a directory");
  KVCAL_CHECK(::access(dir.c_str(), W_OK) == 0, path_, ": output directory ", dir,
              " is not writable");
  if (::stat(path_.c_str(), &st) == 0)
    KVCAL_CHECK(!S_ISDIR(st.st_mode), path_, ": is a directory, expected a file path");
}

atomic_output::~atomic_output() {
  if (!committed_ && !keep_partial_) std::remove(temp_.c_str());
}

void atomic_output::commit() {
  KVCAL_CHECK(!committed_, path_, ": committed twice");
  fsync_path(temp_, false);
  KVCAL_CHECK(std::rename(temp_.c_str(), path_.c_str()) == 0, path_, ": cannot rename ", temp_,
              ": ", std::strerror(errno));
  committed_ = true;
  fsync_path(parent_dir(path_), true);
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  atomic_output out(path);
  std::FILE* f = std::fopen(out.temp_path().c_str(), "wb");
  KVCAL_CHECK(f, out.temp_path(), ": cannot create: ", std::strerror(errno));
  size_t written = bytes.empty() ? 0 : std::fwrite(bytes.data(), 1, bytes.size(), f);
  int close_rc = std::fclose(f);
  KVCAL_CHECK(written == bytes.size() && close_rc == 0, out.temp_path(), ": write failed: ",
              std::strerror(errno));
  out.commit();
}

}  // namespace kvcal
