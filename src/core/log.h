// Structured JSON logging. Lines are formatted on the calling thread and
// written by one background thread, so an event loop never blocks on a slow
// stderr pipe or disk. Each calling thread appends to its own bounded buffer:
// no lock is shared between workers, a full buffer drops lines (counted)
// instead of growing without bound, and the writer is woken once per batch,
// not once per line.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <string_view>

namespace sightline::log {

enum class Level { debug, info, warn, error };

struct Options {
  std::string file;  // empty or "-": stderr
  Level level = Level::info;
  std::size_t queue_lines = 65536;  // per calling thread
};

// Starts the writer thread. Before start() (and after stop()) lines are written
// synchronously, which is what startup errors want.
bool start(const Options& opts, std::string* error);
// Flushes every queue and joins the writer.
void stop();

bool enabled(Level level);

// A log line built field by field straight into its output text: the hot
// paths (one line per exchange, per connection) avoid building a JSON tree.
// Strings are escaped as JSON; bytes that are not UTF-8 (names from the wire)
// become U+FFFD, as nlohmann's "replace" handler does.
class Line {
 public:
  Line(Level level, std::string_view event);

  Line& str(std::string_view key, std::string_view value);
  Line& num(std::string_view key, std::uint64_t value);
  Line& num(std::string_view key, std::int64_t value);
  Line& num(std::string_view key, int value) { return num(key, static_cast<std::int64_t>(value)); }
  // Fixed three decimals: durations in ms or µs, never exponent notation.
  Line& fixed3(std::string_view key, double value);
  Line& boolean(std::string_view key, bool value);
  // Any JSON value (for the rare structured field), serialised as-is.
  Line& json(std::string_view key, const nlohmann::json& value);

  Level level() const { return level_; }

 private:
  friend void emit(Line& line);
  Line& key(std::string_view k);
  Level level_;
  std::string text_;
};

// Queues the line and leaves `line` spent.
void emit(Line& line);
inline void emit(Line&& line) { emit(line); }
// Adds "ts" and "level" and queues the line.
void emit(Level level, nlohmann::json fields);
std::uint64_t dropped_lines();

// Appends `s` to `out` as the body of a JSON string (no quotes).
void append_json_escaped(std::string& out, std::string_view s);
// Appends `value` with three decimals ("-1.000", "0.205"); non-finite: null.
void append_fixed3(std::string& out, double value);

inline void info(std::string_view event, std::string_view msg) {
  emit(Line(Level::info, event).str("msg", msg));
}
inline void warn(std::string_view event, std::string_view msg) {
  emit(Line(Level::warn, event).str("msg", msg));
}
inline void error(std::string_view event, std::string_view msg) {
  emit(Line(Level::error, event).str("msg", msg));
}

}  // namespace sightline::log
