#include "core/text_file.h"

#include <cerrno>
#include <cstdio>
#include <memory>
#include <system_error>

namespace sightline::core {

bool read_whole_file(const std::string& path, std::string& out, std::string& why) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), std::fclose);
  if (!f) {
    why = std::generic_category().message(errno);
    return false;
  }
  out.clear();
  char buf[64 * 1024];
  std::size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof buf, f.get())) > 0) out.append(buf, n);
  if (std::ferror(f.get()) != 0) {
    why = std::generic_category().message(errno);
    return false;
  }
  return true;
}

}  // namespace sightline::core
