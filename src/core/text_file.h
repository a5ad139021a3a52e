// Line-oriented configuration files (policy domain lists, identity files):
// reading one whole, and walking its meaningful lines.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace sightline::core {

// False with the system's reason in `why`.
bool read_whole_file(const std::string& path, std::string& out, std::string& why);

// Calls `fn(line_number, line)` for each non-empty line of `text`, with a
// UTF-8 BOM, comments (`#` to the end of the line) and surrounding blanks
// removed; stops at the first false and returns false then.
template <typename Fn>
bool for_each_line(std::string_view text, Fn&& fn) {
  if (text.starts_with("\xEF\xBB\xBF")) text.remove_prefix(3);
  std::size_t lineno = 0;
  while (!text.empty()) {
    ++lineno;
    auto eol = text.find('\n');
    std::string_view line = text.substr(0, eol);
    text = eol == std::string_view::npos ? std::string_view() : text.substr(eol + 1);
    if (auto hash = line.find('#'); hash != std::string_view::npos) line = line.substr(0, hash);
    while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
    while (!line.empty() && (line.back() == ' ' || line.back() == '\t' || line.back() == '\r'))
      line.remove_suffix(1);
    if (!line.empty() && !fn(lineno, line)) return false;
  }
  return true;
}

}  // namespace sightline::core
