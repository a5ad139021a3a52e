// Structured JSON logging. Lines are formatted on the calling thread and
// written by one background thread, so an event loop never blocks on a slow
// stderr pipe or disk. Each calling thread has its own bounded queue: no lock
// is shared between workers, and a full queue drops lines (counted) instead of
// growing without bound.
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
// Adds "ts" and "level" and queues the line.
void emit(Level level, nlohmann::json fields);
std::uint64_t dropped_lines();

inline void info(std::string_view event, std::string_view msg) {
  emit(Level::info, {{"event", event}, {"msg", msg}});
}
inline void warn(std::string_view event, std::string_view msg) {
  emit(Level::warn, {{"event", event}, {"msg", msg}});
}
inline void error(std::string_view event, std::string_view msg) {
  emit(Level::error, {{"event", event}, {"msg", msg}});
}

}  // namespace sightline::log
