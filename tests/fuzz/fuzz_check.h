// What the fuzz targets share: a contract check that aborts, so libFuzzer
// saves the input like any crash, and cutting an input into its parts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

namespace sightline::fuzz {

[[noreturn]] inline void violated(const char* file, int line, const char* what) {
  std::fprintf(stderr, "%s:%d: invariant violated: %s\n", file, line, what);
  std::abort();
}

inline std::string_view as_text(const std::uint8_t* data, std::size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// The text before the first `sep` (all of it when there is none); `rest`
// keeps what follows the separator. Targets whose input has several parts
// (a file and the files it names, then queries) separate them with NUL,
// which none of the parts can hold.
inline std::string_view take_part(std::string_view& rest, char sep = '\0') {
  const std::size_t at = rest.find(sep);
  const std::string_view part = rest.substr(0, at);
  rest = at == std::string_view::npos ? std::string_view() : rest.substr(at + 1);
  return part;
}

}  // namespace sightline::fuzz

#define FUZZ_CHECK(cond)                                        \
  do {                                                          \
    if (!(cond)) ::sightline::fuzz::violated(__FILE__, __LINE__, #cond); \
  } while (0)
