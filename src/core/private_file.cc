#include "core/private_file.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace sightline::core {

bool check_private_file(const std::string& path, std::string_view what, std::string& why) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    why = std::string(what) + " " + path + ": " + std::strerror(errno);
    return false;
  }
  if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%03o", static_cast<unsigned>(st.st_mode & 0777));
    why = std::string(what) + " " + path + " is accessible by group or others (mode " + mode +
          "); run chmod 600 on it";
    return false;
  }
  return true;
}

}  // namespace sightline::core
