#pragma once

#include <chrono>
#include <optional>
#include <string_view>

namespace sightline {

// Parses "250ms", "10s", "5m", "1h", "1d" (one number, one unit). Returns
// nullopt for anything else, including a missing unit or a negative value.
std::optional<std::chrono::milliseconds> parse_duration(std::string_view text);

}  // namespace sightline
